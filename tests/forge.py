"""Certificates a hostile CA could send: proper chains, forged leaves, rogue issuers (test-only).

Used by the unit tests of ``lematt.crypto.check_issued`` and by the fault proxy
(``tests.ca_front``), which answers a real order's certificate download with one of these
for the key and names of the CSR lematt really sent.

``Issuer.root(cn)`` is a self-signed CA; ``issuer.intermediate(cn)`` a CA it signs;
``issuer.issue(public_key, names, ...)`` a leaf (serverAuth by default), with knobs for every
way a leaf can be wrong: its validity, its EKU, a CA flag, a non-DNS identity, an issuer name
it claims (``claim_issuer``: the subject of someone else's CA, so the names chain but the
signature does not).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PublicKey = Any  # any public key cryptography can put into a certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class Issuer:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def root(cls, cn: str = "rogue root") -> Issuer:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def intermediate(self, cn: str, *, ca: bool = True) -> Issuer:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(_name(cn))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        return Issuer(key, cert)

    def issue(self, public_key: PublicKey, names: Sequence[str], *,
              not_before: datetime | None = None, not_after: datetime | None = None,
              eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.SERVER_AUTH,),
              ca: bool = False, ip: str | None = None,
              claim_issuer: x509.Name | None = None) -> x509.Certificate:
        now = datetime.now(UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        if ip is not None:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        builder = (x509.CertificateBuilder().subject_name(_name(names[0]))
                   .issuer_name(claim_issuer or self.cert.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - timedelta(hours=1))
                   .not_valid_after(not_after or now + timedelta(days=90))
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False))
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                            critical=True)
        return builder.sign(self.key, hashes.SHA256())


def csr_identity(csr_der: bytes) -> tuple[PublicKey, tuple[str, ...]]:
    """The public key and the SAN DNS names of a DER CSR (what lematt asked for)."""
    csr = x509.load_der_x509_csr(csr_der)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return csr.public_key(), tuple(san.get_values_for_type(x509.DNSName))
