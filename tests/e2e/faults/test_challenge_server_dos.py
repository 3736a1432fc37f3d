"""``challengeListen`` under a flood of idle connections: not a lever against the run.

The server-level tests use real sockets on loopback against ``ChallengeServer`` alone. The
run-level tests order certificates from the session Pebble with lematt as a process under a
lowered descriptor limit (``RLIMIT_NOFILE``, set in the child before exec), while this test
holds more idle connections to lematt's challenge port than lematt has descriptors: before
the connection limits, such a flood made orders fail after the CA had issued them.

Two loopback devices stand in for the network (there is no real peer that floods on purpose):

* ``Flood`` - idle TCP connections from one source address: opened, never written to.
* ``Gate`` - listens where Pebble validates (the names resolve to it) and passes each of
  Pebble's connections on to lematt, byte for byte, from the address standing for the CA's
  network, only once the flood is in place. Without it the CA could validate before the
  flood had started, and the test would prove nothing; with it every validation meets the
  flood.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from lematt.challenges.server import ChallengeServer, ConnectionLimits, _source
from lematt.testing.pebble import PebbleRig
from tests.e2e.conftest import PORT_OFFSET, REPO_ROOT, MakeConf

LISTEN = "127.0.0.61"  # lematt's challengeListen address
GATE = "127.0.0.63"  # where the names resolve: Pebble's validations arrive here
CA_SOURCE = "127.0.0.64"  # the gate's connections to lematt come from here: "the CA"
FLOOD_SOURCE = "127.0.0.65"  # another network
SERVER_PORT = 18090 + PORT_OFFSET  # server-level tests
NOFILE = 256  # lematt's descriptor limit in the run-level tests
FLOOD = 400  # idle connections: more than lematt's descriptors, more than any limit
LINES = 10
PREFIX = "/.well-known/acme-challenge/"


class Flood:
    """Idle connections from ``source`` to ``target``, opened and never written to.

    ``start`` waits (bounded) until ``target`` accepts, opens ``count`` connections, sets
    ``ready``, and with ``reopen`` keeps opening one for each the server closes (one round
    at most every 0.1 s; ``budget`` connections in all), until ``stop``.
    """

    def __init__(self, target: tuple[str, int], source: str, count: int, *,
                 reopen: bool, budget: int = 50_000) -> None:
        self.target, self.source, self.count = target, source, count
        self.reopen, self.budget = reopen, budget
        self.ready = threading.Event()
        self.opened = 0
        self.closed_by_peer = 0  # connections the server closed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Flood:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()

    def _connect(self) -> socket.socket | None:
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.bind((self.source, 0))
            sock.connect(self.target)
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        for _ in range(1200):  # up to 60 s for lematt to start listening
            probe = self._connect()
            if probe is not None:
                probe.close()
                break
            if self._stop.wait(0.05):
                return
        held = selectors.DefaultSelector()  # epoll: more than FD_SETSIZE sockets
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                limit = self.budget if self.reopen else self.count
                while len(held.get_map()) < self.count and self.opened < limit:
                    sock = self._connect()
                    if sock is None:
                        break
                    self.opened += 1
                    held.register(sock, selectors.EVENT_READ)
                if self.opened >= self.count:
                    self.ready.set()
                for key, _ in held.select(timeout=0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    with contextlib.suppress(OSError):
                        if sock.recv(1):
                            continue  # the server never sends first; nothing to count
                    held.unregister(sock)
                    sock.close()
                    self.closed_by_peer += 1
                self._stop.wait(max(0.0, started + 0.1 - time.monotonic()))  # pace rounds
        finally:
            for key in list(held.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            held.close()


class Gate:
    """Accepts at ``listen`` and relays each connection to ``target`` from ``source`` once
    ``open_when`` is set (see the module docstring)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], source: str,
                 open_when: threading.Event) -> None:
        self.target, self.source, self.open_when = target, source, open_when
        self.relayed = 0
        self.sock = socket.create_server(listen, reuse_port=False)
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Gate:
        self._accepter.start()
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._accepter.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=40)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                thread = threading.Thread(target=self._relay, args=(conn,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _relay(self, client: socket.socket) -> None:
        with client:
            if not self.open_when.wait(timeout=60):
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10,
                                                    source_address=(self.source, 0))
            except OSError:
                return
            self.relayed += 1
            with upstream:
                pipes = {client: upstream, upstream: client}
                with selectors.DefaultSelector() as sel:
                    for sock in pipes:
                        sel.register(sock, selectors.EVENT_READ)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        events = sel.select(timeout=1)
                        for key, _ in events:
                            sock = key.fileobj
                            assert isinstance(sock, socket.socket)
                            try:
                                data = sock.recv(65536)
                            except OSError:
                                data = b""
                            if not data:
                                return
                            pipes[sock].sendall(data)


# --------------------------------------------------------------------------- server level

async def _get(token: str, source: str) -> bytes:
    request = f"GET {PREFIX}{token} HTTP/1.1\r\nHost: a.example.test\r\n\r\n".encode()
    reply = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(LISTEN, SERVER_PORT, local_host=source) as stream:
            await stream.send(request)
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    reply += await stream.receive()
    return reply


def _idle(count: int, sources: list[str]) -> list[socket.socket]:
    """``count`` idle connections to the server, from ``sources`` in turn (oldest first)."""
    socks = []
    for i in range(count):
        sock = socket.socket()
        sock.bind((sources[i % len(sources)], 0))
        sock.settimeout(5)
        sock.connect((LISTEN, SERVER_PORT))
        sock.settimeout(None)  # blocking: _closed's MSG_DONTWAIT then never waits
        socks.append(sock)
    return socks


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (its FIN is already here: loopback delivers it as
    the server closes)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.anyio
async def test_a_flood_from_one_network_closes_only_its_own_oldest() -> None:
    server = ChallengeServer(limits=ConnectionLimits(total=16, per_source=8, backlog=64))
    async with server.running(LISTEN, SERVER_PORT), \
            server.present("a.example.test", "tokA", "tokA.thumb"):
        flood = _idle(20, [FLOOD_SOURCE])
        bystander = _idle(1, [CA_SOURCE])[0]  # an idle one from elsewhere: it stays
        try:
            # Served after the server took every earlier connection in (accept order).
            reply = await _get("tokA", CA_SOURCE)
            assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"tokA.thumb")
            assert [_closed(s) for s in flood] == [True] * 12 + [False] * 8
            assert not _closed(bystander)
            assert server.connections == 9 and server.closed_by_limit == 12
        finally:
            for sock in [*flood, bystander]:
                sock.close()


@pytest.mark.anyio
async def test_many_networks_at_once_close_the_oldest_of_all() -> None:
    server = ChallengeServer(limits=ConnectionLimits(total=16, per_source=8, backlog=64))
    sources = [f"127.0.0.{100 + i}" for i in range(10)]
    async with server.running(LISTEN, SERVER_PORT), \
            server.present("a.example.test", "tokA", "tokA.thumb"):
        flood = _idle(20, sources)
        try:
            reply = await _get("tokA", CA_SOURCE)
            assert reply.startswith(b"HTTP/1.1 200 OK")
            # 20 idle + the request: the 5 oldest went to keep 16 (the request's own
            # connection is the newest, so it was never the one closed).
            assert [_closed(s) for s in flood] == [True] * 5 + [False] * 15
        finally:
            for sock in flood:
                sock.close()


@pytest.mark.anyio
async def test_leaving_the_server_closes_what_it_still_holds() -> None:
    server = ChallengeServer(limits=ConnectionLimits(total=16, per_source=8, backlog=64))
    async with server.running(LISTEN, SERVER_PORT):
        held = _idle(4, [FLOOD_SOURCE])
        await _get("none", CA_SOURCE)  # all four are in
        assert server.connections == 4
    try:
        assert [_closed(s) for s in held] == [True] * 4
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(("peer", "source"), [
    (("192.0.2.7", 4711), "192.0.2.7"),
    (("2001:db8:1:2:3:4:5:6", 4711, 0, 0), "2001:db8:1:2::/64"),  # one host holds a /64
    (("::ffff:192.0.2.7", 4711, 0, 0), "192.0.2.7"),  # IPv4 on a dual-stack socket
])
def test_connections_count_against_their_source_network(peer: tuple[object, ...],
                                                         source: str) -> None:
    assert _source(peer) == source


def test_limits_follow_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard))
        assert ConnectionLimits.for_this_process() == ConnectionLimits(
            total=64, per_source=32, backlog=32)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert ConnectionLimits.for_this_process() == ConnectionLimits(
            total=256, per_source=128, backlog=128)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------- run level

def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.mark.parametrize(("flood_source", "reopen"), [
    (FLOOD_SOURCE, True),  # another network, reopening every connection the server closes
    (CA_SOURCE, False),  # the CA's own network: the 1,100 idle connections
], ids=["other-network-reopening", "ca-network-once"])
def test_orders_succeed_while_idle_connections_flood_challenge_listen(
        tmp_path: Path, make_conf: MakeConf, pebble: PebbleRig, flood_source: str,
        reopen: bool) -> None:
    port = pebble.http_port
    names = [f"l{n}.flood.test" for n in range(LINES)]
    for name in names:
        pebble.add_a(name, GATE)
    conf = make_conf(tmp_path, "".join(f"{name}\n" for name in names), extra_conf={
        "challengeDropDir": None, "keyTypes": "ec", "challengeListen": f"{LISTEN}:{port}"})
    flood = Flood((LISTEN, port), flood_source, FLOOD, reopen=reopen)
    gate = Gate((GATE, port), (LISTEN, port), CA_SOURCE, flood.ready)
    # The gate listens before lematt starts (Pebble's connections wait in its backlog);
    # the threads start after the fork, as preexec_fn wants.
    lematt = subprocess.Popen(
        [sys.executable, "-m", "lematt", "--test", "--config", str(conf)], cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_low_nofile)
    try:
        gate.start()
        flood.start()
        out, err = lematt.communicate(timeout=240)
    finally:
        if lematt.poll() is None:
            os.killpg(lematt.pid, signal.SIGKILL)
            lematt.wait()
        flood.stop()
        gate.close()
        for name in names:
            pebble.clear_a(name)
    assert flood.ready.is_set() and flood.opened >= FLOOD, (flood.opened, err)
    assert gate.relayed >= LINES  # every validation went through the flood
    assert lematt.returncode == 0, (flood.opened, flood.closed_by_peer, err)
    assert "Traceback" not in err
    assert out.count("renewed ") == LINES, out
    for name in names:
        assert (tmp_path / f"test/cert/{name}-cert-combined.prime256v1.test.pem").exists()
