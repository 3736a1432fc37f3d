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
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from lematt.errors import CryptoError
from lematt.model import CURVE_NAMES, CertInfo

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


def check_issued(chain_pem: bytes, key: PrivateKey, names: tuple[str, ...]) -> CertInfo:
    """Verify a downloaded chain before any byte of it is stored.

    The leaf must certify our public key and exactly the requested names; a CA (or a
    man in the middle of a misconfigured proxy) answering with anything else must not
    replace a working pair.
    """
    info = read_certificate(chain_pem, source="the certificate the CA sent")
    if info.public_key_der != public_key_der(key):
        raise CryptoError("the CA sent a certificate for a different public key; nothing stored")
    if info.names != frozenset(names):
        got = " ".join(sorted(info.names))
        raise CryptoError(
            f"the CA sent a certificate for other names ({got}) than requested; nothing stored"
        )
    return info


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
