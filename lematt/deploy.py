"""Deploy: run the actions of renewed certificates on every host, all hosts at once.

Contract: ``Deployer.run(renewed)`` deploys the renewed lines plus every deploy that an
earlier run left pending, and returns one ``StepOutcome`` per step. Hosts run concurrently
(at most ``parallelHosts``), each host's steps in order (``actions.run_host``). A host whose
deploy failed is remembered in the store's pending file with the lines it still owes, and the
next run retries exactly that host - also when no certificate is due then - without ordering
anything again. A host that succeeds is cleared. Local shell strings form the host "local".
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from lematt.actions import LOCAL, Step, StepOutcome, deploy_plan, run_host
from lematt.config import Config
from lematt.errors import ConfigError, RemoteError
from lematt.execution import CommandResult
from lematt.execution.local import LocalRunner
from lematt.model import CertLine
from lematt.report import Reporter
from lematt.store.tree import Store

if TYPE_CHECKING:
    from lematt.execution.ssh import SshPool
    from lematt.execution.ssh_config import SshDestination

LOCAL_COMMAND_TIMEOUT = 600.0  # rsync of many files takes a while; a hung one must still end


class Deployer:
    def __init__(self, config: Config, store: Store, reporter: Reporter,
                 pool: SshPool | None = None) -> None:
        self.config = config
        self.store = store
        self.reporter = reporter
        self.local = LocalRunner()
        self._pool = pool  # an SshPool, shared with the forwarders of this run
        self._destinations: dict[str, SshDestination] = {}
        self._unresolvable: dict[str, str] = {}
        # Seconds each host's queue took, and the whole deploy: for --json and benchmarks.
        self.host_seconds: dict[str, float] = {}
        self.wall_seconds = 0.0

    # -- destinations ---------------------------------------------------------------------
    def _resolve(self, written: str) -> str:
        """Host key of an SSH destination; an unresolvable one is its own (failing) host."""
        from lematt.execution.ssh_config import SshDestination

        if written not in self._destinations and written not in self._unresolvable:
            try:
                self._destinations[written] = SshDestination.resolve(
                    written, self.config.settings.ssh_config)
            except (ValueError, ConfigError) as exc:
                self._unresolvable[written] = f"{written}: {exc}"
        dest = self._destinations.get(written)
        return dest.host_key() if dest is not None else f"{written} (unresolved)"

    async def _execute(self, step: Step) -> CommandResult | None:
        settings = self.config.settings
        if step.destination is None:
            assert step.command is not None
            return await self.local.run(step.command, timeout=LOCAL_COMMAND_TIMEOUT)
        if step.destination in self._unresolvable:
            raise RemoteError(self._unresolvable[step.destination])
        assert self._pool is not None, "run() opens the SSH pool when a step needs it"
        runner = self._pool.runner(self._destinations[step.destination])
        if step.remote_dir is not None:
            if not step.files:
                return None
            await runner.upload(step.files, step.remote_dir,
                                timeout=settings.ssh_command_timeout)
            return None
        if step.command is None:
            return await runner.open_session(timeout=settings.ssh_command_timeout)
        return await runner.run(step.command, timeout=settings.ssh_command_timeout)

    # -- planning -------------------------------------------------------------------------
    def _lines_by_names(self) -> dict[tuple[str, ...], CertLine]:
        return {line.names: line for line in self.config.lines}

    def plan(self, renewed: Sequence[CertLine]) -> tuple[dict[str, list[Step]], list[str]]:
        """Steps per host: the renewed lines, plus for a host with a pending deploy the
        lines it still owes (lines no longer configured are dropped). Also returns the
        pending hosts the config no longer deploys to (their debt is void)."""
        actions, store = self.config.actions, self.store
        plans = deploy_plan(actions, renewed, store, self._resolve)
        known = self._lines_by_names()
        void: list[str] = []
        for host, owed in self.store.pending.load().items():
            lines = list(renewed) + [known[n] for n in owed if n in known
                                     and known[n] not in renewed]
            steps = deploy_plan(actions, lines, store, self._resolve).get(host)
            if steps:
                if host not in plans and not renewed:
                    self.reporter.change(f"retrying the pending deploy to {host}")
                plans[host] = steps
            else:
                void.append(host)
        return plans, void

    def _owed(self, steps: Sequence[Step], lines: Sequence[CertLine]) -> list[tuple[str, ...]]:
        """The lines a host's failed steps were deploying (for the pending file)."""
        host = steps[0].host
        owed = []
        for line in lines:
            if deploy_plan(self.config.actions, [line], self.store, self._resolve).get(host):
                owed.append(line.names)
        return owed

    # -- running --------------------------------------------------------------------------
    async def run(self, renewed: Sequence[CertLine]) -> list[StepOutcome]:
        plans, void = self.plan(renewed)
        if not plans:
            if void:
                self.store.pending.save({})  # only void debts were left
            return []
        needs_ssh = any(s.destination is not None for steps in plans.values() for s in steps)
        results: dict[str, list[StepOutcome]] = {}
        limiter = anyio.CapacityLimiter(self.config.settings.parallel_hosts)

        async def host_task(host: str, steps: list[Step]) -> None:
            async with limiter:
                begun = anyio.current_time()
                results[host] = await run_host(self._execute, steps)
                self.host_seconds[host] = anyio.current_time() - begun

        started = anyio.current_time()
        async with contextlib.AsyncExitStack() as stack:
            if needs_ssh and self._pool is None:
                from lematt.execution.ssh import SshPool

                s = self.config.settings
                self._pool = await stack.enter_async_context(SshPool(
                    connect_timeout=s.ssh_connect_timeout, command_timeout=s.ssh_command_timeout))
            async with anyio.create_task_group() as tg:
                for host, steps in plans.items():
                    tg.start_soon(host_task, host, steps)
        self.wall_seconds = anyio.current_time() - started
        return self._finish(plans, results, renewed, void)

    def _finish(self, plans: dict[str, list[Step]], results: dict[str, list[StepOutcome]],
                renewed: Sequence[CertLine], void: list[str]) -> list[StepOutcome]:
        pending = self.store.pending.load()
        for host in void:
            pending.pop(host, None)
        known = self._lines_by_names()
        outcomes: list[StepOutcome] = []
        for host, steps in plans.items():
            host_outcomes = results.get(host, [])
            outcomes += host_outcomes
            for o in host_outcomes:
                where = "" if host == LOCAL else f" on {host}"
                if o.ok:
                    self.reporter.change(f"ran [{o.step.section}] {o.step.kind}{where}: "
                                         f"{o.step.describe()}")
                else:
                    self.reporter.failure(f"[{o.step.section}] {o.step.kind}{where}: {o.error}")
            if all(o.ok for o in host_outcomes):
                pending.pop(host, None)
            else:
                previous = [known[n] for n in pending.get(host, []) if n in known]
                lines = list(dict.fromkeys([*renewed, *previous]))
                pending[host] = self._owed(steps, lines)
                self.reporter.failure(f"deploy to {host} is pending; the next run retries it")
        self.store.pending.save(pending)
        return outcomes
