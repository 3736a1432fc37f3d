"""The orders of one process: each domains line inside its prepare commands and forwarders.

Contract: ``order_here(env, jobs, pool, account_key, record, ...)`` orders ``jobs`` in this
process - one ACME client (account resolved before any task group opens, so an account error
reaches the caller as itself), one http-01 solver, at most ``env.parallel`` lines in flight,
group commits, key workers - and gives ``record`` every job's outcome as it finishes. A
line's key types are ordered one after the other (never two orders for the same names in
flight); a line's failure to prepare (a prepare command, a forwarder) fails its jobs with the
reason, and every other line proceeds. ``shared_dir`` and ``rate_share`` are set in an order
process (its challenge files for the main process's server; its share of the request rates).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from lematt.config import Settings, SshForward
from lematt.errors import LemattError
from lematt.execution.local import LocalRunner, OutputTail
from lematt.model import CertLine, Failure, Job, Outcome
from lematt.orders.context import OrderEnv, OrderTools
from lematt.orders.pipeline import order_one

if TYPE_CHECKING:
    from lematt import crypto
    from lematt.acme.order import ChallengeSolver
    from lematt.execution.ssh import SshPool

# The forwarder outlives a run's last order by at most this much if lematt vanishes without
# closing the SSH channel (it also exits at EOF, which is the normal way).
FORWARDER_MARGIN_SECONDS = 300.0


def _fail_all(tools: OrderTools, jobs: list[Job], failure: Failure) -> None:
    for job in jobs:
        tools.record(Outcome(job, failure=failure))


async def order_line(env: OrderEnv, tools: OrderTools, line: CertLine, jobs: list[Job]) -> None:
    """The orders of one domains line, inside its forwarders and prepare commands."""
    fwds = env.config.actions.forwarders_for(line)
    try:
        for fwd in fwds:
            assert tools.hub is not None
            await tools.hub.ensure(fwd)
        await _line_orders(env, tools, line, jobs)
    except LemattError as exc:
        _fail_all(tools, jobs, Failure.of(exc))
    finally:
        for fwd in fwds:
            assert tools.hub is not None
            tools.hub.finished(fwd)


async def _line_orders(env: OrderEnv, tools: OrderTools, line: CertLine, jobs: list[Job]
                       ) -> None:
    """A line's jobs (its key types) one after the other, never two orders for the same names
    in flight: a CA may answer a second newOrder for the same account and identifiers with
    the first, still pending or ready, order (RFC 8555 section 7.4; Let's Encrypt's Boulder
    does), and two jobs sharing one order lose one certificate. The second order finds the
    names' authorizations already valid, so it costs little; different lines still run
    concurrently."""
    prepares = env.config.actions.prepares_for(line)
    started: list[tuple[str, OutputTail]] = []
    failed = False
    async with tools.slots:
        async with contextlib.AsyncExitStack() as stack:
            # With prepare commands (the original's `ssh -t host leforward.py`, say) the
            # line's orders share one set of prepared processes, started before and stopped
            # after all of them.
            try:
                for argv in prepares:
                    shown = " ".join(argv)
                    env.reporter.info(f"prepare for {line.primary}: {shown}")
                    output = await stack.enter_async_context(LocalRunner().background(argv))
                    started.append((shown, output))
            except LemattError as exc:
                failure = Failure.of(exc)
                _fail_all(tools, jobs, Failure(failure.kind, f"prepare failed: {failure}"))
                failed = True
            else:
                for job in jobs:
                    env.reporter.live.order_started()
                    outcome = await order_one(env, tools, job)
                    failed = failed or not outcome.ok
                    tools.record(outcome)
        # Stopped now, so everything they wrote has been read. The original let prepare
        # output through; here it is shown when it can explain a failure (an `ssh -t`
        # forwarder that could not start), and always with --debug.
        for shown, output in started:
            text = output.text().strip()
            if text and (failed or env.reporter.debug):
                say = env.reporter.failure if failed else env.reporter.info
                body = "\n  | ".join(text.splitlines())
                say(f"prepare for {line.primary} `{shown}` printed:\n  | {body}")


@contextlib.asynccontextmanager
async def http01_solver(settings: Settings, shared_dir: Path | None = None
                        ) -> AsyncIterator[ChallengeSolver]:
    """The process's http-01 solver. ``shared_dir``: this is an order process; the main
    process's challenge server serves the files written there."""
    from lematt.challenges.drop_dir import DropDirSolver
    from lematt.challenges.server import ChallengeServer

    if shared_dir is not None:
        yield DropDirSolver(shared_dir, durable=False)
    elif settings.challenge_listen is not None:
        server = ChallengeServer()
        async with server.running(*settings.challenge_listen):
            yield server
    else:
        assert settings.challenge_drop_dir is not None  # config guarantees one of the two
        solver = DropDirSolver(settings.challenge_drop_dir)
        solver.prepare()
        yield solver


async def order_here(env: OrderEnv, jobs: list[Job], pool: SshPool | None,
                     account_key: crypto.PrivateKey, record: Callable[[Outcome], None], *,
                     shared_dir: Path | None = None, rate_share: float = 1.0) -> None:
    from lematt.acme.limits import order_limiter
    from lematt.challenges.remote import ForwarderHub
    from lematt.orders.account import open_client, use_account
    from lematt.orders.keys import key_workers
    from lematt.store.committer import group_commits

    s = env.settings
    by_line = jobs_by_line(jobs)
    lines = {line.lineno: line for line in env.config.lines}
    planned: dict[SshForward, int] = {}
    for lineno in by_line:
        for fwd in env.config.actions.forwarders_for(lines[lineno]):
            planned[fwd] = planned.get(fwd, 0) + 1
    async with open_client(env, account_key, rate_share) as client:
        # Before any task group opens: an account error is a run-wide error and must reach
        # the CLI as itself, not wrapped in an ExceptionGroup.
        await use_account(env, client, account_key)
        async with http01_solver(s, shared_dir) as solver, \
                group_commits(env.store) as committer, key_workers() as workers:
            tools = OrderTools(client, solver, order_limiter(env.parallel), committer,
                               workers, record)
            async with anyio.create_task_group() as tg:
                if planned:
                    assert pool is not None
                    tools.hub = ForwarderHub(pool, s.ssh_config, tg, planned,
                                             s.order_timeout + FORWARDER_MARGIN_SECONDS,
                                             env.reporter.info)
                for lineno, line_jobs in by_line.items():
                    tg.start_soon(order_line, env, tools, lines[lineno], line_jobs)


def jobs_by_line(jobs: list[Job]) -> dict[int, list[Job]]:
    """Jobs grouped by their domains line, lines in the order first seen."""
    by_line: dict[int, list[Job]] = {}
    for job in jobs:
        by_line.setdefault(job.line.lineno, []).append(job)
    return by_line
