"""Deploy: run the actions of renewed certificates on every host, all hosts at once.

Contract: ``Deployer(config, store, reporter, pool, owed).run(renewed)`` runs every deploy in
``owed`` (``lematt.store.pending``: what each stored line still owes, this run's renewals
included - each commit wrote its debt down with its pair) and returns a ``DeployReport``: one
``StepOutcome`` per step and the time each host took. A line owing "every host" goes to the
hosts its actions name now (``deploy.plan.hosts_for``); ``renewed`` only decides which hosts
are announced as retries. Hosts run concurrently (at most ``parallelHosts``), each host's
steps in order (``deploy.hosts.run_host``; its SFTP uploads staged together and renamed in
one final batch). SSH steps use the run's ``pool`` (the run opens it whenever a deploy may
need it). Afterwards the pending file keeps, per line, exactly the hosts whose uploads or
updates did not all succeed; the next run retries those hosts - also when no certificate is
due then - without ordering anything again. A host is cleared only when all its steps
succeeded; a debt to a host or line the config no longer has is dropped. Local shell strings
form the host "local".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from lematt.config import Config
from lematt.deploy.files import upload_files
from lematt.deploy.hosts import HostStep, run_host
from lematt.deploy.plan import LOCAL, Step, deploy_plan, hosts_for
from lematt.errors import ConfigError, RemoteError
from lematt.execution import CommandResult
from lematt.execution.local import LocalRunner
from lematt.model import CertLine, StepOutcome
from lematt.report import Reporter
from lematt.store.pending import Names, Owed
from lematt.store.tree import Store

if TYPE_CHECKING:
    from lematt.execution.ssh import SshPool
    from lematt.execution.ssh_config import SshDestination

LOCAL_COMMAND_TIMEOUT = 600.0  # rsync of many files takes a while; a hung one must still end
Targets = dict[Names, frozenset[str]]  # owed line -> the hosts its deploy goes to now


@dataclass
class DeployReport:
    steps: list[StepOutcome] = field(default_factory=list)
    # Seconds each host's queue took, and the whole deploy: for --json and benchmarks.
    host_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


class Deployer:
    def __init__(self, config: Config, store: Store, reporter: Reporter,
                 pool: SshPool | None, pending: Owed) -> None:
        self.config = config
        self.store = store
        self.reporter = reporter
        self.local = LocalRunner()
        self._pool = pool  # the run's SshPool, shared with its forwarders
        self._pending = pending
        self._destinations: dict[str, SshDestination] = {}
        self._unresolvable: dict[str, str] = {}
        self._files_for = functools.partial(upload_files, store.layout,
                                            config.settings.key_types)

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
        if self._pool is None:  # the run opens a pool whenever the config has SSH actions
            raise RemoteError(f"{step.destination}: no SSH connection pool in this run")
        runner = self._pool.runner(self._destinations[step.destination])
        assert step.remote_dir is None  # SFTP uploads go through _upload_together
        if step.command is None:
            return await runner.open_session(timeout=settings.ssh_command_timeout)
        return await runner.run(step.command, timeout=settings.ssh_command_timeout)

    async def _upload_together(self, steps: list[Step]) -> None:
        """A host's SFTP uploads (certificates and keys): per destination, every file is
        staged first and all are renamed in one final batch (``SshRunner.upload_batch``)."""
        by_destination: dict[str, list[Step]] = {}
        for step in steps:
            assert step.destination is not None
            by_destination.setdefault(step.destination, []).append(step)
        for destination, group in by_destination.items():
            if destination in self._unresolvable:
                raise RemoteError(self._unresolvable[destination])
            if self._pool is None:
                raise RemoteError(f"{destination}: no SSH connection pool in this run")
            batches = [(s.files, s.remote_dir) for s in group
                       if s.files and s.remote_dir is not None]
            if batches:
                await self._pool.runner(self._destinations[destination]).upload_batch(
                    batches, timeout=self.config.settings.ssh_command_timeout)

    # -- planning -------------------------------------------------------------------------
    def _lines_by_names(self) -> dict[tuple[str, ...], CertLine]:
        return {line.names: line for line in self.config.lines}

    def plan(self, renewed: Sequence[CertLine]) -> tuple[dict[str, list[Step]], Targets]:
        """Steps per host for every owed line, and per owed line the hosts it is deployed to
        now (a line no longer configured, or no longer deploying to a host it owed, has no
        debt there any more)."""
        known = self._lines_by_names()
        targets: Targets = {}
        host_lines: dict[str, list[CertLine]] = {}
        for names, owed_hosts in self._pending.items():
            line = known.get(names)
            if line is None:
                continue
            hosts = [h for h in hosts_for(self.config.actions, line, self._resolve)
                     if owed_hosts is None or h in owed_hosts]
            targets[names] = frozenset(hosts)
            for host in hosts:
                host_lines.setdefault(host, []).append(line)
        # Hosts owed the same lines share one plan (usually: every host of a run's renewals).
        groups: dict[tuple[int, ...], list[str]] = {}
        for host, lines in host_lines.items():
            lines.sort(key=lambda line: line.lineno)
            groups.setdefault(tuple(line.lineno for line in lines), []).append(host)
        plans: dict[str, list[Step]] = {}
        for hosts in groups.values():
            steps = self._plan(host_lines[hosts[0]])
            plans.update((host, steps[host]) for host in hosts if steps.get(host))
        fresh = {line.names for line in renewed}
        for host in plans:
            if any(line.names not in fresh for line in host_lines[host]):
                self.reporter.change(f"retrying the pending deploy to {host}")
        return plans, targets

    def _plan(self, lines: Sequence[CertLine]) -> dict[str, list[Step]]:
        return deploy_plan(self.config.actions, lines, self.store.layout, self._resolve,
                           self._files_for)

    # -- running --------------------------------------------------------------------------
    async def run(self, renewed: Sequence[CertLine]) -> DeployReport:
        report = DeployReport()
        plans, targets = self.plan(renewed)
        if not plans:
            self.store.pending.settle(self._pending, {})  # only void debts were left
            return report
        results: dict[str, list[HostStep]] = {}
        limiter = anyio.CapacityLimiter(self.config.settings.parallel_hosts)

        async def host_task(host: str, steps: list[Step]) -> None:
            async with limiter:
                begun = anyio.current_time()
                results[host] = await run_host(self._execute, steps, self._upload_together)
                report.host_seconds[host] = anyio.current_time() - begun

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for host, steps in plans.items():
                tg.start_soon(host_task, host, steps)
        report.wall_seconds = anyio.current_time() - started
        report.steps = self._finish(plans, results, targets)
        return report

    def _finish(self, plans: dict[str, list[Step]], results: dict[str, list[HostStep]],
                targets: Targets) -> list[StepOutcome]:
        outcomes: list[StepOutcome] = []
        failed: set[str] = set()
        for host in plans:
            host_steps = results.get(host, [])
            outcomes += [h.outcome() for h in host_steps]
            for h in host_steps:
                where = "" if host == LOCAL else f" on {host}"
                if h.ok:
                    self.reporter.change(f"ran [{h.step.section}] {h.step.kind}{where}: "
                                         f"{h.step.describe()}")
                else:
                    self.reporter.failure(f"[{h.step.section}] {h.step.kind}{where}: "
                                          f"{h.failure}")
            # A host is cleared only when every upload and update on it succeeded.
            if not host_steps or not all(h.ok for h in host_steps):
                failed.add(host)
                self.reporter.failure(f"deploy to {host} is pending; the next run retries it")
        self.store.pending.settle(self._pending, {
            names: hosts & failed for names, hosts in targets.items()})
        return outcomes
