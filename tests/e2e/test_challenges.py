"""lematt's built-in challenge server (``challengeListen``) on a real loopback socket (the
solvers without a socket are tests/unit/test_challenges.py)."""

from __future__ import annotations

import aiohttp
import anyio
import pytest

from lematt.challenges.server import ChallengeServer
from lematt.errors import ChallengeError
from tests.e2e.conftest import PORT_OFFSET

ADDRESS = "127.0.0.5"
PORT = 18080 + PORT_OFFSET
BIND_FAILURE_PORT = 18081 + PORT_OFFSET
PREFIX = "/.well-known/acme-challenge/"


async def _raw_status(target: str) -> int:
    """The status the server answers to ``GET <target>``, the request line sent byte for byte.

    An HTTP client library removes dot segments from a URL before it sends it (RFC 3986
    section 5.2.4; aiohttp does): ``PREFIX + "../tokA"`` would go out as ``/.well-known/tokA``,
    which no server answers, so a test through it passes whatever the server does with ``..``.
    """
    request = f"GET {target} HTTP/1.1\r\nHost: a.example.test\r\n\r\n".encode()
    reply = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(ADDRESS, PORT) as stream:
            await stream.send(request)
            try:
                while b"\r\n" not in reply:
                    reply += await stream.receive()
            except anyio.EndOfStream:
                pass
    return int(reply.split(b" ", 2)[1])


@pytest.mark.anyio
async def test_server_serves_only_presented_tokens() -> None:
    server = ChallengeServer()
    base = f"http://{ADDRESS}:{PORT}{PREFIX}"
    async with server.running(ADDRESS, PORT), aiohttp.ClientSession() as http:
        async with server.present("a.example.test", "tokA", "tokA.thumb"):
            async with http.get(base + "tokA") as resp:
                assert resp.status == 200 and await resp.text() == "tokA.thumb"
            for bad in ("tokB", "tokA?x=1", ""):
                async with http.get(base + bad) as resp:
                    assert resp.status == 404, bad
            # The same raw request with the token itself is answered: a 404 for the traversal
            # is the server refusing it, not a request the server could not read. A server
            # that resolved the path below the prefix (say, kept its last segment) would
            # answer tokA here.
            assert await _raw_status(PREFIX + "tokA") == 200
            assert await _raw_status(PREFIX + "../tokA") == 404
        async with http.get(base + "tokA") as resp:
            assert resp.status == 404


@pytest.mark.anyio
async def test_server_bind_failure_says_why() -> None:
    async with ChallengeServer().running(ADDRESS, BIND_FAILURE_PORT):
        with pytest.raises(ChallengeError,
                           match=rf"127\.0\.0\.5:{BIND_FAILURE_PORT}: cannot listen"):
            async with ChallengeServer().running(ADDRESS, BIND_FAILURE_PORT):
                pass
