"""AcmeClient and obtain() against a real Pebble (lematt.testing.pebble), plus fakes only where
no real peer can produce the case (a CA answering 429/503 with Retry-After).

The session Pebble keeps its default 5 % badNonce rejection, so the retry path runs in every
test here. A second Pebble (module scope, its own ports) rejects 40 % of nonces and always
reuses valid authorizations, for the badNonce and the authorization-reuse tests.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from lematt.acme.client import AcmeClient
from lematt.acme.jws import AccountKey
from lematt.acme.order import ChallengeSolver, obtain
from lematt.errors import AcmeError, AcmeProblem, ChallengeError
from lematt.testing.pebble import (
    LOOPBACK,
    PebbleRig,
    StaticChallengeServer,
    free_ports,
    start_pebble,
)
from tests.e2e.conftest import ChallengeDrop

DEADLINE = 60.0  # seconds for one order; Pebble with PEBBLE_VA_NOSLEEP needs well under 1 s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class DropSolver:
    """The smallest http-01 solver: the key authorization as a file in the drop dir."""

    def __init__(self, drop_dir: Path) -> None:
        self.drop_dir = drop_dir
        self.presented: list[str] = []
        self.tokens: list[str] = []
        self.active = 0

    @contextlib.asynccontextmanager
    async def present(
        self, identifier: str, token: str, key_authorization: str
    ) -> AsyncIterator[None]:
        path = self.drop_dir / token
        path.write_text(key_authorization)
        self.presented.append(identifier)
        self.tokens.append(token)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            path.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        return [t for t in self.tokens if (self.drop_dir / t).exists()]


def _account_key(kind: str = "ec256") -> AccountKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if kind == "ec384" else ec.SECP256R1())


def _csr(names: list[str]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.DER)


def _assert_chain(pem: str, names: list[str], key: ec.EllipticCurvePrivateKey) -> None:
    certs = x509.load_pem_x509_certificates(pem.encode())
    assert len(certs) >= 2, "the full chain (leaf + intermediate) is expected"
    leaf = certs[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(names)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert leaf.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _open(rig: PebbleRig, key: AccountKey, **kwargs: Any) -> Any:
    return AcmeClient.open(rig.directory_url, key, ca_bundle=str(rig.ca_bundle), **kwargs)


async def _order(client: AcmeClient, names: list[str], solver: ChallengeSolver) -> None:
    key, csr = _csr(names)
    pem = await obtain(client, names, csr, solver, deadline=anyio.current_time() + DEADLINE)
    _assert_chain(pem, names, key)


@pytest.fixture(scope="module")
def strict_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PebbleRig, Path]]:
    """A second Pebble: 40 % badNonce, valid authorizations always reused; own drop dir."""
    acme, mgmt, http, tls, dns, cts = free_ports(6)
    work = tmp_path_factory.mktemp("strict-pebble")
    drop = work / "drop"
    drop.mkdir()
    rig = start_pebble(
        work,
        acme_port=acme,
        management_port=mgmt,
        http_port=http,
        tls_port=tls,
        dns_port=dns,
        challtestsrv_port=cts,
        nonce_reject_percent=40,
        extra_env={"PEBBLE_AUTHZREUSE": "100"},
    )
    try:
        with StaticChallengeServer(drop, LOOPBACK, http):
            yield rig, drop
    finally:
        rig.stop()


# --------------------------------------------------------------------------- real Pebble


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["ec256", "ec384", "rsa"])
async def test_account_is_created_then_found_again(pebble: PebbleRig, kind: str) -> None:
    key = _account_key(kind)
    async with _open(pebble, key) as client:
        assert client.kid is None
        kid = await client.ensure_account("hostmaster@example.test")
        assert kid.startswith("https://127.0.0.1:")
        assert client.kid == kid
    async with _open(pebble, key) as again:
        assert await again.ensure_account(None) == kid


@pytest.mark.anyio
async def test_single_name_order(pebble: PebbleRig, challenge_server: ChallengeDrop) -> None:
    solver = DropSolver(challenge_server.drop_dir)
    async with _open(pebble, _account_key()) as client:
        await client.ensure_account(None)
        await _order(client, ["single.client.example.test"], solver)
    assert solver.presented == ["single.client.example.test"]
    assert solver.leftovers() == []
    assert any(
        path.endswith(solver.tokens[0]) and status == 200
        for path, status in challenge_server.server.hits
    ), "Pebble fetched the token"


@pytest.mark.anyio
async def test_two_name_san_order_with_rsa_account(
    pebble: PebbleRig, challenge_server: ChallengeDrop
) -> None:
    names = ["san1.client.example.test", "san2.client.example.test"]
    solver = DropSolver(challenge_server.drop_dir)
    async with _open(pebble, _account_key("rsa")) as client:
        await client.ensure_account(None)
        await _order(client, names, solver)
    assert sorted(solver.presented) == names
    assert solver.active == 0 and solver.leftovers() == []


@pytest.mark.anyio
async def test_bad_nonce_is_retried(strict_pebble: tuple[PebbleRig, Path]) -> None:
    rig, drop = strict_pebble
    solver = DropSolver(drop)
    names = ["nonce1.client.example.test", "nonce2.client.example.test"]
    async with _open(rig, _account_key()) as client:
        await client.ensure_account(None)
        await _order(client, names, solver)
    # About 20 signed requests at 40 % rejection: without the badNonce retry the order
    # would fail (all of them pass with probability 0.6 ** 20, about 4e-5).


@pytest.mark.anyio
async def test_valid_authorizations_are_not_answered_again(
    strict_pebble: tuple[PebbleRig, Path],
) -> None:
    rig, drop = strict_pebble
    name = "reuse.client.example.test"
    async with _open(rig, _account_key()) as client:
        await client.ensure_account(None)
        first = DropSolver(drop)
        await _order(client, [name], first)
        assert first.presented == [name]
        second = DropSolver(drop)
        await _order(client, [name], second)  # PEBBLE_AUTHZREUSE=100: the authz is valid
        assert second.presented == []


@pytest.mark.anyio
async def test_unreachable_name_fails_with_its_name_and_cleans_up(
    pebble: PebbleRig, challenge_server: ChallengeDrop
) -> None:
    good, bad = "good.client.example.test", "unreachable.client.example.test"
    pebble.add_a(bad, "127.0.0.9")  # nothing listens on 127.0.0.9:<http_port>
    try:
        solver = DropSolver(challenge_server.drop_dir)
        async with _open(pebble, _account_key()) as client:
            await client.ensure_account(None)
            with pytest.raises(ChallengeError) as info:
                await _order(client, [good, bad], solver)
    finally:
        pebble.clear_a(bad)
    assert bad in str(info.value)
    assert good not in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, AcmeProblem) and cause.short_type == "connection"
    assert bad in solver.presented
    assert solver.active == 0 and solver.leftovers() == []


@pytest.mark.anyio
async def test_rejected_identifier_is_a_problem_document(pebble: PebbleRig) -> None:
    async with _open(pebble, _account_key()) as client:
        await client.ensure_account(None)
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["bad_name.client.example.test"])
    assert info.value.status == 400
    assert info.value.short_type == "malformed"
    assert "bad_name.client.example.test" in str(info.value)


@pytest.mark.anyio
async def test_poll_stops_at_the_deadline(pebble: PebbleRig) -> None:
    async with _open(pebble, _account_key()) as client:
        await client.ensure_account(None)
        order, _url = await client.new_order(["pending.client.example.test"])
        authz_url = order.authorizations[0]
        # Never answered, so it stays pending; a deadline already passed must end the poll.
        with pytest.raises(AcmeError, match=r"timed out waiting for the authorization .* after"):
            await client.poll_authorization(authz_url, anyio.current_time())
        authz = await client.get_authorization(authz_url)
        assert authz.status == "pending"


@pytest.mark.anyio
async def test_obtain_stops_at_the_deadline(
    pebble: PebbleRig, challenge_server: ChallengeDrop
) -> None:
    solver = DropSolver(challenge_server.drop_dir)
    names = ["late.client.example.test"]
    async with _open(pebble, _account_key()) as client:
        await client.ensure_account(None)
        with pytest.raises(AcmeError, match="timed out obtaining the certificate for late"):
            await obtain(client, names, _csr(names)[1], solver, deadline=anyio.current_time())
    assert solver.active == 0 and solver.leftovers() == []


@pytest.mark.anyio
async def test_wildcard_without_http01_is_a_challenge_error(
    pebble: PebbleRig, challenge_server: ChallengeDrop
) -> None:
    solver = DropSolver(challenge_server.drop_dir)
    names = ["*.wild.client.example.test"]
    async with _open(pebble, _account_key()) as client:
        await client.ensure_account(None)
        with pytest.raises(
            ChallengeError,
            match=r"^\*\.wild\.client\.example\.test: the CA "
            r"offers no http-01 challenge \(offered: dns-01\)",
        ):
            await _order(client, names, solver)
    assert solver.presented == []


@pytest.mark.anyio
async def test_untrusted_ca_certificate(pebble: PebbleRig) -> None:
    with pytest.raises(AcmeError, match=r"not trusted.*caBundle"):
        async with AcmeClient.open(pebble.directory_url, _account_key()):
            pass


@pytest.mark.anyio
async def test_unreachable_ca_names_the_url() -> None:
    (port,) = free_ports(1)
    url = f"https://{LOOPBACK}:{port}/dir"
    with pytest.raises(AcmeError, match=re.escape(f"cannot connect to the CA at {url}")):
        async with AcmeClient.open(url, _account_key()):
            pass


@pytest.mark.anyio
async def test_silent_ca_times_out() -> None:
    # A listening socket that never answers: the TCP handshake completes, no HTTP reply comes.
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen()
        url = f"http://{LOOPBACK}:{silent.getsockname()[1]}/dir"
        expected = re.escape(f"no answer from the CA at {url} within 0.5 s")
        with pytest.raises(AcmeError, match=expected):
            async with AcmeClient.open(url, _account_key(), request_timeout=0.5):
                pass


# --------------------------------------------------------------------------- fake CA


class FakeBusyCA:
    """A fake CA, because no real peer answers 429/503 on demand (Pebble never rate-limits).

    GET /dir answers 503 once, then the directory; HEAD /nonce gives nonces; POST /acct
    answers 429 ``rateLimited`` with ``Retry-After: <retry_after>`` the first time, then 201.
    """

    def __init__(self, retry_after: str) -> None:
        self.retry_after = retry_after
        self.hits: dict[str, int] = {"dir": 0, "nonce": 0, "acct": 0}
        self.base = ""

    def _nonce(self) -> dict[str, str]:
        return {"Replay-Nonce": f"n{sum(self.hits.values())}"}

    async def directory(self, request: web.Request) -> web.Response:
        self.hits["dir"] += 1
        if self.hits["dir"] == 1:
            return web.Response(status=503, headers={"Retry-After": "0"})
        return web.json_response(
            {
                "newNonce": f"{self.base}/nonce",
                "newAccount": f"{self.base}/acct",
                "newOrder": f"{self.base}/order",
            }
        )

    async def nonce(self, request: web.Request) -> web.Response:
        self.hits["nonce"] += 1
        return web.Response(status=200, headers=self._nonce())

    async def account(self, request: web.Request) -> web.Response:
        self.hits["acct"] += 1
        assert request.content_type == "application/jose+json"
        if self.hits["acct"] == 1:
            return web.json_response(
                {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"},
                status=429,
                content_type="application/problem+json",
                headers={"Retry-After": self.retry_after, **self._nonce()},
            )
        return web.json_response(
            {"status": "valid"},
            status=201,
            headers={"Location": f"{self.base}/acct/1", **self._nonce()},
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get("/dir", self.directory)
        app.router.add_route("HEAD", "/nonce", self.nonce)
        app.router.add_post("/acct", self.account)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind((LOOPBACK, 0))
        self.base = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
        await web.SockSite(runner, sock).start()
        try:
            yield f"{self.base}/dir"
        finally:
            await runner.cleanup()


@pytest.mark.anyio
async def test_429_and_503_are_retried_after_retry_after() -> None:
    ca = FakeBusyCA(retry_after="0")
    async with ca.running() as url, AcmeClient.open(url, _account_key()) as client:
        assert await client.ensure_account(None) == f"{ca.base}/acct/1"
    assert ca.hits["dir"] == 2 and ca.hits["acct"] == 2


@pytest.mark.anyio
async def test_long_retry_after_is_not_waited_for() -> None:
    ca = FakeBusyCA(retry_after="3600")
    async with ca.running() as url, AcmeClient.open(url, _account_key()) as client:
        with pytest.raises(AcmeProblem) as info:
            await client.ensure_account(None)
    assert info.value.short_type == "rateLimited"
    assert info.value.status == 429
    assert "retry after 3600 s" in str(info.value)
    assert ca.hits["acct"] == 1
