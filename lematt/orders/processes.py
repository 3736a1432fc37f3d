"""Order processes (``--processes N``): one run's orders spread over N processes.

Why: one event loop uses one core. In a bulk run against a nearby CA, lematt's loop (HTTP,
TLS, JWS) is what keeps the machine from being busier; N processes use N cores.

Contract, main process (``run_processes``): the due lines are dealt out to N order processes
(``python -m lematt.orders.processes``; a line's RSA and EC jobs stay together). Each gets one JSON
line on stdin - the conf path, its jobs, its share of the request rates, its own journal
name - and answers one JSON line per finished job on stdout, which ``record`` receives at
once. Planning, the lock, recovery and deploys stay in the main process. With
``challengeListen`` the main process serves every challenge: the order processes write
their key authorizations into a private directory (``/dev/shm`` where there is one) that
its server reads; with ``challengeDropDir`` they write into the drop dir themselves. A job
whose process ends without answering fails with an internal error; the others are kept.

Order processes hold the conf-dir lock's descriptor (inherited), so no second run can start
while one of them still stores, even if the main process was killed. They stop - shielded
cleanup, commits finished - when their stdin closes: the main process closes it when it is
done or cancelled, and the kernel when it dies. They are started in their own session, so a
Ctrl-C reaches only the main process, which then stops them that way.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from lematt import logs
from lematt.errors import LemattError
from lematt.execution import STOP_GRACE_SECONDS
from lematt.model import (
    Failure,
    FailureKind,
    Found,
    Job,
    Outcome,
    outcome_from_json,
    outcome_to_json,
)
from lematt.orders.context import OrderEnv
from lematt.orders.lines import jobs_by_line


def deal(jobs: list[Job], processes: int) -> list[list[Job]]:
    """Jobs in ``processes`` groups of whole lines, round-robin in domains order."""
    groups: list[list[Job]] = [[] for _ in range(processes)]
    for i, line_jobs in enumerate(jobs_by_line(jobs).values()):
        groups[i % processes].extend(line_jobs)
    return [group for group in groups if group]


def _token_dir() -> tempfile.TemporaryDirectory[str]:
    """A private directory for challenge files, in memory (``/dev/shm``) where possible."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
    return tempfile.TemporaryDirectory(prefix="lematt-tokens-", dir=base,
                                       ignore_cleanup_errors=True)


@contextlib.asynccontextmanager
async def _challenge_server(env: OrderEnv, shared_dir: Path) -> AsyncIterator[None]:
    listen = env.settings.challenge_listen
    if listen is None:
        yield
        return
    from lematt.challenges.server import ChallengeServer

    async with ChallengeServer(shared_dir).running(*listen):
        yield


async def run_processes(env: OrderEnv, jobs: list[Job], processes: int,
                        record: Callable[[Outcome], None]) -> None:
    groups = deal(jobs, processes)
    with _token_dir() as token_dir:
        shared_dir = Path(token_dir)
        async with _challenge_server(env, shared_dir), anyio.create_task_group() as tg:
            for number, group in enumerate(groups):
                tg.start_soon(_one_process, env, number, len(groups), group, shared_dir,
                              record)


async def _one_process(env: OrderEnv, number: int, count: int, jobs: list[Job],
                       shared_dir: Path, record: Callable[[Outcome], None]) -> None:
    spec = {
        "config": str(env.config.config_path),
        "test": env.test,
        "parallel": max(1, env.parallel // count),
        "rate_share": 1.0 / count,
        "journal": f"pending-{number}",
        # The same --log-file: its lines are appended one write each, so they never mix.
        "log_file": str(log_file) if (log_file := logs.log_file_of()) else None,
        "shared_dir": str(shared_dir) if env.settings.challenge_listen else None,
        "jobs": [[job.line.lineno, list(job.line.names), job.key_type, job.reason,
                  job.found.key_present, job.replaces, job.new_key] for job in jobs],
    }
    waiting = {(job.line.lineno, job.key_type): job for job in jobs}
    process = await anyio.open_process(
        [sys.executable, "-m", "lematt.orders.processes"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=None, start_new_session=True,
        pass_fds=(env.lock_fd,) if env.lock_fd is not None else ())
    status: int | None = None
    cancelled = False
    try:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send(json.dumps(spec).encode() + b"\n")
        pending = b""
        async for chunk in process.stdout:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    data = json.loads(line)
                    key = (int(data["lineno"]), str(data["key_type"]))
                except (ValueError, KeyError, TypeError):
                    print(f"lematt: order process {number}: {line[:200]!r}", file=sys.stderr)
                    continue
                job = waiting.pop(key, None)
                if job is not None:
                    record(outcome_from_json(job, data))
        status = await process.wait()
    except anyio.get_cancelled_exc_class():
        cancelled = True  # the run is stopping: its jobs are not failures to report
        raise
    finally:
        with anyio.CancelScope(shield=True):
            # EOF on its stdin stops the process (if it still runs) with its cleanup.
            if process.stdin is not None:
                with contextlib.suppress(Exception):
                    await process.stdin.aclose()
            with anyio.move_on_after(STOP_GRACE_SECONDS):
                status = await process.wait()
            if process.returncode is None:
                process.kill()
                status = await process.wait()
            await process.aclose()
            for job in waiting.values() if not cancelled else ():
                record(Outcome(job, failure=Failure(
                    FailureKind.INTERNAL, f"internal error: order process {number} ended "
                                          f"(exit status {status}) before this certificate")))


# -- the order process ------------------------------------------------------------------------

async def _serve(env: OrderEnv, spec: dict[str, Any]) -> None:
    from lematt.model import CertLine
    from lematt.orders.account import load_or_create_account_key
    from lematt.orders.lines import order_here

    lines = {line.lineno: line for line in env.config.lines}
    jobs: list[Job] = []
    changed: list[Job] = []  # the domains file was edited after the main process read it
    for lineno, names, key_type, reason, key_present, replaces, new_key in spec["jobs"]:
        line = lines.get(lineno)
        if line is not None and list(line.names) == names:
            jobs.append(Job(line, key_type, reason, Found(None, key_present=key_present),
                            replaces=replaces, new_key=new_key))
        else:
            changed.append(Job(CertLine(lineno, tuple(names)), key_type, reason, Found(None)))
    out = sys.stdout
    unanswered = {(job.line.lineno, job.key_type): job for job in jobs}

    def answer(outcome: Outcome) -> None:
        unanswered.pop((outcome.job.line.lineno, outcome.job.key_type), None)
        out.write(json.dumps(outcome_to_json(outcome)) + "\n")
        out.flush()

    async with anyio.create_task_group() as tg:
        async def stop_at_eof() -> None:
            # The main process closes our stdin when it is done, stopped, or dead. (Read
            # on the loop: a thread blocked in read() would keep this process from exiting.)
            stdin = sys.stdin.fileno()
            os.set_blocking(stdin, False)
            while True:
                await anyio.wait_readable(stdin)
                with contextlib.suppress(BlockingIOError):
                    if not os.read(stdin, 4096):
                        break
            tg.cancel_scope.cancel()

        tg.start_soon(stop_at_eof)
        for job in changed:
            answer(Outcome(job, failure=Failure(
                FailureKind.CONFIG, "the domains file changed during the run; not ordered, "
                                    "the next run sees the new line")))
        shared = spec["shared_dir"]
        try:
            account_key = load_or_create_account_key(env.settings.account_key,
                                                     env.reporter.change)
            await order_here(env, jobs, None, account_key, answer,
                             shared_dir=Path(shared) if shared else None,
                             rate_share=float(spec["rate_share"]))
        except LemattError as exc:
            # What ends a whole run in one process (the CA unreachable, say) fails this
            # process's remaining jobs, each with the reason.
            for job in list(unanswered.values()):
                answer(Outcome(job, failure=Failure.of(exc)))
        tg.cancel_scope.cancel()


def main() -> int:
    from lematt import config as config_mod
    from lematt.report import Reporter
    from lematt.store.tree import Store
    from lematt.tuning import fewer_gc_passes

    spec = json.loads(sys.stdin.buffer.readline())
    # Lines in the shapes of the main process's (its stderr is this one's); stdout carries
    # the answers.
    logs.configure(log_file=Path(spec["log_file"]) if spec.get("log_file") else None,
                   stdout_to_stderr=True)
    try:
        config = config_mod.load(Path(spec["config"]))
        test = bool(spec["test"])
        store = Store(config.settings, test=test)
        store.use_journal(str(spec["journal"]))
        # stdout carries the answers: anything else goes to stderr.
        env = OrderEnv(config, store, Reporter(cron=True, test=test, out=sys.stderr), test,
                       parallel=int(spec["parallel"]))
        fewer_gc_passes()
        anyio.run(_serve, env, spec)
    except LemattError as exc:
        # Every job this process did not answer fails with this text in the main process's
        # report (as an order process that ended early); say why here.
        print(f"lematt order process: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
