"""One run of lematt: the task-group tree from plan to deploy.

Contract: ``Engine(config, options, reporter).run()`` takes the conf-dir lock, finishes any
store an earlier crash interrupted, plans, orders every due job (at most ``options.parallel``
orders in flight; each line inside its forwarders and prepare commands), stores each new pair
atomically (pairs that finish together share one journal write: ``lematt.store.committer``), then
deploys the renewed certificates and any deploy an earlier run left pending.
A job's failure is a value (an ``Outcome`` with its error text); only run-wide problems (the
lock, the account, the challenge listener) raise, as ``LemattError``. Nothing live is touched
before a certificate has been downloaded and checked against our key and names. One SSH pool
serves the whole run (forwarders and deploys), opened only when an SSH action is needed.
With ``options.processes`` > 1 the orders run in order processes (``lematt.shards``), each
through ``orders_here``; everything else stays here.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from lematt.accounts import AccountBook, load_or_create_account_key
from lematt.actions import StepOutcome, forwarders, prepare_commands
from lematt.config import Config, SshForward
from lematt.deploy import Deployer
from lematt.errors import CryptoError, LemattError, StoreError
from lematt.execution.local import LocalRunner
from lematt.model import CertLine, Job
from lematt.plan import plan
from lematt.report import Reporter
from lematt.store.atomic import read_bytes
from lematt.store.inventory import scan
from lematt.store.tree import NewPair, Store

# aiohttp, asyncssh and cryptography take longer to import than a whole no-op run: they are
# imported where a run first needs them (an order, a deploy), never at start-up.
if TYPE_CHECKING:
    from lematt import crypto
    from lematt.acme.client import AcmeClient
    from lematt.acme.order import ChallengeSolver
    from lematt.challenges.remote import ForwarderHub
    from lematt.execution.ssh import SshPool
    from lematt.keyworkers import KeyWorkers
    from lematt.store.committer import GroupCommitter

# The forwarder outlives a run's last order by at most this much if lematt vanishes without
# closing the SSH channel (it also exits at EOF, which is the normal way).
FORWARDER_MARGIN_SECONDS = 300.0


@dataclass
class _Orders:
    """What the order tasks of one run share."""

    client: AcmeClient
    solver: ChallengeSolver
    slots: anyio.CapacityLimiter
    committer: GroupCommitter
    workers: KeyWorkers
    record: Callable[[Outcome], None]  # each finished job's outcome, as it finishes
    hub: ForwarderHub | None = None


@dataclass(frozen=True)
class Options:
    test: bool
    parallel: int = 20
    now: datetime | None = None
    processes: int = 1  # order processes (``--processes``); see lematt.shards


@dataclass
class Outcome:
    job: Job
    changed: bool = False
    error: str | None = None
    not_after: datetime | None = None
    new_key: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunResult:
    outcomes: list[Outcome] = field(default_factory=list)
    steps: list[StepOutcome] = field(default_factory=list)
    deploy_seconds: float = 0.0
    host_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes) and all(s.ok for s in self.steps)


class Engine:
    def __init__(self, config: Config, options: Options, reporter: Reporter) -> None:
        self.config = config
        self.settings = config.settings
        self.options = options
        self.reporter = reporter
        self.store = Store(self.settings, test=options.test)
        self.local = LocalRunner()
        self.lock_fd: int | None = None  # the conf-dir lock while run() holds it

    # -- per job ------------------------------------------------------------------------
    async def _key_for(self, ctx: _Orders, job: Job) -> tuple[crypto.PrivateKey, bytes | None]:
        """(key, PEM if new). The stored key is reused unless alwaysGenerateNewKeys."""
        from lematt import crypto

        s = self.settings
        paths = self.store.layout.paths(job.line, job.key_type)
        if not s.always_generate_new_keys and job.found.key_present:
            pem = read_bytes(paths.key)
            if pem is not None:
                with contextlib.suppress(CryptoError):
                    key = crypto.load_private_key(pem, source=str(paths.key), validate=False)
                    if crypto.key_matches_type(key, job.key_type, s.key_bits_rsa, s.curve) and (
                            job.key_type != "rsa" or await ctx.workers.run(
                                crypto.rsa_pem_is_consistent, pem)):
                        # A stored RSA key is checked before it signs (it may come from a
                        # user), but in a worker process: the checks take about 40 ms.
                        return key, None
        if job.key_type == "rsa":
            # RSA generation is CPU-bound (hundreds of ms): keep it off the event loop.
            pem = await ctx.workers.run(
                crypto.generate_private_pem, "rsa", s.key_bits_rsa, s.curve)
        else:
            pem = crypto.generate_private_pem("ec", s.key_bits_rsa, s.curve)
        # Made a moment ago by our own code: the RSA consistency checks (about 40 ms of the
        # event loop per 2048-bit key) would only re-prove what generation guarantees.
        return crypto.load_private_key(pem, validate=False), pem

    async def _order(self, ctx: _Orders, job: Job) -> Outcome:
        from lematt import crypto
        from lematt.acme.order import obtain

        outcome = Outcome(job)
        try:
            key, new_pem = await self._key_for(ctx, job)
            names = job.line.names
            csr_der = crypto.make_csr(key, names, must_staple=job.line.ocsp_must_staple)
            deadline = anyio.current_time() + self.settings.order_timeout
            chain = await obtain(ctx.client, names, csr_der, ctx.solver, deadline=deadline)
            chain_pem = chain.encode()
            info = crypto.check_issued(chain_pem, key, names)
            await ctx.committer.commit(NewPair(
                job.line, job.key_type, new_pem, crypto.csr_pem(csr_der), chain_pem))
            outcome.changed, outcome.not_after, outcome.new_key = True, info.not_after, bool(
                new_pem)
        except LemattError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a bug must fail its job, not the other orders
            outcome.error = f"internal error: {exc!r}"
            if self.reporter.debug:
                traceback.print_exc()
        return outcome

    def _report(self, outcome: Outcome) -> None:
        job = outcome.job
        if outcome.ok:
            key_note = "new key" if outcome.new_key else "same key"
            until = outcome.not_after.strftime("%Y-%m-%d") if outcome.not_after else "?"
            self.reporter.change(f"renewed {job.label}: valid until {until} ({key_note})")
        else:
            self.reporter.failure(f"{job.label}: {outcome.error}")

    def _fail_all(self, ctx: _Orders, jobs: list[Job], why: str) -> None:
        for job in jobs:
            ctx.record(Outcome(job, error=why))

    async def _line(self, ctx: _Orders, line: CertLine, jobs: list[Job]) -> None:
        """The orders of one domains line, inside its forwarders and prepare commands."""
        fwds = forwarders(self.config.actions, line)
        try:
            for fwd in fwds:
                assert ctx.hub is not None
                await ctx.hub.ensure(fwd)
            await self._line_orders(ctx, line, jobs)
        except LemattError as exc:
            self._fail_all(ctx, jobs, str(exc))
        finally:
            for fwd in fwds:
                assert ctx.hub is not None
                ctx.hub.finished(fwd)

    async def _line_orders(self, ctx: _Orders, line: CertLine, jobs: list[Job]) -> None:
        """A line's jobs (its key types) one after the other, never two orders for the same
        names in flight: a CA may answer a second newOrder for the same account and
        identifiers with the first, still pending or ready, order (RFC 8555 section 7.4;
        Let's Encrypt's Boulder does), and two jobs sharing one order lose one certificate.
        The second order finds the names' authorizations already valid, so it costs little;
        different lines still run concurrently."""
        prepares = prepare_commands(self.config.actions, line)
        async with ctx.slots, contextlib.AsyncExitStack() as stack:
            # With prepare commands (the original's `ssh -t host leforward.py`, say) the
            # line's orders share one set of prepared processes, started before and stopped
            # after all of them.
            try:
                for command in prepares:
                    self.reporter.info(f"prepare for {line.primary}: {command}")
                    await stack.enter_async_context(self.local.background(command))
            except LemattError as exc:
                self._fail_all(ctx, jobs, f"prepare failed: {exc}")
                return
            for job in jobs:
                ctx.record(await self._order(ctx, job))

    # -- the run --------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _solver(self, shared_dir: Path | None = None) -> AsyncIterator[ChallengeSolver]:
        """The run's http-01 solver. ``shared_dir``: this is an order process of a sharded
        run; the run's challenge server (in the main process) serves the files written there."""
        from lematt.challenges.drop_dir import DropDirSolver
        from lematt.challenges.server import ChallengeServer

        s = self.settings
        if shared_dir is not None:
            yield DropDirSolver(shared_dir, durable=False)
        elif s.challenge_listen is not None:
            server = ChallengeServer()
            async with server.running(*s.challenge_listen):
                yield server
        else:
            assert s.challenge_drop_dir is not None  # config guarantees one of the two
            solver = DropDirSolver(s.challenge_drop_dir)
            solver.prepare()
            yield solver

    def _remember_account(self, account_key: crypto.PrivateKey) -> Callable[[str], None]:
        """What an ACME client calls with a newly learnt account URL: it goes into the
        account book, so later runs (and order processes) need no newAccount."""
        from lematt.acme.jws import thumbprint

        directory = self.settings.directory_url(self.options.test)
        book, print_ = AccountBook(self.settings.account_key), thumbprint(account_key)

        def remember(url: str) -> None:
            try:
                book.remember(directory, print_, url)
            except StoreError as exc:
                # The account works; only the next run will have to look it up again.
                self.reporter.warn(str(exc))

        return remember

    def known_account(self, account_key: crypto.PrivateKey) -> str | None:
        """The account URL this key has at this run's CA, if an earlier run learnt it."""
        from lematt.acme.jws import thumbprint

        return AccountBook(self.settings.account_key).lookup(
            self.settings.directory_url(self.options.test), thumbprint(account_key))

    def _client(self, account_key: crypto.PrivateKey,
                rate_share: float = 1.0) -> contextlib.AbstractAsyncContextManager[AcmeClient]:
        from lematt.acme.client import AcmeClient
        from lematt.acme.limits import RequestRateLimiter

        s = self.settings
        return AcmeClient.open(
            s.directory_url(self.options.test), account_key, ca_bundle=s.ca_bundle,
            rate_limiter=RequestRateLimiter(dict(s.rate_limits), share=rate_share),
            request_timeout=s.acme_request_timeout)

    async def _orders(self, jobs: list[Job], pool: SshPool | None) -> list[Outcome]:
        account_key = load_or_create_account_key(self.settings.account_key,
                                                 self.reporter.change)
        outcomes: list[Outcome] = []

        def record(outcome: Outcome) -> None:
            outcomes.append(outcome)
            self._report(outcome)

        processes = self._order_processes(jobs)
        if processes > 1:
            from lematt.shards import run_shards

            if self.known_account(account_key) is None:
                # Register once here, so the order processes find the account URL in the
                # book instead of each registering the key.
                async with self._client(account_key) as client:
                    await client.ensure_account(self.settings.contact_email,
                                                remember=self._remember_account(account_key))
            await run_shards(self, jobs, processes, record)
        else:
            await self.orders_here(jobs, pool, account_key, record)
        return outcomes

    def _order_processes(self, jobs: list[Job]) -> int:
        """How many order processes this run uses: ``--processes``, but one for lines with
        forwarders or prepare commands (they live in this process) and never more than
        there are due lines."""
        wanted = self.options.processes
        if wanted <= 1:
            return 1
        lines = {job.line.lineno: job.line for job in jobs}
        if any(forwarders(self.config.actions, line) or prepare_commands(self.config.actions, line)
               for line in lines.values()):
            self.reporter.info("--processes ignored: lines with forwarders or prepare "
                               "commands are ordered by this process")
            return 1
        return min(wanted, len(lines))

    async def orders_here(self, jobs: list[Job], pool: SshPool | None,
                          account_key: crypto.PrivateKey, record: Callable[[Outcome], None], *,
                          shared_dir: Path | None = None, rate_share: float = 1.0) -> None:
        """Order ``jobs`` in this process; ``record`` gets each outcome as it is known.
        ``shared_dir`` and ``rate_share`` are set in the order processes of a sharded run
        (their share of the request rates; the challenge files for the main process)."""
        from lematt.acme.limits import order_limiter
        from lematt.challenges.remote import ForwarderHub
        from lematt.keyworkers import key_workers
        from lematt.store.committer import group_commits

        s = self.settings
        by_line: dict[int, list[Job]] = {}
        for job in jobs:
            by_line.setdefault(job.line.lineno, []).append(job)
        lines = {line.lineno: line for line in self.config.lines}
        planned: dict[SshForward, int] = {}
        for lineno in by_line:
            for fwd in forwarders(self.config.actions, lines[lineno]):
                planned[fwd] = planned.get(fwd, 0) + 1
        async with self._client(account_key, rate_share) as client:
            # Before any task group opens: an account error is a run-wide error and must
            # reach the CLI as itself, not wrapped in an ExceptionGroup.
            await client.ensure_account(s.contact_email,
                                        known_url=self.known_account(account_key),
                                        remember=self._remember_account(account_key))
            async with self._solver(shared_dir) as solver, \
                    group_commits(self.store) as committer, key_workers() as workers:
                ctx = _Orders(client, solver, order_limiter(self.options.parallel), committer,
                              workers, record)
                async with anyio.create_task_group() as tg:
                    if planned:
                        assert pool is not None
                        ctx.hub = ForwarderHub(pool, s.ssh_config, tg, planned,
                                               s.order_timeout + FORWARDER_MARGIN_SECONDS,
                                               self.reporter.info)
                    for lineno, line_jobs in by_line.items():
                        tg.start_soon(self._line, ctx, lines[lineno], line_jobs)

    def _needs_ssh(self, jobs: list[Job], pending: dict[str, list[tuple[str, ...]]]) -> bool:
        if pending:
            return True
        for section in (self.config.actions.default, self.config.actions.every,
                        *self.config.actions.overrides):
            if section is None:
                continue
            actions = (*section.prepare, *section.upload_certs, *section.upload_keys,
                       *section.update)
            if any(not isinstance(a, str) for a in actions):
                return bool(jobs)
        return False

    async def run(self) -> RunResult:
        result = RunResult()
        with self.store.lock() as lock_fd:
            self.lock_fd = lock_fd
            self.store.ensure_dirs()
            for message in self.store.recover():
                self.reporter.change(message)
            now = self.options.now or datetime.now(UTC)
            found = await anyio.to_thread.run_sync(
                scan, self.store, self.config.lines, self.settings.key_types)
            jobs = plan(self.settings, self.config.lines, found, now)
            # Config warnings (must-staple, ignored files) are news only when something is
            # due, or when a person is watching: a cron run with nothing due stays silent.
            if jobs or not self.reporter.cron:
                for warning in self.config.warnings:
                    self.reporter.warn(warning)
            pending = self.store.pending.load()
            if not jobs and not pending:
                self.reporter.info(
                    f"all {len(found)} certificates are current; nothing to do")
                return result
            for job in jobs:
                self.reporter.info(f"due: {job.label}: {job.reason}")
            async with contextlib.AsyncExitStack() as stack:
                # One SSH pool for the run: forwarders during the orders and deploys after
                # them share connections to the same hosts.
                pool = None
                if self._needs_ssh(jobs, pending):
                    from lematt.execution.ssh import SshPool

                    pool = await stack.enter_async_context(SshPool(
                        connect_timeout=self.settings.ssh_connect_timeout,
                        command_timeout=self.settings.ssh_command_timeout))
                if jobs:
                    result.outcomes = await self._orders(jobs, pool)
                renewed_numbers = {o.job.line.lineno for o in result.outcomes if o.changed}
                renewed = [ln for ln in self.config.lines if ln.lineno in renewed_numbers]
                if renewed or pending:
                    deployer = Deployer(self.config, self.store, self.reporter, pool)
                    result.steps = await deployer.run(renewed)
                    result.deploy_seconds = deployer.wall_seconds
                    result.host_seconds = deployer.host_seconds
        return result


def summary(result: RunResult, options: Options) -> dict[str, object]:
    """The JSON form of a run, for ``--json``."""
    return {
        "mode": "test" if options.test else "prod",
        "pid": os.getpid(),
        "ok": result.ok,
        "error": None,
        "certificates": [
            {"names": list(o.job.line.names), "key_type": o.job.key_type,
             "reason": o.job.reason, "renewed": o.changed, "error": o.error,
             "not_after": o.not_after.isoformat() if o.not_after else None}
            for o in result.outcomes
        ],
        "deploy": {"wall_s": round(result.deploy_seconds, 3),
                   "hosts_s": {h: round(t, 3) for h, t in result.host_seconds.items()}},
        "actions": [
            {"section": s.step.section, "kind": s.step.kind, "what": s.step.describe(),
             "host": s.step.host, "ok": s.ok, "error": s.error}
            for s in result.steps
        ],
    }


def failed_summary(error: str, options: Options) -> dict[str, object]:
    """The JSON form of a run that a run-wide error stopped (the account, the lock, the CA)."""
    return {**summary(RunResult(), options), "ok": False, "error": error}
