"""Command line: ``lematt (--test | --prod) [--config PATH] [--parallel N] [--processes N]
[--cron] [--json PATH] [--debug]``.

Contract: ``main(argv)`` returns the exit status and never raises for expected problems:
0 every certificate current or renewed and every action succeeded; 1 some certificate or
action failed (all others still completed), or the run could not start (lock held, CA or
account unreachable); 2 usage or config error, reported before anything changed.
Errors are one line; a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lematt.config import Config
    from lematt.errors import LemattError
    from lematt.model import RunResult
    from lematt.report import Reporter
    from lematt.run import Options

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"lematt: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lematt", description="Keep RSA and EC certificates for every domains "
                "line fresh from an ACME CA, and deploy them.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--test", dest="test", action="store_true",
                      help="use the test CA (directoryTest) and the test/ tree")
    mode.add_argument("--prod", dest="test", action="store_false",
                      help="use the production CA (directoryProd) and the prod/ tree")
    p.add_argument("--config", default="conf/lematt.conf", type=Path,
                   help="lematt.conf; domains and actions.conf are read from its directory "
                        "(default: %(default)s)")
    # Defaults come from lematt.conf (parallel, processes), else 20 and 1: 20 is the best
    # measured throughput against a local CA without provoking Pebble's stalls, and already
    # past what Let's Encrypt's rate limits let one account use (README, Speed).
    p.add_argument("--parallel", type=_positive, metavar="N",
                   help="orders in flight at once (default: lematt.conf's parallel, else 20)")
    p.add_argument("--processes", type=_positive, metavar="N",
                   help="spread the orders over N processes, to use N cores in bulk runs "
                        "against a nearby CA (default: lematt.conf's processes, else 1)")
    p.add_argument("--cron", action="store_true",
                   help="print nothing when nothing is due; else only renewals, actions "
                        "and failures")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="also write a JSON summary of the run to PATH")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


async def _run_until_signal(config: Config, options: Options,
                            reporter: Reporter) -> RunResult | None:
    """Run the engine; SIGINT (Ctrl-C), SIGTERM and SIGHUP cancel it, so that shielded
    cleanup (token files, prepare process groups, key workers, temp files) runs before the
    process exits. (Left to Python, SIGINT would raise KeyboardInterrupt wherever the loop
    happens to be, and cleanup that awaits would not run.)

    Returns None when a signal stopped the run. A ``LemattError`` is re-raised as itself (a
    task group would otherwise wrap it in an ExceptionGroup)."""
    import anyio
    import anyio.abc

    from lematt.errors import LemattError
    from lematt.run import run

    result: RunResult | None = None
    error: LemattError | None = None
    async with anyio.create_task_group() as tg:

        async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM,
                                            signal.SIGHUP) as signals:
                task_status.started()
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        await tg.start(watch)
        try:
            result = await run(config, options, reporter)
        except* LemattError as group:
            # A run-wide error raised inside a task group (the group-commit thread's, an
            # order process's) arrives wrapped: the user gets its own sentence.
            error = _first_leaf(group)
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


def _first_leaf(group: BaseExceptionGroup[LemattError]) -> LemattError:
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imports after parsing keep `lematt --help` and usage errors fast.
    import anyio

    from lematt import config as config_mod
    from lematt.errors import ConfigError, LemattError
    from lematt.model import Failure, RunResult
    from lematt.report import Reporter
    from lematt.run import Options, write_summary
    from lematt.tuning import fewer_gc_passes

    reporter = Reporter(cron=args.cron, debug=args.debug, test=args.test)
    try:
        config = config_mod.load(args.config)
    except ConfigError as exc:
        print(f"lematt: {exc}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return EXIT_USAGE
    s = config.settings
    options = Options(test=args.test, parallel=args.parallel or s.parallel,
                      processes=args.processes or s.processes)
    mode = "test" if options.test else "prod"
    fewer_gc_passes()
    try:
        result = anyio.run(_run_until_signal, config, options, reporter)
    except LemattError as exc:
        print(f"lematt: {exc}", file=sys.stderr)
        if args.debug:
            traceback.print_exception(exc)
        if args.json is not None:
            write_summary(args.json, RunResult().to_json(mode, os.getpid(), Failure.of(exc)))
        # A config error found at run time (a conf dir or tree others can write) is still
        # one: nothing was changed.
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        result = None
    if result is None:
        print("lematt: interrupted; every stored key+cert pair is intact", file=sys.stderr)
        return EXIT_FAILED
    if args.json is not None:
        write_summary(args.json, result.to_json(mode, os.getpid()))
    return EXIT_OK if result.ok else EXIT_FAILED
