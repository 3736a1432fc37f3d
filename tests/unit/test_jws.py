"""lematt.acme.jws against fixed vectors and cryptography's own verifiers (no network)."""

from __future__ import annotations

import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from lematt.acme import jws
from lematt.errors import CryptoError

# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
    "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
    "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_E = "AQAB"
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

# The P-256 base point G (SEC 2 section 2.4.2) is the public key of private value 1.
P256_GX = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
P256_GY = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"


def _rfc7638_key() -> rsa.RSAPublicKey:
    n = int.from_bytes(jws.b64url_decode(RFC7638_N), "big")
    e = int.from_bytes(jws.b64url_decode(RFC7638_E), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def _decode(body: bytes) -> tuple[dict[str, object], str, bytes, bytes]:
    """(protected header, payload b64, signature bytes, signing input) of a flattened JWS."""
    outer = json.loads(body)
    assert set(outer) == {"protected", "payload", "signature"}
    header = json.loads(jws.b64url_decode(outer["protected"]))
    signing_input = f"{outer['protected']}.{outer['payload']}".encode()
    return header, outer["payload"], jws.b64url_decode(outer["signature"]), signing_input


@pytest.mark.parametrize(
    ("raw", "text"),
    [(b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"), (b"\xfb\xff\xfe", "-__-")],
)
def test_b64url_round_trip_without_padding(raw: bytes, text: str) -> None:
    assert jws.b64url(raw) == text
    assert jws.b64url_decode(text) == raw


def test_b64url_decode_accepts_padding_and_rejects_other_alphabets() -> None:
    assert jws.b64url_decode("Zg==") == b"f"
    for bad in ("a+b", "a/b", "a b", "Zg=x"):
        with pytest.raises(ValueError):
            jws.b64url_decode(bad)


def test_rfc7638_example_thumbprint() -> None:
    key = _rfc7638_key()
    assert jws.jwk(key) == {"e": RFC7638_E, "kty": "RSA", "n": RFC7638_N}
    assert jws.thumbprint(key) == RFC7638_THUMBPRINT
    assert jws.key_authorization("tok_EN-1", key) == f"tok_EN-1.{RFC7638_THUMBPRINT}"


def test_ec_jwk_uses_fixed_length_coordinates_in_lexicographic_order() -> None:
    key = ec.derive_private_key(1, ec.SECP256R1())
    assert jws.jwk(key) == {
        "crv": "P-256",
        "kty": "EC",
        "x": jws.b64url(bytes.fromhex(P256_GX)),
        "y": jws.b64url(bytes.fromhex(P256_GY)),
    }
    assert list(jws.jwk(key)) == sorted(jws.jwk(key))
    # A key whose x has a leading zero byte must still give 32 bytes (RFC 7518 6.2.1.2).
    short = next(
        k
        for k in (ec.derive_private_key(i, ec.SECP256R1()) for i in range(1, 5000))
        if k.public_key().public_numbers().x < 1 << 248
    )
    assert len(jws.b64url_decode(jws.jwk(short)["x"])) == 32
    p384 = jws.jwk(ec.derive_private_key(7, ec.SECP384R1()))
    assert p384["crv"] == "P-384"
    assert len(jws.b64url_decode(p384["x"])) == len(jws.b64url_decode(p384["y"])) == 48


def test_alg_for_each_supported_key_and_refuses_others() -> None:
    assert jws.alg_for(_rfc7638_key()) == "RS256"
    assert jws.alg_for(ec.derive_private_key(3, ec.SECP256R1())) == "ES256"
    assert jws.alg_for(ec.derive_private_key(3, ec.SECP384R1())) == "ES384"
    with pytest.raises(CryptoError, match="P-256 or P-384"):
        jws.alg_for(ec.derive_private_key(3, ec.SECP521R1()))
    with pytest.raises(CryptoError, match="RSA or EC"):
        jws.alg_for(ed25519.Ed25519PrivateKey.generate())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("curve", "size", "hash_cls"),
    [
        (ec.SECP256R1(), 32, hashes.SHA256),
        (ec.SECP384R1(), 48, hashes.SHA384),
    ],
)
def test_ecdsa_signature_is_raw_r_s_and_verifies(
    curve: ec.EllipticCurve, size: int, hash_cls: type[hashes.HashAlgorithm]
) -> None:
    key = ec.generate_private_key(curve)
    payload_in = {"termsOfServiceAgreed": True}
    body = jws.AccountSigner(key).sign("https://ca.test/new-acct", "nonce-1", payload_in)
    header, payload, signature, signing_input = _decode(body)
    assert header == {
        "alg": jws.alg_for(key),
        "nonce": "nonce-1",
        "url": "https://ca.test/new-acct",
        "jwk": jws.jwk(key),
    }
    assert json.loads(jws.b64url_decode(payload)) == {"termsOfServiceAgreed": True}
    assert len(signature) == 2 * size
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    der = encode_dss_signature(r, s)
    key.public_key().verify(der, signing_input, ec.ECDSA(hash_cls()))
    with pytest.raises(InvalidSignature):
        key.public_key().verify(der, signing_input + b"x", ec.ECDSA(hash_cls()))


def test_rs256_post_as_get_with_kid() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = jws.AccountSigner(key, "https://ca.test/acct/7").sign("https://ca.test/authz/1", "n2",
                                                                 None)
    header, payload, signature, signing_input = _decode(body)
    assert header == {
        "alg": "RS256",
        "nonce": "n2",
        "url": "https://ca.test/authz/1",
        "kid": "https://ca.test/acct/7",
    }
    assert payload == ""  # POST-as-GET (RFC 8555 section 6.3)
    key.public_key().verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())


def test_account_signer_caches_and_switches_from_jwk_to_kid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = jws.AccountSigner(key)
    assert signer.thumbprint == jws.thumbprint(key)
    assert signer.key_authorization("abc") == jws.key_authorization("abc", key)
    header, *_ = _decode(signer.sign("https://ca.test/x", "n", {}))
    assert header["jwk"] == jws.jwk(key)
    assert "kid" not in header
    signer.kid = "https://ca.test/acct/1"
    header, payload, *_ = _decode(signer.sign("https://ca.test/x", "n", {}))
    assert header["kid"] == "https://ca.test/acct/1"
    assert "jwk" not in header
    assert jws.b64url_decode(payload) == b"{}"
    header, *_ = _decode(signer.sign("https://ca.test/x", "n", {}, use_jwk=True))
    assert "jwk" in header and "kid" not in header
    with pytest.raises(CryptoError):
        jws.AccountSigner(key.public_key())  # type: ignore[arg-type]
