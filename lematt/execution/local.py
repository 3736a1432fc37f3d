"""Local commands: the original lematt's string actions.

Contract: a command string runs under ``/bin/sh -c`` (the original ran upload and update
actions with shell=True; placeholder values are quoted before they are spliced in); an argument
vector runs without a shell (prepare commands, as the original ran them). Each command gets its
own process group, so that stopping it - at its timeout, after an order, on Ctrl-C - stops the
whole tree it started (``ssh -t ...`` and friends), not only the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence

import anyio
from anyio.abc import ByteReceiveStream, Process

from lematt.errors import ActionError
from lematt.execution import STOP_GRACE_SECONDS, TAIL_CHARS, CommandResult, tail


async def _drain(stream: ByteReceiveStream | None, sink: bytearray, limit: int = 1 << 20) -> None:
    if stream is None:
        return
    async for chunk in stream:
        if len(sink) < limit:
            sink.extend(chunk)


async def stop_group(process: Process) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period; shielded from cancellation."""
    with anyio.CancelScope(shield=True):
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            with anyio.move_on_after(grace):
                await process.wait()
                return


class LocalRunner:
    """Runs shell strings on this machine."""

    def __init__(self, name: str = "local") -> None:
        self.name = name

    async def _open(self, command: str | Sequence[str], *, stdout: int, stderr: int) -> Process:
        try:
            return await anyio.open_process(
                command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                start_new_session=True,
            )
        except OSError as exc:
            raise ActionError(f"{self.name}: cannot start `{_shown(command)}`: {exc}") from exc

    async def run(self, command: str, *, timeout: float) -> CommandResult:
        process = await self._open(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = bytearray(), bytearray()
        status: int | None = None
        try:
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain, process.stdout, out)
                    tg.start_soon(_drain, process.stderr, err)
                    status = await process.wait()
        finally:
            if status is None:
                await stop_group(process)
            # The shell may have exited while a child it started still holds the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
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
