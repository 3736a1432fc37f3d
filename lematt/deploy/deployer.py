"""Deploy: run the actions of renewed certificates on every host, all hosts at once.

Contract: ``Deployer(config, store, reporter, pool, pending).run(renewed)`` deploys the
renewed lines plus every deploy in ``pending`` (owed by earlier runs, read once by the run)
and returns a ``DeployReport``: one ``StepOutcome`` per step and the time each host took.
Hosts run concurrently (at most ``parallelHosts``), each host's steps in order
(``deploy.hosts.run_host``). SSH steps use the run's ``pool`` (the run opens it whenever a
deploy may need it). A host whose
deploy failed is remembered in the store's pending file with the lines it still owes, and the
next run retries exactly that host - also when no certificate is due then - without ordering
anything again. A host that succeeds is cleared. Local shell strings form the host "local".
Once a host's steps all succeeded, the ``verify`` endpoints of the sections it updates are
checked for the lines it deployed (``lematt.verify``): each check is a "verify" step, and an
endpoint that does not serve the stored certificate fails the host like a failed update.
``defer(renewed)`` runs nothing and records the renewed lines as owed instead
(``--no-deploy``); ``plan(renewed)`` is what ``run`` would do, without doing it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from lematt.config import Config, Section, SshRun, SshUpload
from lematt.deploy.files import upload_files
from lematt.deploy.hosts import HostStep, run_host
from lematt.deploy.plan import LOCAL, Step, deploy_plan
from lematt.errors import ConfigError, RemoteError
from lematt.execution import CommandResult
from lematt.execution.local import LocalRunner
from lematt.model import CertLine, Failure, FailureKind, StepOutcome
from lematt.report import Reporter
from lematt.store.tree import Store

if TYPE_CHECKING:
    from lematt.execution.ssh import SshPool
    from lematt.execution.ssh_config import SshDestination

LOCAL_COMMAND_TIMEOUT = 600.0  # rsync of many files takes a while; a hung one must still end
Pending = dict[str, list[tuple[str, ...]]]  # host -> names of the lines it is owed


@dataclass
class DeployReport:
    steps: list[StepOutcome] = field(default_factory=list)
    # Seconds each host's queue took, and the whole deploy: for --json and benchmarks.
    host_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


class Deployer:
    def __init__(self, config: Config, store: Store, reporter: Reporter,
                 pool: SshPool | None, pending: Pending) -> None:
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
        self._host_lines: dict[str, list[CertLine]] = {}  # lines a pending host is owed

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
        plans = self._plan(renewed)
        known = self._lines_by_names()
        void: list[str] = []
        for host, owed in self._pending.items():
            lines = list(renewed) + [known[n] for n in owed if n in known
                                     and known[n] not in renewed]
            steps = self._plan(lines).get(host)
            self._host_lines[host] = lines
            if steps:
                plans[host] = steps
            else:
                void.append(host)
        return plans, void

    def _plan(self, lines: Sequence[CertLine]) -> dict[str, list[Step]]:
        return deploy_plan(self.config.actions, lines, self.store.layout, self._resolve,
                           self._files_for)

    def _owed(self, steps: Sequence[Step], lines: Sequence[CertLine]) -> list[tuple[str, ...]]:
        """The lines a host's failed steps were deploying (for the pending file)."""
        host = steps[0].host
        owed = []
        for line in lines:
            if self._plan([line]).get(host):
                owed.append(line.names)
        return owed

    def defer(self, renewed: Sequence[CertLine]) -> None:
        """Deploy nothing now (``--no-deploy``): every host ``renewed`` deploys to is
        recorded as owed those lines, beside what it was owed already, for the next run."""
        if not renewed:
            return
        pending = {host: list(owed) for host, owed in self._pending.items()}
        for line in renewed:
            for host in self._plan([line]):
                owed = pending.setdefault(host, [])
                if line.names not in owed:
                    owed.append(line.names)
        for host, owed in pending.items():
            if len(owed) != len(self._pending.get(host, ())):
                self.reporter.change(f"not deployed (--no-deploy): {host} is owed "
                                     f"{len(owed)} line(s); the next run deploys them")
        self.store.pending.save(pending)

    # -- running --------------------------------------------------------------------------
    async def run(self, renewed: Sequence[CertLine]) -> DeployReport:
        report = DeployReport()
        plans, void = self.plan(renewed)
        for host in plans if not renewed else ():
            self.reporter.change(f"retrying the pending deploy to {host}")
        if not plans:
            if void:
                self.store.pending.save({})  # only void debts were left
            return report
        results: dict[str, list[HostStep]] = {}
        limiter = anyio.CapacityLimiter(self.config.settings.parallel_hosts)
        live = self.reporter.live  # the terminal's status line, if there is one
        live.deploy_begin({host: len(steps) for host, steps in plans.items()})

        async def execute(step: Step) -> CommandResult | None:
            try:
                return await self._execute(step)
            finally:
                live.step_done(step.host)

        async def host_task(host: str, steps: list[Step]) -> None:
            async with limiter:
                begun = anyio.current_time()
                results[host] = await run_host(execute, steps)
                if all(h.ok for h in results[host]):
                    results[host] += await self._verify(
                        host, self._host_lines.get(host, list(renewed)))
                report.host_seconds[host] = anyio.current_time() - begun
                live.host_done(host, all(h.ok for h in results[host]))

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for host, steps in plans.items():
                tg.start_soon(host_task, host, steps)
        report.wall_seconds = anyio.current_time() - started
        live.deploy_end()
        report.steps = self._finish(plans, results, renewed, void)
        return report

    # -- verifying ------------------------------------------------------------------------
    def _section_hosts(self, section: Section) -> set[str]:
        """The hosts after whose steps a section's endpoints are checked: those that run its
        updates (the reload that makes a service serve the new files), else its uploads."""
        entries: Sequence[object] = section.update or (*section.upload_certs,
                                                       *section.upload_keys)
        return {self._resolve(e.ssh) if isinstance(e, SshRun | SshUpload) else LOCAL
                for e in entries}

    async def _verify(self, host: str, lines: Sequence[CertLine]) -> list[HostStep]:
        if not any(s.verify for s in self.config.actions.all_sections()):
            return []
        from lematt.verify.checks import checks_for, run_checks

        checks = checks_for(self.config.actions, lines, self.config.settings.key_types,
                            self.store.layout, lambda s: host in self._section_hosts(s))
        steps = []
        for check, result in zip(checks, await run_checks(
                checks, self.config.settings.verify_timeout), strict=True):
            failure = None if result.matched else Failure(FailureKind.DEPLOY,
                                                          result.describe())
            steps.append(HostStep(Step("verify", check.section, host, result.describe()),
                                  None, failure, result))
        return steps

    def _finish(self, plans: dict[str, list[Step]], results: dict[str, list[HostStep]],
                renewed: Sequence[CertLine], void: list[str]) -> list[StepOutcome]:
        pending = dict(self._pending)
        for host in void:
            pending.pop(host, None)
        known = self._lines_by_names()
        outcomes: list[StepOutcome] = []
        for host, steps in plans.items():
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
            if all(h.ok for h in host_steps):
                pending.pop(host, None)
            else:
                previous = [known[n] for n in pending.get(host, []) if n in known]
                lines = list(dict.fromkeys([*renewed, *previous]))
                pending[host] = self._owed(steps, lines)
                self.reporter.failure(f"deploy to {host} is pending; the next run retries it")
        self.store.pending.save(pending)
        return outcomes
