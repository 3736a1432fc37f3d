"""JSON Web Signature for ACME requests, sans-IO.

Contract:

* ``b64url`` / ``b64url_decode``: base64url without padding (RFC 7515 section 2).
* ``jwk(key)``: the public JWK of an RSA, EC P-256 or EC P-384 key (private or public), with
  exactly the required members (RFC 7518 sections 6.2.1 and 6.3.1), keys in lexicographic order
  so that its compact JSON is the RFC 7638 thumbprint input.
* ``thumbprint(key)``, ``key_authorization(token, key)`` (RFC 8555 section 8.1).
* ``alg_for(key)``: RS256 for RSA, ES256 for P-256, ES384 for P-384; anything else raises
  ``CryptoError``.
* ``AccountSigner(key, kid).sign(url, nonce, payload, use_jwk=...)``: one flattened JWS JSON
  serialization (RFC 8555 section 6.2) as bytes, with the JWK, thumbprint and algorithm
  computed once, so a request costs one signature. ``payload=None`` is POST-as-GET (empty
  payload, section 6.3). The protected header carries ``jwk`` when there is no ``kid`` yet or
  ``use_jwk`` (newAccount, section 7.3), else ``kid``.
* ``eab_binding(eab_kid, hmac_key, account_jwk, url)``: the ``externalAccountBinding`` JWS of
  a newAccount request (RFC 8555 section 7.3.4, HS256 over the account's JWK).
* ``key_change_inner(new_signer, url, account_url, old_jwk)``: the inner JWS of a key change
  (section 7.3.5), signed by the new key, carrying the account URL and the old key.

Only the standard library and ``cryptography`` are used; nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from lematt.errors import CryptoError

AccountKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
AnyKey = AccountKey | PublicKey
_B64URL_RE = re.compile(rb"[A-Za-z0-9_-]*")

# (JWK crv, JWS alg, coordinate length in bytes, hash) per supported curve (RFC 7518 3.4, 6.2.1).
_CURVES: dict[str, tuple[str, str, int, type[hashes.HashAlgorithm]]] = {
    "secp256r1": ("P-256", "ES256", 32, hashes.SHA256),
    "secp384r1": ("P-384", "ES384", 48, hashes.SHA384),
}


def b64url(data: bytes) -> str:
    """base64url without ``=`` padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Inverse of ``b64url``; padding is optional, anything outside the alphabet is an error."""
    raw = (text.encode("ascii") if isinstance(text, str) else text).rstrip(b"=")
    if not _B64URL_RE.fullmatch(raw):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def _int_bytes(value: int, length: int | None = None) -> bytes:
    if length is None:
        length = max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def _public(key: AnyKey) -> PublicKey:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key.public_key()
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return key
    raise CryptoError(
        f"unsupported account key type {type(key).__name__}; use an RSA or EC P-256/P-384 key"
    )


_CurveInfo = tuple[str, str, int, type[hashes.HashAlgorithm]]


def _curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> _CurveInfo:
    try:
        return _CURVES[key.curve.name]
    except KeyError:
        raise CryptoError(
            f"unsupported account key curve {key.curve.name}; use P-256 or P-384"
        ) from None


def jwk(key: AnyKey) -> dict[str, str]:
    """Public JWK with only the required members, keys sorted (RFC 7638 section 3.2)."""
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey):
        numbers = pub.public_numbers()
        return {
            "e": b64url(_int_bytes(numbers.e)),
            "kty": "RSA",
            "n": b64url(_int_bytes(numbers.n)),
        }
    crv, _alg, size, _hash = _curve(pub)
    point = pub.public_numbers()
    return {
        "crv": crv,
        "kty": "EC",
        "x": b64url(_int_bytes(point.x, size)),
        "y": b64url(_int_bytes(point.y, size)),
    }


def _thumbprint_of(jwk_dict: dict[str, str]) -> str:
    # RFC 7638 section 3: SHA-256 over the required members, sorted, no whitespace.
    canonical = json.dumps(jwk_dict, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def thumbprint(key: AnyKey) -> str:
    """RFC 7638 SHA-256 thumbprint of the key's JWK, base64url."""
    return _thumbprint_of(jwk(key))


def key_authorization(token: str, key: AnyKey) -> str:
    """``token || '.' || thumbprint`` (RFC 8555 section 8.1)."""
    return f"{token}.{thumbprint(key)}"


def alg_for(key: AnyKey) -> str:
    """JWS ``alg`` for the key: RS256, ES256 or ES384 (RFC 7518 section 3.1)."""
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey):
        return "RS256"
    return _curve(pub)[1]


def _signature(key: AccountKey, signing_input: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _crv, _alg, size, hash_cls = _curve(key)
        der = key.sign(signing_input, ec.ECDSA(hash_cls()))
        # JWS wants the fixed-length R || S concatenation, not DER (RFC 7518 section 3.4).
        r, s = decode_dss_signature(der)
        return _int_bytes(r, size) + _int_bytes(s, size)
    raise CryptoError(
        f"unsupported account key type {type(key).__name__}; use an RSA or EC P-256/P-384 key"
    )


def _encode_payload(payload: dict[str, Any] | None) -> str:
    if payload is None:
        # POST-as-GET: the payload is the empty string (RFC 8555 section 6.3).
        return ""
    return b64url(json.dumps(payload, separators=(",", ":")).encode("utf-8"))


def _jws_object(key: AccountKey, protected: dict[str, Any],
                payload: dict[str, Any] | None) -> dict[str, str]:
    protected_b64 = b64url(json.dumps(protected, separators=(",", ":")).encode("utf-8"))
    payload_b64 = _encode_payload(payload)
    signature = _signature(key, f"{protected_b64}.{payload_b64}".encode("ascii"))
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(signature)}


def _serialize(key: AccountKey, protected: dict[str, Any], payload: dict[str, Any] | None) -> bytes:
    return json.dumps(_jws_object(key, protected, payload), separators=(",", ":")).encode("ascii")


def eab_binding(eab_kid: str, hmac_key: str, account_jwk: dict[str, str],
                url: str) -> dict[str, str]:
    """The ``externalAccountBinding`` member of a newAccount payload (RFC 8555 7.3.4): a JWS
    over the account's public JWK, protected header ``{alg: HS256, kid, url}`` (no nonce),
    MAC'd with the CA's HMAC key (given base64url, as CAs hand it out)."""
    try:
        mac_key = b64url_decode(hmac_key)
    except ValueError:
        raise CryptoError("the external account binding HMAC key is not base64url; "
                          "copy it exactly as your CA gave it") from None
    protected = b64url(json.dumps({"alg": "HS256", "kid": eab_kid, "url": url},
                                  separators=(",", ":")).encode("utf-8"))
    payload = b64url(json.dumps(account_jwk, separators=(",", ":")).encode("utf-8"))
    mac = hmac.new(mac_key, f"{protected}.{payload}".encode("ascii"), hashlib.sha256).digest()
    return {"protected": protected, "payload": payload, "signature": b64url(mac)}


def key_change_inner(new_signer: AccountSigner, url: str, account_url: str,
                     old_jwk: dict[str, str]) -> dict[str, str]:
    """The inner JWS of a key change (RFC 8555 7.3.5): signed by the new key, its protected
    header carries the new JWK and the keyChange URL (no nonce, no kid), its payload the
    account URL and the old key's JWK. It travels as the payload of a request signed with
    the old key."""
    protected = {"alg": new_signer.alg, "jwk": new_signer.jwk, "url": url}
    return _jws_object(new_signer.key, protected, {"account": account_url, "oldKey": old_jwk})


class AccountSigner:
    """An account key with its JWK, thumbprint and ``alg`` computed once.

    ``kid`` is the account URL once known (``ensure_account`` sets it); until then requests
    carry the JWK (RFC 8555 section 6.2).
    """

    __slots__ = ("_jwk", "alg", "key", "kid", "thumbprint")

    def __init__(self, key: AccountKey, kid: str | None = None) -> None:
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise CryptoError(
                f"the account key must be an RSA or EC private key, not {type(key).__name__}"
            )
        self.key = key
        self.kid = kid
        self.alg = alg_for(key)
        self._jwk = jwk(key)
        self.thumbprint = _thumbprint_of(self._jwk)

    @property
    def jwk(self) -> dict[str, str]:
        return dict(self._jwk)

    def key_authorization(self, token: str) -> str:
        return f"{token}.{self.thumbprint}"

    def sign(
        self, url: str, nonce: str, payload: dict[str, Any] | None, *, use_jwk: bool = False
    ) -> bytes:
        """Sign with ``kid`` if known (and ``use_jwk`` is false), else with the JWK."""
        protected: dict[str, Any] = {"alg": self.alg, "nonce": nonce, "url": url}
        if use_jwk or self.kid is None:
            protected["jwk"] = self._jwk
        else:
            protected["kid"] = self.kid
        return _serialize(self.key, protected, payload)
