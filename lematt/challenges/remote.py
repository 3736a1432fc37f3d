"""Remote http-01 redirectors (``forwarder/``), started over SSH for the orders that need them.

Contract: before the orders of a domains line whose section has a ``{"ssh": DEST, "forward":
BASEURL}`` prepare, the engine calls ``ensure(fwd)``, and ``finished(fwd)`` once after them
on every path (the hub counts planned lines to know the last one). The first user
of a forwarder starts it - one per (destination, base URL, listen, command) per run, shared
by every line and key type - and waits for its ``READY`` line under a deadline; later users
reuse it. It is stopped (stdin EOF, then the process group) after its last planned user has
finished, whatever the outcome, and when the run is cancelled. If it does not become ready,
every user gets a ``ChallengeError`` naming the host before any order is created, so no
failed validation is spent. The forwarder exits by itself when the SSH channel goes away
(lematt killed) and at ``--max-seconds``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus

from lematt.config import SshForward
from lematt.errors import ChallengeError, ConfigError, LemattError

if TYPE_CHECKING:
    from lematt.execution.ssh import SshPool

READY_TIMEOUT_SECONDS = 30.0
DEFAULT_LISTEN = ":80"


@dataclass
class _State:
    remaining: int
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    done: anyio.Event = field(default_factory=anyio.Event)
    ready: bool = False
    error: str | None = None


class ForwarderHub:
    """The forwarders of one run. ``planned`` counts, per forwarder, the lines that will use
    it (so it can stop after the last one); ``task_group`` hosts the forwarders' tasks."""

    def __init__(self, pool: SshPool, ssh_config: object, task_group: TaskGroup,
                 planned: dict[SshForward, int], max_seconds: float,
                 info: Callable[[str], None]) -> None:
        self._pool = pool
        self._ssh_config = ssh_config
        self._tg = task_group
        self._states = {fwd: _State(count) for fwd, count in planned.items()}
        self._max_seconds = max_seconds
        self._info = info

    def _command(self, fwd: SshForward) -> tuple[str, bytes]:
        from forwarder import remote_command

        args = ["--baseurl", fwd.forward, "--listen", fwd.listen or DEFAULT_LISTEN,
                "--max-seconds", str(int(self._max_seconds))]
        if fwd.command is not None:
            # An installed copy (or a forced-command key, whose command sshd runs instead).
            return f"{fwd.command} {' '.join(shlex.quote(a) for a in args)}", b""
        return remote_command(args)

    async def _hold(self, fwd: SshForward, state: _State,
                    *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        from lematt.execution.ssh_config import SshDestination

        try:
            dest = await anyio.to_thread.run_sync(
                SshDestination.resolve, fwd.ssh, self._ssh_config)
        except (ValueError, ConfigError) as exc:
            raise ChallengeError(f"forwarder on {fwd.ssh}: {exc}") from exc
        command, program = self._command(fwd)
        runner = self._pool.runner(dest)
        async with runner.background(command, stdin_data=program) as process:
            line = await process.first_line(READY_TIMEOUT_SECONDS)
            if line is None or not line.startswith("READY "):
                status = process.exit_status
                why = (f"exited with status {status}" if status is not None
                       else f"sent no READY line within {READY_TIMEOUT_SECONDS:.0f} s")
                stderr = " | ".join(process.stderr_tail().strip().splitlines()[-2:])
                raise ChallengeError(
                    f"the forwarder on {fwd.ssh} ({dest.host_key()}) did not become ready: "
                    f"{why}" + (f": {stderr}" if stderr else "")
                    + "; its orders were not started")
            state.ready = True
            self._info(f"forwarder on {fwd.ssh} ready ({line[len('READY '):]} -> "
                       f"{fwd.forward})")
            task_status.started()
            await state.done.wait()

    async def ensure(self, fwd: SshForward) -> None:
        """Start ``fwd`` unless it runs already; ``ChallengeError`` if it cannot run."""
        state = self._states[fwd]
        async with state.lock:
            if state.error is not None:
                raise ChallengeError(state.error)
            if not state.ready:
                try:
                    await self._tg.start(self._hold, fwd, state)
                except LemattError as exc:
                    state.error = str(exc)
                    raise

    def finished(self, fwd: SshForward) -> None:
        """One planned user is done (call exactly once per planned line, on every path)."""
        state = self._states[fwd]
        state.remaining -= 1
        if state.remaining <= 0:
            state.done.set()
