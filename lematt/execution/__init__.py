"""One interface for running commands, locally (``local``) or over SSH (``ssh``).

Contract: a runner has a ``name`` (the host label used in messages and ordering), ``run``
(a command to completion under a timeout, returning a ``CommandResult`` - a non-zero exit is a
value, not an exception) and ``background`` (an async context manager that starts a command,
and on exit - every path, cancellation included - stops it and everything it started).
Errors that stop a command from running at all are ``ActionError`` / ``RemoteError``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

TAIL_CHARS = 2000
# How long a stopped process (a command, a remote command, a forwarder, an order process)
# gets to end by itself after EOF or SIGTERM before it is killed.
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    exit_status: int | None  # None: killed at its timeout
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def describe_failure(self) -> str:
        """One line a user can act on: host, command, status and the tail of stderr."""
        status = "timed out" if self.exit_status is None else f"exited {self.exit_status}"
        tail = " | ".join(self.stderr.strip().splitlines()[-3:])
        return f"{self.host}: `{self.command}` {status}" + (f": {tail}" if tail else "")


@runtime_checkable
class Runner(Protocol):
    name: str

    async def run(self, command: str, *, timeout: float) -> CommandResult: ...

    def background(self, command: str) -> AbstractAsyncContextManager[object]: ...


@dataclass(frozen=True)
class UploadFile:
    """One file to install as ``remote_dir/name``: a copy of ``local`` with ``mode``, or,
    when ``symlink_target`` is set, a symlink pointing there (``local``/``mode`` unused).
    Files with the same ``pair`` (a key and its certificate) are renamed into place one
    right after the other."""

    local: Path
    name: str
    mode: int = 0o644
    symlink_target: str | None = None
    pair: str = ""


def tail(data: bytes) -> str:
    text = data.decode(errors="replace")
    return text[-TAIL_CHARS:]
