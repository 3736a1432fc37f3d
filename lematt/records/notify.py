"""The ``notify`` hooks of lematt.conf, run once at the end of a run.

Contract: ``should_run(settings, exit_status)`` says whether a run that ends with
``exit_status`` calls its hooks: after a failed run (exit 1: a certificate, a deploy step or the
run itself failed; 130: interrupted) and, with ``notifyAlways``, after every run; never when
another run held the lock (75: nothing happened, the other run reports) nor for a config
error (2: there is no valid ``notify`` to run). ``await run_hooks(settings, summary)`` runs
every hook, one after the other in the order written, each with the JSON summary on stdin and
``LEMATT_FAILED``, ``LEMATT_RENEWED`` (certificate counts), ``LEMATT_EXIT`` and ``LEMATT_MODE``
in its environment, each bounded by ``notifyTimeout``; it returns one ``HookResult`` per
hook (a failure is a value: the sentence says which hook, where and why). A shell string runs
here under ``/bin/sh -c``; ``{"ssh": DEST, "run": CMD}`` runs on DEST through the SSH runner
(host keys checked as for deploys); there the variables are set by assignments in front of
CMD, since sshd passes on only the environment its ``AcceptEnv`` allows (so a POSIX login
shell is assumed there, as for every SSH command of lematt).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from lematt.config import Settings
from lematt.config.types import SshRun
from lematt.errors import LemattError
from lematt.execution.local import LocalRunner
from lematt.records.summary import encode, tallies

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


@dataclass(frozen=True)
class HookResult:
    what: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"hook": self.what, "ok": self.ok, "error": self.error}


def should_run(settings: Settings, exit_status: int) -> bool:
    if not settings.notify:
        return False
    if settings.notify_always and exit_status not in (2, 75):
        return True
    return exit_status in (EXIT_FAILED, EXIT_INTERRUPTED)


def hook_environment(summary: dict[str, Any]) -> dict[str, str]:
    failed, renewed = tallies(summary)
    return {"LEMATT_FAILED": str(failed), "LEMATT_RENEWED": str(renewed),
            "LEMATT_EXIT": str(summary.get("exit")), "LEMATT_MODE": str(summary.get("mode"))}


async def run_hooks(settings: Settings, summary: dict[str, Any]) -> list[HookResult]:
    data = encode(summary)
    variables = hook_environment(summary)
    results: list[HookResult] = []
    ssh_hooks = [hook for hook in settings.notify if isinstance(hook, SshRun)]
    async with contextlib.AsyncExitStack() as stack:
        pool = None
        if ssh_hooks:
            from lematt.execution.ssh import SshPool

            pool = await stack.enter_async_context(SshPool(
                connect_timeout=settings.ssh_connect_timeout,
                command_timeout=settings.notify_timeout))
        for hook in settings.notify:
            what = f"notify hook `{hook}`"
            try:
                if isinstance(hook, SshRun):
                    assert pool is not None
                    result = await _remote(pool, settings, hook, data, variables)
                else:
                    result = await LocalRunner().run(hook, timeout=settings.notify_timeout,
                                                     input=data,
                                                     env={**os.environ, **variables})
            except LemattError as exc:
                results.append(HookResult(what, f"{what} failed: {exc}"))
                continue
            if result.ok:
                results.append(HookResult(what))
            else:
                results.append(HookResult(what, f"{what} failed: "
                                                f"{result.describe_failure()}"))
    return results


async def _remote(pool: Any, settings: Settings, hook: SshRun, data: bytes,
                  variables: dict[str, str]) -> Any:
    import anyio

    from lematt.execution.ssh_config import SshDestination

    try:
        destination = await anyio.to_thread.run_sync(SshDestination.resolve, hook.ssh,
                                                      settings.ssh_config)
    except ValueError as exc:
        raise LemattError(f"{hook.ssh}: {exc}") from exc
    assert hook.run is not None  # config.notify requires "run"
    # The values are decimal counts and lematt's own words (test/prod): nothing to quote.
    exports = " ".join(f"{name}={value}" for name, value in variables.items())
    return await pool.runner(destination).run(f"export {exports}; {hook.run}",
                                              timeout=settings.notify_timeout, input=data)
