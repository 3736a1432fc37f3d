"""One run of lematt: lock -> recover -> scan -> plan -> orders -> deploy -> result.

Contract: ``await run(config, options, reporter)`` takes the conf-dir lock, finishes any store
an earlier crash interrupted, refreshes what is kept about the CA and its renewal windows
when it is stale (``lematt.orders.renewal_info``), plans (pure, ``lematt.plan``), orders
every due job (``lematt.orders``: at most ``options.parallel`` lines in flight, each inside
its forwarders and prepare commands; new pairs stored atomically, and what each new
certificate was ordered with kept beside the tree), then deploys the renewed certificates
and every deploy an earlier run still owes (``lematt.deploy``), and returns a ``RunResult``.
``options.deadline`` bounds the orders (counted from the start of the run): past it, every
unfinished job fails with a timeout, and what was renewed is still deployed.
A job's or a step's failure is a value in the result; only run-wide problems (the lock, the
account, the challenge listener, the CA's directory) raise, as ``LemattError``. One SSH pool
serves the whole run (forwarders and deploys), opened only when an SSH action may run.
``result``, when the caller passes one, is filled as the run goes (every certificate after the
scan, the due jobs after planning), so that a run stopped half-way still has a summary
(``lematt.records.summary``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from lematt.config import Config
from lematt.deploy.deployer import Deployer, Pending
from lematt.errors import StoreError
from lematt.model import CertRecord, CertState, Found, Job, KeyType, Outcome, RunResult
from lematt.orders import order_all
from lematt.orders.account import check_before_ordering
from lematt.orders.context import OrderEnv
from lematt.orders.renewal_info import refresh
from lematt.plan import plan, timing_warnings
from lematt.report import Reporter
from lematt.store.inventory import scan
from lematt.store.renewal import RenewalBook, index_identity, states_for
from lematt.store.tree import Store


@dataclass(frozen=True)
class Options:
    test: bool
    parallel: int = 20
    now: datetime | None = None
    processes: int = 1  # order processes (``--processes``); see lematt.orders.processes
    # Seconds from the start of the run after which unfinished orders fail with a timeout
    # (``--deadline`` / ``runTimeout``); None: each order has only its own orderTimeout.
    deadline: float | None = None


def _needs_ssh(config: Config, jobs: list[Job], pending: Pending) -> bool:
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
    with store.lock() as lock_fd:
        for message in store.ensure_dirs():
            reporter.change(message)
        for message in store.recover():
            reporter.change(message)
        now = options.now or datetime.now(UTC)
        names: dict[tuple[int, KeyType], str] = {}  # each certificate's file name
        found = await anyio.to_thread.run_sync(scan, store, config.lines, settings.key_types,
                                               names)
        # Built only when a summary asks for it: the quiet cron run does not pay for it.
        result.certificates = functools.partial(_records, store, config, found)
        env = OrderEnv(config, store, reporter, options.test, options.parallel,
                       options.processes, lock_fd)
        # What the CA offers and its renewal windows (RFC 9773): asked only when what was
        # kept is stale, so a cron run with fresh renewal info sends nothing.
        book = RenewalBook(store.root)
        profiles = {line.profile or "" for line in config.lines}
        index = index_identity(store.root)
        states, default = states_for(book, names, found, now.timestamp(), profiles, index)
        if await refresh(env, found, names, book, default, now, index):
            states, default = states_for(book, names, found, now.timestamp(), profiles,
                                         index)
        jobs = plan(settings, config.lines, found, now, states, default)
        result.jobs = jobs
        # Config warnings (must-staple, ignored files) are news only when something is due,
        # or when a person is watching: a cron run with nothing due stays silent.
        if jobs or not reporter.cron:
            for warning in (*config.warnings,
                            *timing_warnings(settings, config.lines, found)):
                reporter.warn(warning)
        pending = store.pending.load()
        if not jobs and not pending:
            reporter.info(f"all {len(found)} certificates are current; nothing to do")
            return result
        for job in jobs:
            reporter.info(f"due: {job.label}: {job.reason}")
        if jobs:
            check_before_ordering(env, book.ca(env.directory_url))
        async with contextlib.AsyncExitStack() as stack:
            # One SSH pool for the run: forwarders during the orders and deploys after them
            # share connections to the same hosts.
            pool = None
            if _needs_ssh(config, jobs, pending):
                from lematt.execution.ssh import SshPool

                pool = await stack.enter_async_context(SshPool(
                    connect_timeout=settings.ssh_connect_timeout,
                    command_timeout=settings.ssh_command_timeout))
            if jobs:
                result.outcomes = await order_all(env, jobs, pool, deadline=deadline)
                _keep_issued(env, book, names, result.outcomes)
            renewed_numbers = {o.job.line.lineno for o in result.outcomes if o.changed}
            renewed = [line for line in config.lines if line.lineno in renewed_numbers]
            if renewed or pending:
                report = await Deployer(config, store, reporter, pool, pending).run(renewed)
                result.steps = report.steps
                result.deploy_seconds = report.wall_seconds
                result.host_seconds = report.host_seconds
    return result


def _records(store: Store, config: Config, found: dict[tuple[int, KeyType], Found]
             ) -> list[CertRecord]:
    """Every certificate of the config with its paths and stored state, for the summary."""
    records = []
    for line in config.lines:
        for key_type in config.settings.key_types:
            key, cert = store.layout.pair_files(line, key_type)
            records.append(CertRecord(line, key_type, key, cert, found[(line.lineno, key_type)]))
    return records


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
