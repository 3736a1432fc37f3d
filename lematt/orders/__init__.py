"""The order phase of a run: every due job from key to stored pair.

Modules: ``context`` (what the order phase gets from the run, and what one process's order
tasks share), ``account`` (account key, remembered account URLs, the ACME client), ``keys``
(new or reused keys, key worker processes), ``pipeline`` (one job: key -> CSR -> ACME ->
check -> commit), ``lines`` (a line's jobs inside its prepare commands and forwarders; the
in-process backend), ``processes`` (the same spread over order processes).

Contract of ``order_all(env, jobs, pool, deadline=None)``: every job gets exactly one
``Outcome`` (returned in the order they finished, each also reported as it finishes); a job's
failure is a value. Only run-wide problems (the account, the challenge listener, the CA's
directory) raise. ``deadline`` (an ``anyio.current_time()`` value, from ``runTimeout`` or
``--deadline``) ends the order phase: what is still in flight is cancelled (its cleanup is
shielded; a pair already being stored is stored and reported) and each unfinished job fails
with a timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from lematt.model import Failure, FailureKind, Job, Outcome
from lematt.orders.account import load_or_create_account_key
from lematt.orders.context import OrderEnv

if TYPE_CHECKING:
    from lematt.execution.ssh import SshPool

# The failure of a job the run's deadline cut short: the run ran out of time, the
# certificate did not fail (it gets no back-off, lematt.monitor.retries).
UNFINISHED = ("not finished when the run's deadline passed (runTimeout in lematt.conf, or "
              "--deadline); the next run tries again")


def order_processes(env: OrderEnv, jobs: list[Job]) -> int:
    """How many order processes the run uses: ``--processes``, but one for lines with
    forwarders or prepare commands (they live in the main process) and never more than
    there are due lines."""
    if env.processes <= 1:
        return 1
    lines = {job.line.lineno: job.line for job in jobs}
    actions = env.config.actions
    if any(actions.forwarders_for(line) or actions.prepares_for(line)
           for line in lines.values()):
        env.reporter.info("--processes ignored: lines with forwarders or prepare "
                          "commands are ordered by this process")
        return 1
    return min(env.processes, len(lines))


async def order_all(env: OrderEnv, jobs: list[Job], pool: SshPool | None, *,
                    deadline: float | None = None,
                    outcomes: list[Outcome] | None = None) -> list[Outcome]:
    """Order every job; returns their outcomes. ``outcomes`` (when given) is the list they
    are appended to as they finish, so that a run stopped half-way still knows them."""
    from lematt.orders.account import ensure_registered
    from lematt.orders.lines import order_here
    from lematt.orders.pipeline import report_outcome
    from lematt.orders.rollover import resolve_rollover

    # A key rollover a crash interrupted is settled first: the key file must be the
    # account's before anything is signed with it.
    await resolve_rollover(env)
    account_key = load_or_create_account_key(env.settings.account_key, env.reporter.change)
    outcomes = [] if outcomes is None else outcomes

    live = env.reporter.live  # the terminal's status line, if there is one

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        report_outcome(env.reporter, outcome)
        live.order_done(outcome.ok)

    processes = order_processes(env, jobs)
    live.orders_begin(len(jobs))
    # A CA that stalls every order would otherwise hold the run for about
    # (orders / parallel) x orderTimeout.
    with anyio.CancelScope(deadline=deadline if deadline is not None else float("inf")) as scope:
        if processes > 1:
            from lematt.orders.processes import run_processes

            # Registered once here, so the order processes find the account URL in the book
            # instead of each registering the key.
            await ensure_registered(env, account_key)
            await run_processes(env, jobs, processes, record)
        else:
            await order_here(env, jobs, pool, account_key, record)
    if scope.cancelled_caught:
        finished = {(o.job.line.lineno, o.job.key_type) for o in outcomes}
        for job in jobs:
            if (job.line.lineno, job.key_type) not in finished:
                record(Outcome(job, failure=Failure(FailureKind.TIMEOUT, UNFINISHED)))
    live.orders_end()
    return outcomes
