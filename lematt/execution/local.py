"""Local commands: the original lematt's string actions.

Contract: a command string runs under ``/bin/sh -c`` (the original ran upload and update
actions with shell=True; placeholder values are quoted before they are spliced in); an argument
vector runs without a shell (prepare commands, as the original ran them). Each command gets its
own process group, so that stopping it - at its timeout, after an order, on Ctrl-C - stops the
whole tree it started (``ssh -t ...`` and friends), not only the shell: ``stop_group`` signals
the group until it is empty (SIGTERM, ``STOP_GRACE_SECONDS`` for all of it to end, SIGKILL,
then a bounded check that nothing of it is left). A process that leaves the group on purpose
(``setsid``, a daemon) is out of its reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from lematt.errors import ActionError
from lematt.execution import STOP_GRACE_SECONDS, TAIL_CHARS, CommandResult, tail


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


async def _feed(stream: ByteSendStream | None, data: bytes) -> None:
    """Write ``data`` to a command's stdin and close it; a command that does not read its
    input (it exited, or closed stdin) is not an error."""
    if stream is None:
        return
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await stream.send(data)
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await stream.aclose()


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

    async def _open(self, command: str | Sequence[str], *, stdout: int, stderr: int,
                    stdin: int = subprocess.DEVNULL,
                    env: Mapping[str, str] | None = None) -> Process:
        try:
            return await anyio.open_process(
                command, stdin=stdin, stdout=stdout, stderr=stderr,
                start_new_session=True, env=env,
            )
        except OSError as exc:
            raise ActionError(f"{self.name}: cannot start `{_shown(command)}`: {exc}") from exc

    async def run(self, command: str, *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> CommandResult:
        """Run ``command`` to its end or ``timeout``; stdin is ``input`` (then EOF), or at EOF
        from the start; ``env`` replaces the environment when given."""
        process = await self._open(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE)
        out, err = bytearray(), bytearray()
        status: int | None = None
        try:
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as tg:
                    if input is not None:
                        tg.start_soon(_feed, process.stdin, input)
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
    async def background(self, command: str | Sequence[str]) -> AsyncIterator[OutputTail]:
        """Run ``command`` (a shell string, or an argument vector run without a shell) until
        the context exits; yields the tail of its stdout and stderr, kept as it arrives."""
        # No task group here: an error in the caller's body must reach it as itself, not
        # wrapped in an ExceptionGroup. The output pipe is read by an event-loop reader
        # callback instead of a task.
        read_fd, write_fd = os.pipe()
        try:
            process = await self._open(command, stdout=write_fd, stderr=write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        output = OutputTail(read_fd)
        try:
            yield output
        finally:
            await stop_group(process)
            output.close()
            with anyio.CancelScope(shield=True):
                await process.aclose()


def _shown(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else " ".join(command)


class OutputTail:
    """The last ``limit`` bytes a background command wrote, read from its pipe by an
    event-loop reader (so a chatty command never blocks on a full pipe)."""

    def __init__(self, fd: int, limit: int = TAIL_CHARS) -> None:
        self._fd, self._limit = fd, limit
        self._data = bytearray()
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._read)
        self._open = True

    def _read(self) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._loop.remove_reader(self._fd)
            return
        self._data += chunk
        del self._data[:-self._limit]

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                while chunk := os.read(self._fd, 65536):  # what is left in the pipe
                    self._data += chunk
                    del self._data[:-self._limit]
            os.close(self._fd)

    def text(self) -> str:
        """The tail as text; control characters other than newline and tab escaped, so a
        program's terminal codes cannot rewrite what the user sees."""
        raw = self._data.decode(errors="replace")
        return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in raw)
