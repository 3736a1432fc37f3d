"""crypto: keys in the original's PEM form, CSRs with SAN, issued-chain checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lematt import crypto
from lematt.errors import CryptoError
from lematt.testing.certs import LocalCA

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_ec_key_pem_is_traditional_and_curve_as_configured() -> None:
    pem = crypto.generate_private_pem("ec", curve="secp384r1")
    assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    key = crypto.load_private_key(pem)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp384r1"
    assert crypto.key_matches_type(key, "ec", 2048, "secp384r1")
    assert not crypto.key_matches_type(key, "ec", 2048, "prime256v1")


def test_rsa_key_pem_is_traditional() -> None:
    pem = crypto.generate_private_pem("rsa", rsa_bits=2048)
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    key = crypto.load_private_key(pem)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_csr_carries_every_name_in_san_and_first_as_cn() -> None:
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    der = crypto.make_csr(key, ("a.example.test", "b.example.test"))
    csr = x509.load_der_x509_csr(der)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example.test", "b.example.test"]
    assert csr.subject.rfc4514_string() == "CN=a.example.test"
    assert csr.is_signature_valid
    with pytest.raises(x509.ExtensionNotFound):
        csr.extensions.get_extension_for_class(x509.TLSFeature)


def test_single_name_csr_still_has_san_and_must_staple_when_asked() -> None:
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    csr = x509.load_der_x509_csr(crypto.make_csr(key, ("one.example.test",), must_staple=True))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["one.example.test"]
    feature = csr.extensions.get_extension_for_class(x509.TLSFeature).value
    assert list(feature) == [x509.TLSFeatureType.status_request]


def test_check_issued_accepts_ours_and_refuses_other_key_or_names() -> None:
    ca = LocalCA()
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    other = crypto.load_private_key(crypto.generate_private_pem("ec"))
    names = ("a.example.test", "b.example.test")
    good = ca.issue_days(key, names, NOW, 1)
    assert crypto.check_issued(good, key, names, now=NOW).names == frozenset(names)
    with pytest.raises(CryptoError, match="different public key"):
        crypto.check_issued(ca.issue_days(other, names, NOW, 1), key, names, now=NOW)
    with pytest.raises(CryptoError, match="other names"):
        crypto.check_issued(ca.issue_days(key, names[:1], NOW, 1), key, names, now=NOW)


def test_unreadable_inputs_are_crypto_errors_naming_the_source() -> None:
    with pytest.raises(CryptoError, match="the/file"):
        crypto.read_certificate(b"garbage", source="the/file")
    with pytest.raises(CryptoError, match=r"k\.pem"):
        crypto.load_private_key(b"garbage", source="k.pem")


def test_rsa_consistency_check_refuses_a_damaged_key() -> None:
    """A stored RSA key is checked (in a worker process) before it signs: one whose private
    exponent was damaged still loads unchecked, but fails the consistency check."""
    pem = crypto.generate_private_pem("rsa")
    assert crypto.rsa_pem_is_consistent(pem)
    good = crypto.load_private_key(pem)
    assert isinstance(good, rsa.RSAPrivateKey)
    n = good.private_numbers()
    damaged = rsa.RSAPrivateNumbers(n.p, n.q, n.d + 2, n.dmp1, n.dmq1, n.iqmp,
                                    n.public_numbers).private_key(
        unsafe_skip_rsa_key_validation=True)
    bad_pem = crypto.private_key_pem(damaged)  # type: ignore[arg-type]
    assert crypto.load_private_key(bad_pem, validate=False).public_key().public_numbers() == (
        good.public_key().public_numbers())
    assert not crypto.rsa_pem_is_consistent(bad_pem)
    with pytest.raises(CryptoError):
        crypto.load_private_key(bad_pem)
