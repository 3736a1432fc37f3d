"""A small TLS server on loopback: SMTP and IMAP STARTTLS dialogues, direct TLS, and two
hostile behaviours, serving the certificate files it is given.

Why not a real mail server: Debian's ``postfix`` package configures the machine's mail
system when it is installed (debconf questions, ``/etc/postfix``, a ``postfix`` user and a
system service on port 25), which a test suite must not do to the machine it runs on; an
instance of its own in a temporary directory still needs root-owned queue directories and
the setgid ``postdrop``. The STARTTLS dialogue lematt speaks before the handshake is a few
lines (RFC 3207 for SMTP, RFC 9051 6.2.1 for IMAP), so this server speaks exactly those, and
the handshake after them is real OpenSSL, as in a real server.

Contract: ``StartTlsServer(address, port, mode, certs)`` serves until ``stop()`` (a context
manager; its own event loop in a daemon thread). ``mode`` is ``smtp``, ``imap``, ``tls``,
``tls13`` (direct TLS that refuses TLS 1.2), ``garbage`` (answers every connection with
bytes that are no protocol) or ``silent`` (accepts and never says anything). ``certs`` maps
a server name to its (certificate chain, key) file pairs, one per key type; the first name
is the default for an unknown or missing SNI. The files are read at each connection, like a
server that reloads at once, so a test changes what is served by writing files.
``connected`` is set once a client has connected (a test waits on it, bounded, to act while
a check is in progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

Pairs = Sequence[tuple[Path, Path]]
MODES = ("smtp", "imap", "tls", "tls13", "garbage", "silent")
_STOP_TIMEOUT = 10.0


class StartTlsServer:
    def __init__(self, address: str, port: int, mode: str,
                 certs: Mapping[str, Pairs]) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.address, self.port, self.mode = address, port, mode
        self.certs = dict(certs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connected = threading.Event()

    def start(self) -> StartTlsServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=_STOP_TIMEOUT)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(_STOP_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_STOP_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> StartTlsServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- serving ------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.address, self.port,
                                                  reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        # End each connection, not its task: a cancelled handler task makes asyncio's stream
        # callback log a traceback; a closed connection ends the handler's read quietly.
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_STOP_TIMEOUT)

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        self.connected.set()
        try:
            async with asyncio.timeout(30):  # one probe is seconds; bound a stuck one
                await self._dialogue(reader, writer)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError,
                ValueError):
            pass  # a client that went away or spoke nonsense: nothing to serve
        finally:
            writer.transport.abort()
            self._tasks.discard(task)  # type: ignore[arg-type]
            self._writers.discard(writer)

    async def _dialogue(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        if self.mode == "silent":
            await reader.read()  # until the client gives up
            return
        if self.mode == "garbage":
            writer.write(b"\x16\x03\x01\xff\xff" + b"not TLS, not anything\r\n" * 8)
            await writer.drain()
            await reader.read()
            return
        if self.mode == "smtp":
            writer.write(b"220 mail.test ESMTP ready\r\n")
            line = await reader.readline()
            if not line.upper().startswith(b"EHLO"):
                writer.write(b"500 EHLO first\r\n")
                return
            writer.write(b"250-mail.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
            if (await reader.readline()).strip().upper() != b"STARTTLS":
                writer.write(b"502 not here\r\n")
                return
            writer.write(b"220 2.0.0 Ready to start TLS\r\n")
        elif self.mode == "imap":
            writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
            tag, _, command = (await reader.readline()).strip().partition(b" ")
            if command.upper() != b"STARTTLS":
                writer.write(tag + b" BAD STARTTLS first\r\n")
                return
            writer.write(tag + b" OK Begin TLS negotiation now\r\n")
        await writer.drain()
        await self._handshake(reader, writer)
        await reader.read(1)  # the client reads the certificate and goes

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """The server side of a TLS handshake over memory buffers (not ``start_tls``, which
        drops the connection on a failed handshake without sending OpenSSL's alert; real
        servers send it, and the client's message depends on it)."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._context().wrap_bio(incoming, outgoing, server_side=True)
        for _ in range(100):  # a handshake is a few flights
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                await writer.drain()
                data = await reader.read(65536)
                if not data:
                    return
                incoming.write(data)
                continue
            except ssl.SSLError:
                writer.write(outgoing.read())  # the alert
                await writer.drain()
                return
            writer.write(outgoing.read())
            await writer.drain()
            return

    def _context(self) -> ssl.SSLContext:
        contexts = {name: self._one_context(pairs) for name, pairs in self.certs.items()}
        default = next(iter(contexts.values()))

        def pick(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            sock.context = contexts.get(name or "", default)

        default.sni_callback = pick  # type: ignore[assignment]
        return default

    def _one_context(self, pairs: Pairs) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if self.mode == "tls13":
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # OpenSSL keeps one certificate per key type in a context and picks the one the
        # client's offered suites can use: RSA and EC side by side, as nginx and Postfix do.
        for cert, key in pairs:
            ctx.load_cert_chain(cert, key)
        return ctx
