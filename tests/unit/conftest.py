"""Unit tests: no network, no subprocess, no real service.

Contract: every test under tests/unit/ runs with IP sockets and process creation refused. A
test that binds, connects or sends over IPv4/IPv6 (loopback included), or starts a process
(``subprocess``, ``os.fork``/``posix_spawn``, ``multiprocessing``), fails with a
:class:`UnitTestBoundary` error naming what it tried; such a test belongs in tests/e2e/. Unix
socket pairs stay allowed: asyncio's event loop wakes itself up through one. The service
fixtures live in tests/e2e/conftest.py, so a unit test cannot even ask for them.
"""

from __future__ import annotations

import multiprocessing.util
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class UnitTestBoundary(AssertionError):
    """A unit test tried to use the network or start a process."""


def _refuse(what: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise UnitTestBoundary(f"a unit test may not {what}: move it to tests/e2e/")

    return refused


def _refuse_ip(what: str, original: Callable[..., Any]) -> Callable[..., Any]:
    # Only IP sockets: socket.socketpair() (AF_UNIX) is how asyncio wakes its own loop.
    def guarded(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if sock.family in _IP_FAMILIES:
            raise UnitTestBoundary(f"a unit test may not {what} an IP socket: move it to "
                                   "tests/e2e/")
        return original(sock, *args, **kwargs)

    return guarded


@pytest.fixture(autouse=True)
def _no_network_no_subprocess(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for method in ("bind", "connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, method,
                            _refuse_ip(method, getattr(socket.socket, method)))
    # Popen._execute_child is where every subprocess API (run, asyncio, anyio) ends up.
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("start a subprocess"))
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds",
                        _refuse("start a worker process"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse(f"call os.{name}"))
    yield


@pytest.fixture(autouse=True)
def _fresh_lematt_logger() -> Iterator[None]:
    """``lematt.cli.main`` gives the ``lematt`` logger its handlers (``lematt.logs``), bound to
    the streams of the test that called it: no later test may write through them."""
    import logging

    yield
    logger = logging.getLogger("lematt")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
