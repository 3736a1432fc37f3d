"""One run of lematt: lock -> recover -> scan -> plan -> orders -> deploy -> result.

Contract: ``await run(config, options, reporter)`` refuses a conf dir or tree that other users
can change, takes the conf-dir lock, finishes any store an earlier crash interrupted, refreshes
what is kept about the CA and its renewal windows when it is stale
(``lematt.orders.renewal_info``), plans (``lematt.survey``, the steps it shares with ``lematt
plan``; ``options.only`` / ``options.force`` select and force), orders every due job
(``lematt.orders``: at most ``options.parallel`` lines in flight, each inside its forwarders
and prepare commands; new pairs stored atomically, each with the deploy it owes, and what each
new certificate was ordered with kept beside the tree), then runs every owed deploy - this
run's and any earlier run's (``lematt.deploy``; with ``options.no_deploy`` nothing is
deployed, and what was renewed stays owed) - and returns a ``RunResult``.
``options.deadline`` bounds the orders (counted from the start of the run): past it, every
unfinished job fails with a timeout, and what was renewed is still deployed.
A job's or a step's failure is a value in the result; only run-wide problems (the lock, the
account, the challenge listener, the CA's directory) raise, as ``LemattError``. One SSH pool
serves the whole run (forwarders and deploys), opened only when an SSH action may run.
``result``, when the caller passes one, is filled as the run goes (the certificates planned for
and the due jobs, after planning), so that a run stopped half-way still has a summary
(``lematt.records.summary``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from lematt import failpoint
from lematt.config import Config
from lematt.deploy.deployer import Deployer
from lematt.errors import StoreError
from lematt.model import (
    CertLine,
    CertRecord,
    CertState,
    Found,
    Job,
    KeyType,
    Outcome,
    RunResult,
)
from lematt.monitor.metrics import watch_run
from lematt.monitor.retries import settle
from lematt.orders import order_all
from lematt.orders.account import check_before_ordering
from lematt.orders.context import OrderEnv
from lematt.orders.renewal_info import next_question, refresh
from lematt.plan import next_due
from lematt.report import Reporter
from lematt.store.backoff import BackoffBook, hold_back
from lematt.store.pending import Owed
from lematt.store.quiet import clear_memo, write_memo
from lematt.store.renewal import RenewalBook
from lematt.store.tree import Store
from lematt.survey import survey


@dataclass(frozen=True)
class Options:
    test: bool
    parallel: int = 20
    now: datetime | None = None
    processes: int = 1  # order processes (``--processes``); see lematt.orders.processes
    # Seconds from the start of the run after which unfinished orders fail with a timeout
    # (``--deadline`` / ``runTimeout``); None: each order has only its own orderTimeout.
    deadline: float | None = None
    # ``--only``: plan only the domains lines carrying one of these names (checked by the
    # CLI before the run: lematt.survey.select_lines).
    only: tuple[str, ...] = ()
    # ``--force``: every selected certificate is due now, even when current.
    force: bool = False
    # ``--no-deploy``: order and store, deploy nothing; what was renewed stays owed.
    no_deploy: bool = False


def _needs_ssh(config: Config, jobs: list[Job], pending: Owed) -> bool:
    """Whether an SSH action may run: a deploy still owed, or a due job whose config has
    SSH forms (forwarders, uploads, updates)."""
    if pending:
        return True
    actions = config.actions
    for section in (actions.default, actions.every, *actions.overrides):
        if section is None:
            continue
        steps = (*section.prepare, *section.upload_certs, *section.upload_keys, *section.update)
        if any(not isinstance(step, str) for step in steps):
            return bool(jobs)
    return False


async def run(config: Config, options: Options, reporter: Reporter,
              result: RunResult | None = None) -> RunResult:
    """One run; ``result`` (when given) is filled as the run goes, so that its caller still
    has what the run knew when it is stopped half-way (a signal, a run-wide error)."""
    settings = config.settings
    deadline = None if options.deadline is None else anyio.current_time() + options.deadline
    store = Store(settings, test=options.test)
    result = RunResult() if result is None else result
    # A conf dir others can write could make lematt run their commands: refused first.
    store.check_conf((config.config_path, config.domains_path, config.actions_path))
    with store.lock() as lock_fd, contextlib.closing(store), \
            watch_run(config, store, result, reporter, options.now) as seen:
        for message in store.ensure_dirs():
            reporter.change(message)
        for message in store.recover():
            reporter.change(message)
        now = options.now or datetime.now(UTC)
        env = OrderEnv(config, store, reporter, options.test, options.parallel,
                       options.processes, lock_fd)

        async def ask_ca(found: dict[tuple[int, KeyType], Found],
                         names: dict[tuple[int, KeyType], str], book: RenewalBook,
                         default: CertState | None, index: str) -> bool:
            # What the CA offers and its renewal windows (RFC 9773): asked only when what
            # was kept is stale, so a cron run with fresh renewal info sends nothing.
            return await refresh(env, found, names, book, default, now, index)

        due = await survey(config, store, now, only=options.only, force=options.force,
                           refresh=ask_ca)
        jobs, book, names = due.jobs, due.book, due.names
        seen.found, seen.names, seen.renewal = due.found, names, book
        # Certificates whose last orders failed wait out their back-off (store.backoff);
        # --force orders them all the same.
        backoff = seen.backoff = BackoffBook.load(store.root)
        if backoff.warning:
            reporter.warn(backoff.warning)
        jobs, held = hold_back(jobs, backoff, names, now.timestamp(),
                               ignore_backoff=options.force)
        seen.held = len(held)
        for job, entry in held:
            reporter.info(f"{job.label}: {entry.describe()}")
        planned = [line.lineno for line in due.lines]
        # Built only when a summary asks for it: the quiet cron run does not pay for it.
        result.certificates = functools.partial(_records, store, due.lines, settings.key_types,
                                                due.found)
        result.jobs = jobs
        # Config warnings (must-staple, ignored files) are news only when something is due,
        # or when a person is watching: a cron run with nothing due stays silent.
        if jobs or not reporter.cron:
            for warning in due.warnings:
                reporter.warn(warning)
        pending = store.pending.load()
        if not jobs and (not pending or options.no_deploy):
            _settle_backoff(reporter, backoff, due.jobs, [], names, now, planned)
            if held:
                return result  # each held one was named; no quiet memo: they fall due soon
            which = "selected " if options.only else ""
            reporter.info(f"all {len(due.lines) * len(settings.key_types)} {which}"
                          "certificates are current; nothing to do")
            if not options.only and not pending:
                _remember_quiet(env, book, due.found, due.states, due.default,
                                now.timestamp())
            return result
        clear_memo(store.root)
        for job in jobs:
            reporter.info(f"due: {job.label}: {job.reason}")
        if jobs:
            check_before_ordering(env, book.ca(env.directory_url))
        async with contextlib.AsyncExitStack() as stack:
            # The terminal's status line stays fresh while orders and deploys run.
            await stack.enter_async_context(reporter.live.running())
            # One SSH pool for the run: forwarders during the orders and deploys after them
            # share connections to the same hosts.
            pool = None
            if _needs_ssh(config, jobs, {} if options.no_deploy else pending):
                from lematt.execution.ssh import SshPool

                pool = await stack.enter_async_context(SshPool(
                    connect_timeout=settings.ssh_connect_timeout,
                    command_timeout=settings.ssh_command_timeout))
            if jobs:
                await order_all(env, jobs, pool, deadline=deadline, outcomes=result.outcomes)
                _keep_issued(env, book, names, result.outcomes)
            # Counted from when the orders ended, not from when the run began.
            _settle_backoff(reporter, backoff, due.jobs, result.outcomes, names,
                            options.now or datetime.now(UTC), planned)
            renewed_numbers = {o.job.line.lineno for o in result.outcomes if o.changed}
            renewed = [line for line in config.lines if line.lineno in renewed_numbers]
            # What is owed now: earlier runs' debts and this run's, which each commit wrote
            # down with its pair (also in order processes).
            owed = store.pending.load() if jobs else pending
            failpoint.hit("run.deploy")
            deployer = Deployer(config, store, reporter, pool, owed)
            if options.no_deploy:
                # Stored now and owed (each commit wrote its debt down): a later run deploys.
                deployer.defer(renewed)
            elif owed:
                report = await deployer.run(renewed)
                result.steps = report.steps
                result.deploy_seconds = report.wall_seconds
                result.host_seconds = report.host_seconds
                result.served = report.served
    return result


def _settle_backoff(reporter: Reporter, backoff: BackoffBook, due: list[Job],
                    outcomes: list[Outcome], names: dict[tuple[int, KeyType], str],
                    now: datetime, planned: list[int]) -> None:
    warning = settle(backoff, due, outcomes, names, now.timestamp(), planned)
    if warning:
        reporter.warn(warning)


def _records(store: Store, lines: tuple[CertLine, ...], key_types: tuple[KeyType, ...],
             found: dict[tuple[int, KeyType], Found]) -> list[CertRecord]:
    """Every certificate the run planned for, with its paths and stored state."""
    records = []
    for line in lines:
        for key_type in key_types:
            key, cert = store.layout.pair_files(line, key_type)
            records.append(CertRecord(line, key_type, key, cert, found[(line.lineno, key_type)]))
    return records


def _remember_quiet(env: OrderEnv, book: RenewalBook, found: dict[tuple[int, KeyType], Found],
                    states: dict[tuple[int, KeyType], CertState], default: CertState | None,
                    now: float) -> None:
    """After a run with nothing to do: until when the next ones stay so
    (``lematt.store.quiet``)."""
    config = env.config
    # notifyAlways pings after every run, and metricsFile is written after every run: a run
    # the memo ended would do neither.
    if (config.config_path is None or env.settings.notify_always
            or env.settings.metrics_file is not None):
        return
    until = min(next_due(env.settings, config.lines, found, states, default),
                next_question(env, book, found, states, default, now))
    files = [p for p in (config.config_path, config.domains_path, config.actions_path)
             if p is not None]
    write_memo(config.config_path, files, env.settings.conf_dir, env.store.root, until, now)


def _keep_issued(env: OrderEnv, book: RenewalBook, names: dict[tuple[int, KeyType], str],
                 outcomes: list[Outcome]) -> None:
    """Record what each new certificate was ordered with (its profile), so that a later
    change of profile makes it due; its renewal window is asked for at the next run (RFC
    9773 section 4.3: soon after issuance). Lost in a crash, the next run only does not
    know the profile and fetches the window all the same."""
    changed = False
    for outcome in outcomes:
        if outcome.changed and outcome.cert_id:
            job = outcome.job
            book.put(names[(job.line.lineno, job.key_type)],
                     CertState(outcome.cert_id, job.line.profile or ""))
            changed = True
    if changed:
        try:
            book.save(set(names.values()))
        except StoreError as exc:
            env.reporter.warn(f"{exc}; profiles of the new certificates are not recorded")
