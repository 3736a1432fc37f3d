"""The ACME pieces of the certificate lifecycle, sans-IO: the ARI certID (RFC 9773 4.1),
RenewalInfo and directory meta parsing, the EAB and key-change JWS (RFC 8555 7.3.4, 7.3.5),
Link headers, when a refused ``replaces`` is retried, and how a fetched window is kept."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from lematt import crypto
from lematt.acme import jws
from lematt.acme.client import _links, _refuses_replaces
from lematt.acme.messages import Directory, Order, RenewalInfo
from lematt.acme.transport import Reply
from lematt.errors import AcmeError, AcmeProblem
from lematt.model import CertState, RenewalWindow
from lematt.orders.renewal_info import _clamped, _window

URL = "https://ca.test/renewal-info/x"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _cert(serial: int, aki: bytes | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x.test")])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(now).not_valid_after(now + timedelta(days=1)))
    if aki is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(aki, None, None), False)
    return builder.sign(key, hashes.SHA256())


def test_cert_id_matches_the_rfc_9773_example() -> None:
    # RFC 9773 section 4.1: keyIdentifier 69:88:5B:...:D4 and serial 0x87654321, whose DER
    # content octets carry a leading zero (its top bit is set).
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert crypto.ari_cert_id(_cert(0x87654321, aki)) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert crypto.ari_cert_id(_cert(0x7654321, aki)).endswith(".B2VDIQ")  # no leading zero
    assert crypto.ari_cert_id(_cert(5, None)) == ""  # no AKI: no CA can name it


def _info(**window: Any) -> dict[str, Any]:
    return {"suggestedWindow": {"start": "2026-01-02T04:00:00Z", "end": "2026-01-03T04:00:00Z",
                                **window}}


def test_renewal_info_parses_rfc3339_and_keeps_only_a_plain_explanation_url() -> None:
    info = RenewalInfo.from_json({**_info(), "explanationURL": "https://ca.test/why"}, URL)
    assert info.start == datetime(2026, 1, 2, 4, tzinfo=UTC).timestamp()
    assert info.end - info.start == 86400
    assert info.explanation_url == "https://ca.test/why"
    fractional = RenewalInfo.from_json(_info(start="2026-01-02T04:00:00.123456789+00:00"), URL)
    assert abs(fractional.start - info.start - 0.123456) < 1e-3
    for hostile in ("javascript:alert(1)", "https://a.test/\x1b[31m", "https://" + "a" * 600,
                    7):
        parsed = RenewalInfo.from_json({**_info(), "explanationURL": hostile}, URL)
        assert parsed.explanation_url is None


@pytest.mark.parametrize("body", [
    {}, {"suggestedWindow": "soon"}, _info(start="yesterday"), _info(end=17),
    _info(start="2026-01-02T04:00:00"),  # no offset: not RFC 3339
    _info(start="2026-01-03T04:00:00Z"),  # ends when it starts: invalid (RFC 9773 4.2)
    _info(end="2026-01-01T04:00:00Z"), _info(start="2" * 80), [],
])
def test_invalid_renewal_info_is_an_error(body: Any) -> None:
    with pytest.raises(AcmeError, match="renewal-info/x"):
        RenewalInfo.from_json(body, URL)


def test_directory_meta_profiles_eab_and_the_order_profile() -> None:
    base = {"newNonce": "n", "newAccount": "a", "newOrder": "o", "renewalInfo": "r"}
    d = Directory.from_json({**base, "meta": {
        "profiles": {"classic": "The same profile you're accustomed to", "shortlived": 6},
        "externalAccountRequired": True, "termsOfService": "https://tos"}}, "https://d")
    assert d.profile_names == ("classic", "shortlived")
    assert d.external_account_required and d.terms_of_service == "https://tos"
    plain = Directory.from_json({**base, "meta": {"externalAccountRequired": "yes",
                                                  "profiles": ["classic"]}}, "https://d")
    assert not plain.external_account_required and plain.profiles == ()
    order = Order.from_json({"status": "pending", "identifiers": [], "authorizations": [],
                             "finalize": "f", "profile": "shortlived"}, "https://o")
    assert order.profile == "shortlived"


def test_eab_binding_is_an_hs256_jws_over_the_account_jwk() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    mac_key = bytes(range(32))
    binding = jws.eab_binding("kid-1", _b64(mac_key), jws.jwk(key), "https://ca.test/new-acct")
    protected = json.loads(_unb64(binding["protected"]))
    assert protected == {"alg": "HS256", "kid": "kid-1", "url": "https://ca.test/new-acct"}
    assert json.loads(_unb64(binding["payload"])) == jws.jwk(key)
    expected = hmac.new(mac_key, f"{binding['protected']}.{binding['payload']}".encode(),
                        hashlib.sha256).digest()
    assert _unb64(binding["signature"]) == expected


def test_key_change_inner_jws_is_signed_by_the_new_key() -> None:
    old = ec.generate_private_key(ec.SECP256R1())
    new = ec.generate_private_key(ec.SECP384R1())
    inner = jws.key_change_inner(jws.AccountSigner(new, "https://ca.test/acct/1"),
                                 "https://ca.test/key-change", "https://ca.test/acct/1",
                                 jws.jwk(old))
    protected = json.loads(_unb64(inner["protected"]))
    assert protected == {"alg": "ES384", "jwk": jws.jwk(new), "url": "https://ca.test/key-change"}
    assert json.loads(_unb64(inner["payload"])) == {"account": "https://ca.test/acct/1",
                                                    "oldKey": jws.jwk(old)}
    sig = _unb64(inner["signature"])
    der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
    new.public_key().verify(der, f"{inner['protected']}.{inner['payload']}".encode(),
                            ec.ECDSA(hashes.SHA384()))


def test_link_headers_and_refused_replaces() -> None:
    class Headers(dict[str, str]):
        def getall(self, name: str, default: list[str]) -> list[str]:
            return ['<https://ca.test/cert/1/1>;rel="alternate", <https://ca.test/dir>;rel="index"',
                    "<https://ca.test/cert/1/2>; rel=alternate"]

    reply = Reply("https://ca.test/cert/1", 200, Headers(), b"")
    assert _links(reply, "alternate") == ["https://ca.test/cert/1/1", "https://ca.test/cert/1/2"]
    assert _links(Reply("u", 200, {}, b""), "alternate") == []
    prefix = "urn:ietf:params:acme:error:"
    assert _refuses_replaces(AcmeProblem(f"{prefix}alreadyReplaced", status=409))
    assert _refuses_replaces(AcmeProblem(f"{prefix}conflict", status=409))
    assert _refuses_replaces(AcmeProblem(f"{prefix}malformed", "cannot find the certificate "
                                         "to be replaced", 400))
    assert not _refuses_replaces(AcmeProblem(f"{prefix}rateLimited", "too many", 429))
    assert not _refuses_replaces(AcmeProblem(f"{prefix}malformed", "bad identifiers", 400))


def test_a_kept_window_keeps_its_moment_and_is_cut_at_expiry() -> None:
    picks: list[tuple[float, float]] = []

    def pick(start: float, end: float) -> float:
        picks.append((start, end))
        return start + 1

    first = _window(100.0, 200.0, 1000.0, None, None, pick)
    assert first == RenewalWindow(100.0, 200.0, 101.0, None)
    kept = CertState("id", None, first)
    # The same window again: the same moment, no new pick (successive runs agree).
    assert _window(100.0, 200.0, 1000.0, kept, "https://why", pick) == first._replace(
        explanation_url="https://why")
    assert len(picks) == 1
    # A moved window: a new moment inside the new one.
    assert _window(150.0, 250.0, 1000.0, kept, None, pick).chosen == 151.0
    # Past notAfter it is cut; one that starts after expiry is no advice.
    assert _window(100.0, 2000.0, 1000.0, None, None, pick).end == 1000.0
    assert _window(1500.0, 2000.0, 1000.0, None, None, pick) is None


def test_retry_after_is_clamped_to_a_minute_and_a_day() -> None:
    assert _clamped(1) == 60 and _clamped(21600) == 21600 and _clamped(10**9) == 86400
    assert _clamped(None) == 6 * 3600


def _pem(subject: str, issuer: str, key: Any, signer: Any, serial: int) -> str:
    from cryptography.hazmat.primitives import serialization

    now = datetime(2026, 1, 1, tzinfo=UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    cert = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(signer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class _Transport:
    """Answers POSTs from a table: what ``AcmeClient.download_certificate`` sees of a CA."""

    def __init__(self, replies: dict[str, tuple[str, list[str]]]) -> None:
        self.replies, self.asked = replies, []
        self.on_account_gone = None

    async def post(self, url: str, payload: Any, what: str, **kw: Any) -> Reply:
        self.asked.append(url)
        body, links = self.replies[url]

        class Headers(dict[str, str]):
            def getall(self, name: str, default: list[str]) -> list[str]:
                return [f'<{u}>;rel="alternate"' for u in links]

        return Reply(url, 200, Headers({"Content-Type": "application/pem-certificate-chain"}),
                     body.encode())


@pytest.mark.anyio
async def test_preferred_chain_takes_only_an_alternate_of_the_same_leaf() -> None:
    from lematt.acme.client import MAX_ALTERNATES, AcmeClient

    # As CAs offer them: one leaf, its intermediate cross-signed by two roots.
    inter_key = _new_key()
    leaf = _pem("x.test", "Inter", _new_key(), inter_key, 7)
    default = leaf + _pem("Inter", "Root A", inter_key, _new_key(), 1)
    wanted = leaf + _pem("Inter", "Root B", inter_key, _new_key(), 2)
    # A hostile alternate: the wanted root, but another leaf.
    foreign = (_pem("x.test", "Inter", _new_key(), inter_key, 9)
               + _pem("Inter", "Root B", inter_key, _new_key(), 2))
    transport = _Transport({"u/0": (default, ["u/1", "u/2"]), "u/1": (foreign, []),
                            "u/2": (wanted, [])})
    client = AcmeClient(transport)  # type: ignore[arg-type]
    assert await client.download_certificate("u/0", "Root B") == wanted
    assert await client.download_certificate("u/0", "Root A") == default
    assert await client.download_certificate("u/0", None) == default
    transport.asked.clear()
    assert await client.download_certificate("u/0", "Root C") == default
    assert transport.asked == ["u/0", "u/1", "u/2"]
    # However many the CA lists, at most MAX_ALTERNATES are fetched.
    many = {f"m/{i}": (foreign, []) for i in range(1, 20)}
    transport = _Transport({"m/0": (default, list(many)), **many})
    client = AcmeClient(transport)  # type: ignore[arg-type]
    assert await client.download_certificate("m/0", "Root B") == default
    assert len(transport.asked) == 1 + MAX_ALTERNATES
