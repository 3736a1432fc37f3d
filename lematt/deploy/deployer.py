"""Deploy: run the actions of renewed certificates on every host, all hosts at once.

Contract: ``Deployer(config, store, reporter, pool, owed).run(renewed)`` runs every deploy in
``owed`` (``lematt.store.pending``: what each stored line still owes, this run's renewals
included - each commit wrote its debt down with its pair) and returns a ``DeployReport``: one
``StepOutcome`` per step and the time each host took. A line owing "every host" goes to the
hosts its actions name now (``deploy.plan.hosts_for``); ``renewed`` only decides which hosts
are announced as retries. Hosts run concurrently (at most ``parallelHosts``), each host's
steps in order (``deploy.hosts.run_host``; its SFTP uploads staged together and renamed in
one final batch). SSH steps use the run's ``pool`` (the run opens it whenever a deploy may
need it). When every host has finished, the ``verify`` endpoints are checked
(``lematt.verify``), each (endpoint, certificate, key type) once per run: it belongs to the
hosts whose steps all succeeded and that run the updates (else the uploads) of a section
listing the endpoint, for a line deployed to them. A section reloaded on several hosts (one
name behind a load balancer, say) is thus checked once, after the last of them. Each check
is one "verify" step under the first of its hosts (its text names the others); a check that
fails keeps every one of its hosts owed, since any of their reloads may be the one that did
not take - redeploying a host that was fine costs one upload and reload, while clearing the
wrong one would leave the stale certificate served. A host whose own steps failed is owed
anyway; its endpoints are checked when a later run's deploy to it succeeds. What each
endpoint served is kept in ``<tree>/.verify/served.json`` (``verify.record``, written once).
Afterwards the pending file keeps, per line, exactly the hosts whose uploads,
updates or checks did not all succeed; the next run retries those hosts - also when no
certificate is due then - without ordering anything again. A host is cleared only when all
its steps succeeded; a debt to a host or line the config no longer has is dropped. Local
shell strings form the host "local".
``defer(renewed)`` runs nothing (``--no-deploy``): the renewed pairs' commits already wrote
their debts down, so it only says which hosts the next run deploys to; ``plan(renewed)`` is
what ``run`` would do, without doing it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from lematt.config import Config, Section, SshRun, SshUpload
from lematt.deploy.files import upload_files
from lematt.deploy.hosts import HostStep, run_host
from lematt.deploy.plan import LOCAL, Step, deploy_plan, hosts_for
from lematt.errors import ConfigError, RemoteError
from lematt.execution import CommandResult
from lematt.execution.local import LocalRunner
from lematt.model import CertLine, Failure, FailureKind, KeyType, StepOutcome, VerifyResult
from lematt.report import Reporter
from lematt.store.pending import Names, Owed
from lematt.store.tree import Store

if TYPE_CHECKING:
    from lematt.execution.ssh import SshPool
    from lematt.execution.ssh_config import SshDestination
    from lematt.verify.checks import Target

LOCAL_COMMAND_TIMEOUT = 600.0  # rsync of many files takes a while; a hung one must still end
Targets = dict[Names, frozenset[str]]  # owed line -> the hosts its deploy goes to now


@dataclass
class DeployReport:
    steps: list[StepOutcome] = field(default_factory=list)
    # Seconds each host's queue took, and the whole deploy: for --json and benchmarks.
    host_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    # Per certificate (line number, key type): what its verify endpoints served.
    served: dict[tuple[int, KeyType], list[VerifyResult]] = field(default_factory=dict)


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
        # A renewed line owes every host (its commit wrote that down; ``lematt plan`` asks
        # before any commit).
        debts = {**self._pending, **{line.names: None for line in renewed}}
        for names, owed_hosts in debts.items():
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
        self._host_lines = host_lines  # what each host is owed, and its verify checks
        return plans, targets

    def _plan(self, lines: Sequence[CertLine]) -> dict[str, list[Step]]:
        return deploy_plan(self.config.actions, lines, self.store.layout, self._resolve,
                           self._files_for)

    def owed_hosts(self, lines: Sequence[CertLine]) -> dict[str, list[CertLine]]:
        """Per host, the lines of ``lines`` that deploy to it (config order of hosts)."""
        by_host: dict[str, list[CertLine]] = {}
        for line in lines:
            for host in hosts_for(self.config.actions, line, self._resolve):
                by_host.setdefault(host, []).append(line)
        return by_host

    def defer(self, renewed: Sequence[CertLine]) -> None:
        """Deploy nothing now (``--no-deploy``). Each renewed pair's commit already recorded
        the deploy it owes (``lematt.store.pending``), so nothing is written here: this only
        says which hosts the next run deploys to."""
        for host, lines in self.owed_hosts(renewed).items():
            self.reporter.change(f"not deployed (--no-deploy): {host} is owed "
                                 f"{len(lines)} line(s); the next run deploys them")

    # -- running --------------------------------------------------------------------------
    async def run(self, renewed: Sequence[CertLine]) -> DeployReport:
        report = DeployReport()
        plans, targets = self.plan(renewed)
        fresh = {line.names for line in renewed}
        for host in plans:
            if any(line.names not in fresh for line in self._host_lines[host]):
                self.reporter.change(f"retrying the pending deploy to {host}")
        if not plans:
            self.store.pending.settle(self._pending, {})  # only void debts were left
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

        async def upload_together(steps: list[Step]) -> None:
            try:
                await self._upload_together(steps)
            finally:
                for step in steps:
                    live.step_done(step.host)

        async def host_task(host: str, steps: list[Step]) -> None:
            async with limiter:
                begun = anyio.current_time()
                results[host] = await run_host(execute, steps, upload_together)
                report.host_seconds[host] = anyio.current_time() - begun
                live.host_done(host, all(h.ok for h in results[host]))

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for host, steps in plans.items():
                tg.start_soon(host_task, host, steps)
        # Every host has finished: each endpoint is checked once, for all the hosts whose
        # reloads should have made it serve the new certificate (see _verify).
        unverified = await self._verify(plans, results, report)
        report.wall_seconds = anyio.current_time() - started
        live.deploy_end()
        report.steps = self._finish(plans, results, targets, unverified)
        return report

    # -- verifying ------------------------------------------------------------------------
    def _section_hosts(self, section: Section) -> set[str]:
        """The hosts after whose steps a section's endpoints are checked: those that run its
        updates (the reload that makes a service serve the new files), else its uploads."""
        entries: Sequence[object] = section.update or (*section.upload_certs,
                                                       *section.upload_keys)
        return {self._resolve(e.ssh) if isinstance(e, SshRun | SshUpload) else LOCAL
                for e in entries}

    async def _verify(self, plans: dict[str, list[Step]],
                      results: dict[str, list[HostStep]], report: DeployReport) -> set[str]:
        """Check the ``verify`` endpoints once for everything the successful hosts deployed;
        add each check as a "verify" step of the first of its hosts, record what was served
        (``verify.record``) and return the hosts a failed check keeps owed."""
        if not any(s.verify for s in self.config.actions.all_sections()):
            return set()
        from lematt.verify.checks import check, run_checks, targets
        from lematt.verify.record import remember

        settings = self.config.settings
        section_hosts: dict[str, set[str]] = {}

        def updates_on(host: str) -> Callable[[Section], bool]:
            def wanted(section: Section) -> bool:
                hosts = section_hosts.get(section.name)
                if hosts is None:
                    hosts = section_hosts[section.name] = self._section_hosts(section)
                return host in hosts
            return wanted

        # (endpoint, name, key type, certificate) -> its target and the hosts it checks.
        found: dict[tuple[object, ...], tuple[Target, list[str]]] = {}
        for host in plans:
            if not results.get(host) or not all(h.ok for h in results[host]):
                continue  # a failed host stays owed anyway; its endpoints wait for it
            for target in targets(self.config.actions, self._host_lines.get(host, []),
                                  settings.key_types, self.store.layout, updates_on(host)):
                found.setdefault(target.key, (target, []))[1].append(host)
        if not found:
            return set()
        checks = [check(target) for target, _ in found.values()]
        verified = await run_checks(checks, settings.verify_timeout)
        for warning in remember(self.config, self.store.layout, checks, verified,
                                time.time()):
            self.reporter.warn(warning)
        unverified: set[str] = set()
        for (target, hosts), result in zip(found.values(), verified, strict=True):
            what = result.describe()
            if len(hosts) > 1:
                what += f" (checked once for {', '.join(hosts)})"
            failure = None
            if not result.matched:
                failure = Failure(FailureKind.DEPLOY, what)
                unverified.update(hosts)
            results[hosts[0]].append(HostStep(Step("verify", target.section, hosts[0], what),
                                              None, failure, result))
            report.served.setdefault((target.line.lineno, target.key_type), []).append(result)
        return unverified

    def _finish(self, plans: dict[str, list[Step]], results: dict[str, list[HostStep]],
                targets: Targets, unverified: Collection[str] = ()) -> list[StepOutcome]:
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
            # A host is cleared only when every upload and update on it succeeded, and every
            # endpoint its reloads should have fixed serves the stored certificate.
            if not host_steps or not all(h.ok for h in host_steps) or host in unverified:
                failed.add(host)
                self.reporter.failure(f"deploy to {host} is pending; the next run retries it")
        self.store.pending.settle(self._pending, {
            names: hosts & failed for names, hosts in targets.items()})
        return outcomes
