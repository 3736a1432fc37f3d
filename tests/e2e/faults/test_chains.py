"""A downloaded chain is stored only if it is a chain for our key and exactly our names,
valid now, for TLS servers: each hostile chain fails its certificate with one line, and not
a byte of it is stored (the old pair, here none, stays).

Why the fault proxy: Pebble issues honest chains. The front lets the real order run to its
end, then answers the certificate download with a chain made for the key and names of the
CSR lematt really sent (``front.csrs``) - the only way to show that the certificate lematt
receives is checked, not just that it is for the right key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.ca_front import CaFront, Reply, Request
from tests.e2e.faults.conftest import TARGET, RunFaults
from tests.e2e.faults.kit import Fault
from tests.forge import Issuer, csr_identity, pem

Forge = Callable[[x509.Certificate, Issuer, object, tuple[str, ...]], bytes]


def _forged(real_inter: x509.Certificate, rogue: Issuer, key: object,
            names: tuple[str, ...]) -> bytes:
    """Claims the CA's real intermediate as its issuer; signed by another key."""
    leaf = rogue.issue(key, names, claim_issuer=real_inter.subject)
    return pem(leaf, real_inter)


def _rogue_issuer(real_inter: x509.Certificate, rogue: Issuer, key: object,
                  names: tuple[str, ...]) -> bytes:
    """A rogue CA's leaf, presented before the CA's real intermediate."""
    return pem(rogue.issue(key, names), real_inter)


def _issuer_not_a_ca(real_inter: x509.Certificate, rogue: Issuer, key: object,
                     names: tuple[str, ...]) -> bytes:
    server = rogue.intermediate("some server", ca=False)
    return pem(server.issue(key, names), server.cert)


def _expired(real_inter: x509.Certificate, rogue: Issuer, key: object,
             names: tuple[str, ...]) -> bytes:
    now = datetime.now(UTC)
    leaf = rogue.issue(key, names, not_before=now - timedelta(days=100),
                       not_after=now - timedelta(days=10))
    return pem(leaf, rogue.cert)


def _client_auth_only(real_inter: x509.Certificate, rogue: Issuer, key: object,
                      names: tuple[str, ...]) -> bytes:
    return pem(rogue.issue(key, names, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)), rogue.cert)


def _extra_name(real_inter: x509.Certificate, rogue: Issuer, key: object,
                names: tuple[str, ...]) -> bytes:
    return pem(rogue.issue(key, (*names, "www.bank.test")), rogue.cert)


def _planted_key(real_inter: x509.Certificate, rogue: Issuer, key: object,
                 names: tuple[str, ...]) -> bytes:
    """A proper-looking chain with a private key block in it (a server reading the combined
    file might take it for its own key)."""
    planted = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"
    return pem(rogue.issue(key, names), rogue.cert) + planted


@dataclass
class Case:
    id: str
    forge: Forge
    expect: str


CASES = [
    Case("forged leaf naming the real intermediate", _forged,
         "not a chain: certificate 1 is not signed by certificate 2"),
    Case("rogue issuer before the real intermediate", _rogue_issuer,
         "not a chain: certificate 1 is not signed by certificate 2"),
    Case("issuer that is not a CA", _issuer_not_a_ca, "certificate 2 is not a CA certificate"),
    Case("expired leaf", _expired, "not valid now"),
    Case("leaf for client authentication only", _client_auth_only, "no serverAuth"),
    Case("leaf with a name more than requested", _extra_name, "other names"),
    Case("private key block in the chain", _planted_key, "other PEM blocks in it (PRIVATE KEY)"),
]


def _answer_with(forge: Forge) -> Callable[[CaFront, Request, Reply], Reply]:
    def change(front: CaFront, request: Request, reply: Reply) -> Reply:
        _, names = front.kind_of(request)
        key, csr_names = csr_identity(front.csrs[names])
        real = x509.load_pem_x509_certificates(reply.body)
        body = forge(real[1], Issuer.root("rogue root"), key, csr_names)
        return Reply(reply.status, dict(reply.headers), body)
    return change


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_chain_that_is_not_ours_is_refused_and_nothing_stored(
        run_faults: RunFaults, case: Case) -> None:
    fault = Fault("certificate", TARGET, change=_answer_with(case.forge))
    scenario = run_faults(case.id, [fault])
    assert fault.hits == 1
    scenario.assert_contained()
    scenario.assert_target_failed(case.expect, "nothing stored", kind="ca")
