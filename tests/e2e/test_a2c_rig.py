"""The acme2certifier rig itself: verified HTTPS, nonces, one signed newAccount, the options.

The signed requests use a tiny ES256 JWS written here on purpose: the rig is proven without
lematt's own ACME code, so a lematt bug cannot hide or fake a rig bug.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from lematt.testing.acme2certifier import A2C_VERSION, A2cRig, start_acme2certifier
from lematt.testing.pebble import LOOPBACK, PebbleRig, RigError
from tests.e2e.conftest import A2C_PORT

# The session rig has A2C_PORT (14500 + offset); tests that start their own take the next one.
SECOND_PORT = A2C_PORT + 1

Reply = tuple[int, dict[str, str], bytes]


def _open(rig: A2cRig, request: urllib.request.Request | str,
          context: ssl.SSLContext | None = None) -> Reply:
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler({}),  # loopback only, whatever *_proxy says
        urllib.request.HTTPSHandler(context=context or rig.ssl_context()),
    ]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _Es256:
    """Just enough RFC 7515 to sign ACME requests with a fresh P-256 key."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.jwk = {"crv": "P-256", "kty": "EC", "x": _b64(numbers.x.to_bytes(32, "big")),
                    "y": _b64(numbers.y.to_bytes(32, "big"))}

    def jws(self, url: str, nonce: str, payload: dict[str, Any] | None, *,
            kid: str | None = None) -> bytes:
        protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
        if kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = kid
        prot = _b64(json.dumps(protected).encode())
        body = "" if payload is None else _b64(json.dumps(payload).encode())
        r, s = decode_dss_signature(
            self.key.sign(f"{prot}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r || s
        return json.dumps({"protected": prot, "payload": body,
                           "signature": _b64(signature)}).encode()


def _nonce(rig: A2cRig, directory: dict[str, Any]) -> str:
    status, headers, _ = _open(rig, urllib.request.Request(directory["newNonce"],
                                                           method="HEAD"))
    assert status == 200, status
    return headers["Replay-Nonce"]


def _post(rig: A2cRig, url: str, data: bytes) -> Reply:
    return _open(rig, urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/jose+json"}))


def _new_account(rig: A2cRig, directory: dict[str, Any], signer: _Es256,
                 payload: dict[str, Any]) -> Reply:
    url = directory["newAccount"]
    return _post(rig, url, signer.jws(url, _nonce(rig, directory), payload))


def test_directory_answers_over_verified_https(acme2certifier: A2cRig) -> None:
    directory = acme2certifier.directory()
    base = f"https://{LOOPBACK}:{acme2certifier.port}/acme/"
    for key in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange", "renewalInfo"):
        assert directory[key].startswith(base), (key, directory[key])
    assert directory["meta"]["name"] == "acme2certifier"
    assert directory["meta"]["version"] == A2C_VERSION
    # No EAB, profiles or ToS on the session rig: clients see a plain CA.
    assert not {"externalAccountRequired", "profiles", "termsOfService"} & set(
        directory["meta"])


def test_directory_is_not_trusted_without_ca_bundle(acme2certifier: A2cRig) -> None:
    # Proves the check above really verifies: the system trust store must reject the rig.
    with pytest.raises(urllib.error.URLError) as info:
        _open(acme2certifier, acme2certifier.directory_url, ssl.create_default_context())
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


def test_new_nonce_head_and_get(acme2certifier: A2cRig) -> None:
    directory = acme2certifier.directory()
    first = _nonce(acme2certifier, directory)
    status, headers, _ = _open(acme2certifier, directory["newNonce"])
    assert status == 204  # RFC 8555 7.2: GET answers 204, HEAD 200
    assert headers["Replay-Nonce"] != first


def test_new_account_then_known_key_gets_200_location_and_empty_body(
        acme2certifier: A2cRig) -> None:
    directory = acme2certifier.directory()
    signer = _Es256()
    status, headers, body = _new_account(acme2certifier, directory, signer,
                                         {"termsOfServiceAgreed": True})
    assert status == 201, body
    location = headers["Location"]
    assert location.startswith(f"https://{LOOPBACK}:{acme2certifier.port}/acme/acct/")
    assert json.loads(body)["status"] == "valid"

    # The documented acme2certifier answer for a key it knows: 200, same Location, no status.
    status, headers, body = _new_account(acme2certifier, directory, signer,
                                         {"termsOfServiceAgreed": True})
    assert (status, headers["Location"], json.loads(body)) == (200, location, {})


def test_issuer_cert_is_a_ca_distinct_from_the_tls_ca(acme2certifier: A2cRig) -> None:
    issuer = x509.load_pem_x509_certificate(acme2certifier.issuer_cert.read_bytes())
    tls_ca = x509.load_pem_x509_certificate(acme2certifier.ca_bundle.read_bytes())
    assert issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issuer.subject != tls_ca.subject
    assert str(acme2certifier.issuer_cert) in acme2certifier.config_path.read_text()


def test_eab_profiles_and_no_ari_then_stop_frees_the_port(tmp_path: Path,
                                                          pebble: PebbleRig) -> None:
    rig = start_acme2certifier(tmp_path / "a2c", port=SECOND_PORT,
                               dns_server=(LOOPBACK, pebble.dns_port), eab=True,
                               profiles={"short": "10 days", "long": "a year"}, ari=False,
                               cert_validity_days=10)
    with rig:
        directory = rig.directory()
        assert directory["meta"]["externalAccountRequired"] is True
        assert directory["meta"]["profiles"] == {"short": "10 days", "long": "a year"}
        assert "renewalInfo" not in directory
        assert rig.eab_kid and rig.eab_hmac_key
        assert len(base64.urlsafe_b64decode(rig.eab_hmac_key + "=" * 3)) == 32

        status, _, body = _new_account(rig, directory, _Es256(), {"termsOfServiceAgreed": True})
        assert status == 403
        assert json.loads(body)["type"] == "urn:ietf:params:acme:error:externalAccountRequired"

        # With the binding (RFC 8555 7.3.4: HS256 over the account JWK, same url) it works.
        signer, url = _Es256(), directory["newAccount"]
        eab_protected = _b64(json.dumps({"alg": "HS256", "kid": rig.eab_kid,
                                         "url": url}).encode())
        eab_payload = _b64(json.dumps(signer.jwk).encode())
        mac = hmac.new(base64.urlsafe_b64decode(rig.eab_hmac_key + "=" * 3),
                       f"{eab_protected}.{eab_payload}".encode(), hashlib.sha256).digest()
        binding = {"protected": eab_protected, "payload": eab_payload, "signature": _b64(mac)}
        status, _, body = _new_account(rig, directory, signer,
                                       {"termsOfServiceAgreed": True,
                                        "externalAccountBinding": binding})
        assert status == 201, body
    rig.stop()  # idempotent: a second stop (after __exit__) is a no-op
    assert not rig.alive()
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, SECOND_PORT))


def test_port_in_use_fails_fast_and_says_so(acme2certifier: A2cRig, tmp_path: Path) -> None:
    with pytest.raises(RigError, match="already in use"):
        start_acme2certifier(tmp_path, port=acme2certifier.port,
                             dns_server=acme2certifier.dns_server)


