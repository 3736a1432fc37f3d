"""Local shell commands: the original lematt's string actions.

Contract: a command string runs under ``/bin/sh -c`` (the original ran them with shell=True;
placeholder values are quoted before they are spliced in). Each command gets its own process
group, so that stopping it - at its timeout, after an order, on Ctrl-C - stops the whole tree
it started (``ssh -t ...`` and friends), not only the shell: ``stop_group`` signals the group
until it is empty (SIGTERM, ``STOP_GRACE_SECONDS`` for all of it to end, SIGKILL, then a
bounded check that nothing of it is left), not only until the shell has gone. A process that
leaves the group on purpose (``setsid``, a daemon) is out of its reach.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator

import anyio
from anyio.abc import ByteReceiveStream, Process

from lematt.errors import ActionError
from lematt.execution import STOP_GRACE_SECONDS, CommandResult, tail


async def _drain(stream: ByteReceiveStream | None, sink: bytearray, limit: int = 1 << 20) -> None:
    if stream is None:
        return
    async for chunk in stream:
        if len(sink) < limit:
            sink.extend(chunk)


# After SIGKILL the kernel ends a process at once, unless it sleeps uninterruptibly (a hung
# NFS write): then it ends when that does, and lematt stops waiting after this long.
KILL_WAIT_SECONDS = 5.0
_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # seconds between checks that the group is empty


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (a zombie does not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member we may not signal (setuid) is still a member
    # kill() reaches zombies too: one left unreaped (by a parent or an init that does not
    # reap) would look alive for ever. /proc tells them apart (Linux; elsewhere trust kill).
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                # After the command name: state, ppid, pgrp (proc(5)).
                state, _ppid, pgrp = fh.read().rsplit(b")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state not in (b"Z", b"X"):
                return True
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
    return False


def _signal(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _group_gone(process: Process) -> None:
    """Return once the leader is reaped and no process of its group is left."""
    await process.wait()
    delay = _POLL_FIRST
    while _group_alive(process.pid):
        # No event tells us that a process we did not start has ended: poll, backing off.
        await anyio.sleep(delay)
        delay = min(delay * 2, _POLL_MAX)


async def stop_group(process: Process) -> bool:
    """Stop ``process`` and everything in its process group; shielded from cancellation.

    SIGTERM (and SIGCONT, so that a stopped member can act on it), then up to
    ``STOP_GRACE_SECONDS`` for the whole group to end; SIGKILL to whatever is left, then up
    to ``KILL_WAIT_SECONDS`` until it is confirmed empty. Returns whether it is: False only
    for a process that survives SIGKILL (uninterruptible sleep) or may not be signalled.
    """
    pgid = process.pid
    with anyio.CancelScope(shield=True):
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS),
                          (signal.SIGKILL, KILL_WAIT_SECONDS)):
            _signal(pgid, sig)
            if sig == signal.SIGTERM:
                _signal(pgid, signal.SIGCONT)
            with anyio.move_on_after(wait):
                await _group_gone(process)
                return True
    return False


class LocalRunner:
    """Runs shell strings on this machine."""

    def __init__(self, name: str = "local") -> None:
        self.name = name

    async def _open(self, command: str, *, capture: bool, stderr: bool = True) -> Process:
        pipe = subprocess.PIPE if capture else subprocess.DEVNULL
        try:
            return await anyio.open_process(
                command, stdin=subprocess.DEVNULL, stdout=pipe,
                stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise ActionError(f"{self.name}: cannot start `{command}`: {exc}") from exc

    async def run(self, command: str, *, timeout: float) -> CommandResult:
        process = await self._open(command, capture=True)
        out, err = bytearray(), bytearray()
        status: int | None = None
        try:
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain, process.stdout, out)
                    tg.start_soon(_drain, process.stderr, err)
                    status = await process.wait()
        finally:
            # Stopped at its timeout or on cancellation; or the shell exited while a child
            # it started still holds the group: that child is stopped too, as before.
            if status is None or _group_alive(process.pid):
                await stop_group(process)
        return CommandResult(self.name, command, status, tail(out), tail(err))

    @contextlib.asynccontextmanager
    async def background(self, command: str) -> AsyncIterator[None]:
        # No task group here: an error in the caller's body must reach it as itself, not
        # wrapped in an ExceptionGroup. Output is not collected (nobody would read it).
        process = await self._open(command, capture=False, stderr=False)
        try:
            yield
        finally:
            await stop_group(process)
            with anyio.CancelScope(shield=True):
                await process.aclose()
