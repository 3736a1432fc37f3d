"""crypto.check_issued: a downloaded chain is stored only if it is a chain for our key and
exactly our names, valid now, for TLS servers (issue 10, section 4). Each hostile chain here
is one a CA - or whatever changed its reply - could send; each is refused with one line and
nothing else of it is used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from lematt import crypto
from lematt.errors import CryptoError
from tests.forge import Issuer, pem

NAMES = ("a.chain.test", "www.a.chain.test")


@pytest.fixture(scope="module")
def ca() -> tuple[Issuer, Issuer]:
    root = Issuer.root("honest root")
    return root, root.intermediate("honest intermediate")


@pytest.fixture(scope="module")
def key() -> crypto.PrivateKey:
    return crypto.load_private_key(crypto.generate_private_pem("ec"), validate=False)


def _refused(chain: bytes, key: crypto.PrivateKey, match: str, **kw: object) -> str:
    with pytest.raises(CryptoError, match=match) as info:
        crypto.check_issued(chain, key, NAMES, **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "nothing stored" in message and message.isprintable()
    return message


def test_a_proper_chain_passes_with_or_without_its_root(ca: tuple[Issuer, Issuer],
                                                         key: crypto.PrivateKey) -> None:
    root, inter = ca
    leaf = inter.issue(key.public_key(), NAMES)
    for chain in (pem(leaf), pem(leaf, inter.cert), pem(leaf, inter.cert, root.cert)):
        assert crypto.check_issued(chain, key, NAMES).names == frozenset(NAMES)


def test_text_around_the_blocks_is_dropped_and_other_blocks_refused(
        ca: tuple[Issuer, Issuer], key: crypto.PrivateKey) -> None:
    _, inter = ca
    leaf = pem(inter.issue(key.public_key(), NAMES))
    # RFC 7468 section 2 allows explanatory text; lematt stores the certificates only.
    assert crypto.normalized_chain(b"issued by us\n" + leaf + b"bye\n" + pem(inter.cert)) \
        == leaf + pem(inter.cert)
    planted = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(CryptoError, match=r"other PEM blocks.*PRIVATE KEY"):
        crypto.normalized_chain(leaf + planted)
    _refused(leaf + planted, key, "other PEM blocks")
    _refused(b"<html>no certificate</html>", key, "no readable PEM")
    _refused(leaf * (crypto.MAX_CHAIN_CERTS + 1), key, "chain of 11 certificates")


def test_a_forged_leaf_naming_the_real_intermediate_is_refused(
        ca: tuple[Issuer, Issuer], key: crypto.PrivateKey) -> None:
    """Issuer name right, signature by another key: names chain, signatures do not."""
    _, inter = ca
    rogue = Issuer.root("rogue")
    forged = rogue.issue(key.public_key(), NAMES, claim_issuer=inter.cert.subject)
    _refused(pem(forged, inter.cert), key, "not a chain: certificate 1 is not signed by "
             "certificate 2")


def test_a_leaf_of_a_rogue_issuer_before_the_real_intermediate_is_refused(
        ca: tuple[Issuer, Issuer], key: crypto.PrivateKey) -> None:
    _, inter = ca
    rogue_leaf = Issuer.root("rogue").issue(key.public_key(), NAMES)
    _refused(pem(rogue_leaf, inter.cert), key, "not signed by certificate 2")


def test_an_intermediate_not_signed_by_the_next_one_is_refused(
        ca: tuple[Issuer, Issuer], key: crypto.PrivateKey) -> None:
    _, inter = ca
    leaf = inter.issue(key.public_key(), NAMES)
    _refused(pem(leaf, inter.cert, Issuer.root("honest root").cert), key,
             "certificate 2 is not signed by certificate 3")


def test_an_issuer_that_is_not_a_ca_is_refused(ca: tuple[Issuer, Issuer],
                                                key: crypto.PrivateKey) -> None:
    root, _ = ca
    end_entity = root.intermediate("just a server", ca=False)
    leaf = end_entity.issue(key.public_key(), NAMES)
    _refused(pem(leaf, end_entity.cert), key, "certificate 2 is not a CA certificate")


def test_the_leaf_must_be_valid_now(ca: tuple[Issuer, Issuer], key: crypto.PrivateKey) -> None:
    _, inter = ca
    now = datetime.now(UTC)
    expired = inter.issue(key.public_key(), NAMES, not_before=now - timedelta(days=91),
                          not_after=now - timedelta(days=1))
    _refused(pem(expired, inter.cert), key, "not valid now")
    future = inter.issue(key.public_key(), NAMES, not_before=now + timedelta(hours=1))
    _refused(pem(future, inter.cert), key, "not valid now")
    # A CA whose clock runs a minute ahead is not hostile.
    ahead = inter.issue(key.public_key(), NAMES, not_before=now + timedelta(minutes=1))
    assert crypto.check_issued(pem(ahead, inter.cert), key, NAMES).names == frozenset(NAMES)


def test_the_leaf_must_allow_server_auth_and_not_be_a_ca(ca: tuple[Issuer, Issuer],
                                                          key: crypto.PrivateKey) -> None:
    _, inter = ca
    client_only = inter.issue(key.public_key(), NAMES, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    _refused(pem(client_only, inter.cert), key, "serverAuth")
    both = inter.issue(key.public_key(), NAMES, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,
                                                     ExtendedKeyUsageOID.SERVER_AUTH))
    no_eku = inter.issue(key.public_key(), NAMES, eku=None)
    for good in (both, no_eku):
        assert crypto.check_issued(pem(good, inter.cert), key, NAMES)
    _refused(pem(inter.issue(key.public_key(), NAMES, ca=True), inter.cert), key,
             "a CA certificate instead")


def test_exactly_our_key_and_names(ca: tuple[Issuer, Issuer], key: crypto.PrivateKey) -> None:
    _, inter = ca
    other = crypto.load_private_key(crypto.generate_private_pem("ec"), validate=False)
    _refused(pem(inter.issue(other.public_key(), NAMES), inter.cert), key,
             "different public key")
    _refused(pem(inter.issue(key.public_key(), NAMES[:1]), inter.cert), key, "other names")
    _refused(pem(inter.issue(key.public_key(), (*NAMES, "evil.test")), inter.cert), key,
             "other names")
    _refused(pem(inter.issue(key.public_key(), NAMES, ip="192.0.2.1"), inter.cert), key,
             "and 1 other identities")
    # The leaf last: the first certificate is the leaf (RFC 8555 section 9.1).
    _refused(pem(inter.cert, inter.issue(key.public_key(), NAMES)), key,
             "different public key")


def test_a_hostile_name_in_the_certificate_is_shown_escaped(
        ca: tuple[Issuer, Issuer], key: crypto.PrivateKey) -> None:
    _, inter = ca
    leaf = inter.issue(key.public_key(), ("a.chain.test\n[TEST] renewed x\x1b[2J",))
    message = _refused(pem(leaf, inter.cert), key, "other names")
    assert "\\n[test] renewed x\\x1b[2j" in message  # names are compared lowercased
