"""http-01 served by lematt itself (``challengeListen``) for the duration of a run.

Contract: ``ChallengeServer.running(host, port)`` binds before it yields (a bind failure is a
``ChallengeError`` that says why) and stops when the block ends. It answers
``GET /.well-known/acme-challenge/<token>`` with the key authorization of a presented token
and 404 for everything else (other paths, queries, other methods); tokens are held in memory,
and with ``shared_dir`` also looked up as files there (``<shared_dir>/<token>``, written by
order processes of the same run through ``DropDirSolver(shared_dir, durable=False)``; only a
well-formed token is ever turned into a file name). Each connection gets one answer and is
closed; a client that does not send its request head within ``REQUEST_TIMEOUT`` seconds is
dropped, so no client can hold the server up.

Why not aiohttp's web server: the CA fetches every token several times from fresh
connections (Let's Encrypt and Pebble validate from several perspectives), so in a bulk run
this server handles more connections than the ACME client makes requests. A bare asyncio
protocol answers each in a few microseconds of Python instead of a full web stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio

from lematt.challenges import CHALLENGE_PATH, check_token
from lematt.errors import ChallengeError
from lematt.names import is_valid_token

REQUEST_TIMEOUT = 10.0
MAX_HEAD = 8192


def _response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


NOT_FOUND = _response("404 Not Found", b"not found\n")
BAD_REQUEST = _response("400 Bad Request", b"bad request\n")


class _Http01(asyncio.Protocol):
    """One connection: read the request head, answer once, close."""

    def __init__(self, lookup: Callable[[str], str | None]) -> None:
        self._lookup = lookup
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        self._buffer += data
        if b"\r\n\r\n" not in self._buffer and b"\n\n" not in self._buffer:
            if len(self._buffer) > MAX_HEAD:
                self._answer(BAD_REQUEST)
            return
        line = bytes(self._buffer).split(b"\n", 1)[0].rstrip(b"\r")
        self._answer(self._route(line))

    def _route(self, line: bytes) -> bytes:
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return BAD_REQUEST
        method, target = parts[0], parts[1].decode("ascii", "replace")
        if method != b"GET" or not target.startswith(CHALLENGE_PATH):
            return NOT_FOUND
        answer = self._lookup(target[len(CHALLENGE_PATH):])
        return NOT_FOUND if answer is None else _response("200 OK", answer.encode())

    def _answer(self, response: bytes) -> None:
        assert self._transport is not None
        self._transport.write(response)
        self._transport.close()


class ChallengeServer:
    def __init__(self, shared_dir: Path | None = None) -> None:
        self._tokens: dict[str, str] = {}
        self._shared_dir = shared_dir

    def _lookup(self, token: str) -> str | None:
        answer = self._tokens.get(token)
        if answer is None and self._shared_dir is not None and is_valid_token(token):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                return (self._shared_dir / token).read_bytes().decode("ascii")
        return answer

    @contextlib.asynccontextmanager
    async def running(self, host: str, port: int) -> AsyncIterator[ChallengeServer]:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: _Http01(self._lookup), host, port,
                                              reuse_address=True)
        except OSError as exc:
            why = ("permission denied (ports below 1024 need root or cap_net_bind_service)"
                   if exc.errno == errno.EACCES else exc.strerror or str(exc))
            raise ChallengeError(f"challengeListen {host}:{port}: cannot listen: {why}") from exc
        try:
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                server.close()
                with anyio.move_on_after(5):
                    await server.wait_closed()

    @contextlib.asynccontextmanager
    async def present(self, identifier: str, token: str, key_authorization: str
                      ) -> AsyncIterator[None]:
        self._tokens[check_token(token)] = key_authorization
        try:
            yield
        finally:
            self._tokens.pop(token, None)
