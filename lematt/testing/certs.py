"""A throwaway local CA for unit tests and benchmarks that need stored certificates.

Not a stand-in for Pebble: it makes files in the store's layout (with chosen validity dates)
so planning, inventory and store code can be tested without asking a CA for them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lematt.crypto import PrivateKey


class LocalCA:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lematt test CA")])

    def issue(self, key: PrivateKey, names: tuple[str, ...], not_before: datetime,
              not_after: datetime) -> bytes:
        """PEM leaf for ``names`` certifying ``key``'s public key."""
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            # As every public CA's leaf has: the ARI certID (RFC 9773) is made from it.
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_days(self, key: PrivateKey, names: tuple[str, ...], now: datetime,
                   age_days: float, lifetime_days: float = 90) -> bytes:
        start = now - timedelta(days=age_days)
        return self.issue(key, names, start, start + timedelta(days=lifetime_days))
