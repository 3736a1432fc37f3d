"""http-01 served by lematt itself (``challengeListen``) for the duration of a run.

Contract: ``ChallengeServer.running(host, port)`` binds before it yields (a bind failure is a
``ChallengeError`` that says why) and stops when the block ends, closing every connection it
still holds. It answers ``GET /.well-known/acme-challenge/<token>`` with the key authorization
of a presented token and 404 for everything else (other paths, queries, other methods);
tokens are held in memory, and with ``shared_dir`` also looked up as files there
(``<shared_dir>/<token>``, written by order processes of the same run through
``DropDirSolver(shared_dir, durable=False)``; only a well-formed token is ever turned into a
file name). Nothing the server meets - a client, a flood of them, a failed accept - raises
into the run: a certificate the CA has validated is never lost to it.

Not a lever against the run (it listens on a public port while lematt holds the CA's orders
and its own files open): each connection gets one answer and is closed; a client must send
its first byte within ``FIRST_BYTE_TIMEOUT`` and its whole request head within
``HEAD_TIMEOUT`` seconds, and at most ``limits.per_source`` connections per source network
(an IPv4 address, an IPv6 /64) and ``limits.total`` in all are held: one more closes that
source's (or everyone's) oldest. ``ConnectionLimits.for_this_process()`` sizes them from the
descriptor limit (RLIMIT_NOFILE), so idle clients can never take the descriptors the orders
need: 1,100 idle connections under a 1024-descriptor limit once made 7 of 10 orders fail after
their certificates were issued. A CA's request arrives right after its connection (Let's
Encrypt validates each name from several addresses, each connection asking once), so these
limits never touch it; a flood from one other network only ever closes its own connections.

Why not aiohttp's web server: the CA fetches every token several times from fresh
connections (Let's Encrypt and Pebble validate from several perspectives), so in a bulk run
this server handles more connections than the ACME client makes requests. A bare asyncio
protocol answers each in a few microseconds of Python instead of a full web stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import resource
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from lematt.challenges import CHALLENGE_PATH, check_token
from lematt.errors import ChallengeError
from lematt.names import is_valid_token

# A client gets this long for its first byte and for its whole request head. A validating
# CA sends its request in the packet after the handshake; the margin is for a lost packet
# (TCP's initial retransmission timeout is 1 s, RFC 6298 section 2.1) on a long path.
FIRST_BYTE_TIMEOUT = 3.0
HEAD_TIMEOUT = 5.0
MAX_HEAD = 8192
# At most a quarter of the process's descriptors go to challenge connections; the rest stay
# for the CA connections, key workers, SSH and the files the orders write.
_SHARE_OF_DESCRIPTORS = 4
_MAX_TOTAL = 512
_MIN_TOTAL = 16


@dataclass(frozen=True)
class ConnectionLimits:
    """Connections the server holds at once (in all, and per source network), and its
    listen backlog. asyncio accepts up to ``backlog`` connections per wake-up before any of
    them is counted, and about two such batches can be on their way, so the descriptors the
    server can take are ``total + 2 * backlog``."""

    total: int
    per_source: int
    backlog: int = 16

    @classmethod
    def for_this_process(cls) -> ConnectionLimits:
        """A quarter of the soft descriptor limit held (16 to 512), half of that per source,
        and a backlog of half of it: at most half of the descriptors in all."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        share = _MAX_TOTAL if soft == resource.RLIM_INFINITY else soft // _SHARE_OF_DESCRIPTORS
        total = max(_MIN_TOTAL, min(_MAX_TOTAL, share))
        return cls(total=total, per_source=max(1, total // 2), backlog=max(8, total // 2))


def _source(peer: object) -> str:
    """The source network a peer counts against: its IPv4 address, or its IPv6 /64 (one
    host commonly holds a whole /64, RFC 6177)."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # a dual-stack socket's IPv4 client
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


NOT_FOUND = _response("404 Not Found", b"not found\n")
BAD_REQUEST = _response("400 Bad Request", b"bad request\n")


class _Connections:
    """The connections held now, oldest first, in all and per source network."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.closed_by_limit = 0  # for tests and --debug: connections closed to make room
        self._all: OrderedDict[_Http01, None] = OrderedDict()
        self._by_source: dict[str, OrderedDict[_Http01, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def add(self, conn: _Http01) -> None:
        mine = self._by_source.setdefault(conn.source, OrderedDict())
        mine[conn] = None
        self._all[conn] = None
        # One source over its share closes its own oldest, so a flood from one network
        # never closes anyone else's; over the total, the oldest of all goes.
        if len(mine) > self.limits.per_source:
            self._evict(next(iter(mine)))
        if len(self._all) > self.limits.total:
            self._evict(next(iter(self._all)))

    def _evict(self, conn: _Http01) -> None:
        self.discard(conn)
        self.closed_by_limit += 1
        conn.abort()

    def discard(self, conn: _Http01) -> None:
        if conn not in self._all:
            return  # closed to make room before its connection_lost
        del self._all[conn]
        mine = self._by_source[conn.source]
        del mine[conn]
        if not mine:
            del self._by_source[conn.source]

    def abort_all(self) -> list[_Http01]:
        """Close every connection held; returns them (their ``lost`` is set once closed)."""
        conns = list(self._all)
        for conn in conns:
            self.discard(conn)
            conn.abort()
        return conns


class _Http01(asyncio.Protocol):
    """One connection: read the request head, answer once, close."""

    def __init__(self, lookup: Callable[[str], str | None], held: _Connections) -> None:
        self._lookup = lookup
        self._held = held
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.source = ""
        self.lost = asyncio.Event()  # set when the socket is closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.source = _source(transport.get_extra_info("peername"))
        loop = asyncio.get_running_loop()
        self._timers = [loop.call_later(FIRST_BYTE_TIMEOUT, self._first_byte_due),
                        loop.call_later(HEAD_TIMEOUT, transport.abort)]
        self._held.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers:
            timer.cancel()
        self._held.discard(self)
        self.lost.set()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _first_byte_due(self) -> None:
        if not self._buffer and self._transport is not None:
            self._transport.abort()

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
        # close() sends what is buffered first; the head deadline still aborts a client
        # that never reads it.
        self._transport.close()


class ChallengeServer:
    def __init__(self, shared_dir: Path | None = None,
                 limits: ConnectionLimits | None = None) -> None:
        self._tokens: dict[str, str] = {}
        self._shared_dir = shared_dir
        self._held = _Connections(limits or ConnectionLimits.for_this_process())

    @property
    def connections(self) -> int:
        """Connections held now."""
        return len(self._held)

    @property
    def closed_by_limit(self) -> int:
        """Connections closed so far to stay within the limits."""
        return self._held.closed_by_limit

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
            server = await loop.create_server(lambda: _Http01(self._lookup, self._held),
                                              host, port, reuse_address=True,
                                              backlog=self._held.limits.backlog)
        except OSError as exc:
            why = ("permission denied (ports below 1024 need root or cap_net_bind_service)"
                   if exc.errno == errno.EACCES else exc.strerror or str(exc))
            raise ChallengeError(f"challengeListen {host}:{port}: cannot listen: {why}") from exc
        try:
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                server.close()
                left = self._held.abort_all()  # what is left now is idle or hostile
                with anyio.move_on_after(5):
                    for conn in left:  # aborted sockets close on the loop's next turn
                        await conn.lost.wait()
                    await server.wait_closed()

    @contextlib.asynccontextmanager
    async def present(self, identifier: str, token: str, key_authorization: str
                      ) -> AsyncIterator[None]:
        self._tokens[check_token(token)] = key_authorization
        try:
            yield
        finally:
            self._tokens.pop(token, None)
