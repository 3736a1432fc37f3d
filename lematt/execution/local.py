"""Local shell commands: the original lematt's string actions.

Contract: a command string runs under ``/bin/sh -c`` (the original ran them with shell=True;
placeholder values are quoted before they are spliced in). Each command gets its own process
group, so that stopping it - at its timeout, after an order, on Ctrl-C - stops the whole tree
it started (``ssh -t ...`` and friends), not only the shell.
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
            if status is None:
                await stop_group(process)
            # The shell may have exited while a child it started still holds the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
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
