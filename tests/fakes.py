"""Stand-ins for peers that no real component can play on purpose (each says why)."""

from __future__ import annotations

import contextlib
import socket
import threading


class BlackHole:
    """A TCP server that accepts and never answers: holds Pebble's validation (and so the
    run, with its forwarder) open for as long as the test needs. No real peer does this on
    purpose, which is why it is a fake."""

    def __init__(self, address: str, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.clients.append(conn)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        # shutdown wakes the thread blocked in accept(); close alone would leave the
        # listening socket alive (and its port taken) until then.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)
