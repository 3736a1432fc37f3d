"""Keys, CSRs and certificates, with ``cryptography`` only (no openssl subprocess).

Contract:
- ``generate_private_pem`` is a plain top-level function so that RSA generation can run in a
  worker process (it takes ~50-500 ms of CPU and must not block the event loop).
- Private keys are written as traditional OpenSSL PEM ("BEGIN RSA/EC PRIVATE KEY"), the form
  the original lematt's ``openssl genrsa`` / ``ecparam -genkey`` produced, so servers configured
  for the old files keep reading the new ones.
- ``make_csr`` always puts every name into subjectAltName (RFC 8555 section 7.4 identifies a
  certificate by its SANs; the CN alone is deprecated) and the first name into the CN.
- ``read_certificate`` raises ``CryptoError`` for anything that is not a PEM certificate.
- ``check_issued`` is the one check a downloaded chain passes before any byte of it is stored
  (see there); ``normalized_chain`` is the chain as lematt stores it: its certificates only.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lematt.errors import CryptoError, printable
from lematt.model import CURVE_NAMES, CertInfo

# A chain is a leaf and a few CA certificates (Let's Encrypt: 2); more is not a chain a
# server should send, and bounds the work of checking it.
MAX_CHAIN_CERTS = 10
# A CA on another machine may run a little ahead of this one: a leaf whose notBefore is this
# much in the future is still accepted as valid now (Let's Encrypt backdates by an hour).
CLOCK_SKEW = timedelta(minutes=5)
_PEM_LABEL_RE = re.compile(rb"-----BEGIN ([^-\r\n]{1,64})-----")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# The key classes of lematt's curves, by the spelling lematt keeps (``model.CURVE_NAMES``).
_CURVE_CLASSES: dict[str, type[ec.EllipticCurve]] = {
    "prime256v1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
}


def curve_class(name: str) -> type[ec.EllipticCurve]:
    return _CURVE_CLASSES[CURVE_NAMES[name]]


def generate_private_pem(key_type: str, rsa_bits: int = 2048, curve: str = "prime256v1") -> bytes:
    """A new private key as PEM bytes (picklable arguments and result, for a worker process)."""
    key: PrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        key = ec.generate_private_key(curve_class(curve)())
    return private_key_pem(key)


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes, *, source: str = "key", validate: bool = True) -> PrivateKey:
    """Parse a PEM private key (RSA or EC); ``CryptoError`` names ``source`` otherwise.

    ``validate=False`` skips the RSA consistency checks (tens of milliseconds per key); fine
    where the key is only compared with a certificate's public key, or where this process has
    just generated it; a key read from disk that will sign is validated.
    """
    try:
        key = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=not validate)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"{source}: not a readable unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CryptoError(f"{source}: only RSA and EC keys are supported")
    return key


def rsa_pem_is_consistent(pem: bytes) -> bool:
    """Do the RSA consistency checks pass for this PEM key? (Picklable in and out, for a
    worker process: the checks take tens of milliseconds.)"""
    try:
        load_private_key(pem, validate=True)
    except CryptoError:
        return False
    return True


def key_matches_type(key: PrivateKey, key_type: str, rsa_bits: int, curve: str) -> bool:
    """True when an existing key is of the configured type and size (else it is replaced)."""
    if key_type == "rsa":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size == rsa_bits
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, curve_class(curve))


def make_csr(key: PrivateKey, names: tuple[str, ...], *, must_staple: bool = False) -> bytes:
    """A DER CSR for ``names`` signed by ``key``: CN = first name, SAN = every name."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
    )
    if must_staple:
        # RFC 7633 TLS Feature extension with status_request (5) = "OCSP must-staple".
        builder = builder.add_extension(
            x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False
        )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def csr_pem(csr_der: bytes) -> bytes:
    csr = x509.load_der_x509_csr(csr_der)
    return csr.public_bytes(serialization.Encoding.PEM)


def public_key_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def read_certificate(pem: bytes, *, source: str = "certificate") -> CertInfo:
    """Parse the first (leaf) certificate of a PEM chain."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CryptoError(f"{source}: not a readable PEM certificate ({exc})") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = frozenset(n.lower() for n in san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = frozenset(str(a.value).lower() for a in cns)
    return CertInfo(
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        names=names,
        public_key_der=cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        cert_id=ari_cert_id(cert),
    )


def _chain(chain_pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain, leaf first; anything but certificates is refused."""
    labels = {m.group(1) for m in _PEM_LABEL_RE.finditer(chain_pem)}
    if labels - {b"CERTIFICATE"}:
        other = ", ".join(sorted(printable(label.decode("ascii", "replace"))
                                 for label in labels - {b"CERTIFICATE"}))
        raise CryptoError(f"the CA sent a chain with other PEM blocks in it ({other}); "
                          "nothing stored")
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise CryptoError(f"the CA sent no readable PEM certificate chain ({exc}); "
                          "nothing stored") from None
    if len(certs) > MAX_CHAIN_CERTS:
        raise CryptoError(f"the CA sent a chain of {len(certs)} certificates (at most "
                          f"{MAX_CHAIN_CERTS} make sense); nothing stored")
    return certs


def ari_cert_id(cert: x509.Certificate) -> str:
    """The certificate's ARI identifier (RFC 9773 section 4.1): base64url (no padding) of
    the keyIdentifier of its Authority Key Identifier, ".", base64url of the DER content
    octets of its serial number. "" when it has no AKI keyIdentifier."""
    import base64

    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    if not aki.key_identifier:
        return ""
    serial = cert.serial_number
    if serial < 0:  # not a valid serial (RFC 5280 4.1.2.2): no CA can name it either
        return ""
    # A DER INTEGER is two's complement: a positive serial whose top bit is set carries a
    # leading zero octet, and that octet is part of the certID (RFC 9773 section 4.1).
    octets = serial.to_bytes((serial.bit_length() + 8) // 8, "big")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    return f"{b64(aki.key_identifier)}.{b64(octets)}"


def normalized_chain(chain_pem: bytes) -> bytes:
    """The chain's certificates as PEM, leaf first, and nothing else (RFC 7468 allows text
    around the blocks; lematt does not store it)."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM)
                    for cert in _chain(chain_pem))


def _names_shown(names: frozenset[str] | tuple[str, ...]) -> str:
    return printable(" ".join(sorted(names)), 300)


def check_issued(chain_pem: bytes, key: PrivateKey, names: tuple[str, ...], *,
                 now: datetime | None = None) -> CertInfo:
    """Verify a downloaded chain before any byte of it is stored; return the leaf's info.

    A CA (or a man in the middle of a misconfigured proxy) answering with anything else must
    not replace a working pair, so the chain must be a chain:

    * the leaf certifies our public key and exactly the requested names (only DNS names in
      its subjectAltName), is valid now (``CLOCK_SKEW`` allowed for notBefore), is not a CA
      certificate, and, when it has an extendedKeyUsage, allows serverAuth (RFC 5280
      4.2.1.12: a server certificate without it would be refused by TLS clients);
    * every certificate is signed by the next one (its issuer name is the next one's subject
      and the signature verifies with the next one's key; RFC 5280 section 6.1), and every
      next one is a CA certificate (basicConstraints cA, keyCertSign when keyUsage is
      present; RFC 5280 4.2.1.9, 4.2.1.3).

    Whether the last one leads to a root the relying parties trust is theirs to decide (a
    test CA's root changes with every start); what lematt makes sure of is that the chain
    is the CA's chain for our key, so a server configured with it serves one that links.
    """
    certs = _chain(chain_pem)
    try:
        return _check(certs, key, names, now or datetime.now(UTC))
    except ValueError as exc:  # cryptography parses extensions lazily: a malformed one
        raise CryptoError(f"the CA sent an unreadable certificate ({printable(str(exc), 200)})"
                          "; nothing stored") from None


def _check(certs: list[x509.Certificate], key: PrivateKey, names: tuple[str, ...],
           now: datetime) -> CertInfo:
    leaf = certs[0]
    info = read_certificate(leaf.public_bytes(serialization.Encoding.PEM),
                            source="the certificate the CA sent")
    if info.public_key_der != public_key_der(key):
        raise CryptoError("the CA sent a certificate for a different public key; nothing stored")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    others = [n for n in san if not isinstance(n, x509.DNSName)] if san is not None else []
    if info.names != frozenset(names) or others:
        extra = f" and {len(others)} other identities" if others else ""
        raise CryptoError(
            f"the CA sent a certificate for other names ({_names_shown(info.names)}{extra}) "
            f"than requested ({_names_shown(names)}); nothing stored")
    if not info.not_before - CLOCK_SKEW <= now <= info.not_after:
        raise CryptoError(
            f"the CA sent a certificate that is not valid now (valid from "
            f"{info.not_before:%Y-%m-%d %H:%M:%S} to {info.not_after:%Y-%m-%d %H:%M:%S} UTC); "
            "nothing stored; check this machine's clock")
    if _is_ca(leaf):
        raise CryptoError("the CA sent a CA certificate instead of a server certificate; "
                          "nothing stored")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise CryptoError("the CA sent a certificate that does not allow TLS server "
                          "authentication (no serverAuth in its extendedKeyUsage); "
                          "nothing stored")
    for number, (child, parent) in enumerate(itertools.pairwise(certs), start=1):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise CryptoError(
                f"the CA sent a chain that is not a chain: certificate {number} is not signed "
                f"by certificate {number + 1} ({printable(parent.subject.rfc4514_string(), 200)}"
                "); nothing stored") from None
        if not _is_ca(parent, signs_certificates=True):
            raise CryptoError(
                f"the CA sent a chain whose certificate {number + 1} is not a CA certificate; "
                "nothing stored")
    return info


def _is_ca(cert: x509.Certificate, *, signs_certificates: bool = False) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    if not constraints.ca:
        return False
    if signs_certificates:
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return True
        except ValueError:
            return False
        return usage.key_cert_sign
    return True
def _chain_certs(pem: str | bytes) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CryptoError(f"the CA sent a chain that is not readable PEM ({exc})") from exc


def leaf_der(pem: str | bytes) -> bytes:
    """The DER bytes of a PEM chain's first (leaf) certificate."""
    return _chain_certs(pem)[0].public_bytes(serialization.Encoding.DER)


def top_issuer_cn(pem: str | bytes) -> str | None:
    """The issuer common name of a chain's last (topmost) certificate: the root a client
    ends at (what ``preferredChain`` names)."""
    cns = _chain_certs(pem)[-1].issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


def certificate_serial_and_expiry(der: bytes) -> tuple[str, datetime]:
    """A DER certificate's serial number (hex) and notAfter; ``CryptoError`` for bytes that
    are not one (a server may send anything)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return f"{cert.serial_number:x}", cert.not_valid_after_utc
    except ValueError as exc:
        raise CryptoError(f"not a readable certificate ({exc})") from None


def certificate_key_type(der: bytes) -> str:
    """"rsa", "ec" or "other": the kind of public key a DER certificate carries."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise CryptoError(f"not a readable certificate ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    return "ec" if isinstance(key, ec.EllipticCurvePublicKey) else "other"
