"""The run's entry point: ``main(argv)`` parses, hands commands to ``lematt.cli.commands``,
ends a cron run the quiet-run memo says is quiet, sets up logging, runs the engine until it
ends or a signal stops it, and on every way it ends writes the summary and runs the notify
hooks (see the package docstring for the exit statuses).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lematt.cli.commands import (
    COMMANDS,
    config_path,
    json_target_problem,
    run_command,
    run_wide_error,
    say,
    until_signal,
)
from lematt.cli.parser import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    build_parser,
)

if TYPE_CHECKING:
    from lematt.config import Config
    from lematt.model import Failure, RunResult
    from lematt.report import Reporter
    from lematt.run import Options


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(commands=any(w in COMMANDS or w in ("-h", "--help") for w in words))
    args = parser.parse_args(words)
    if args.test is None:
        parser.error("one of the arguments --test --prod is required")
    if args.command is None and COMMANDS.keys() & set(args.only):
        # `lematt --only a plan`: --only took the command's name for a NAME.
        parser.error("a command goes before --only NAME... (lematt plan --only NAME...)")
    if args.force and not args.only:
        # Forcing every certificate at once can spend a week of the CA's rate limits (Let's
        # Encrypt: 50 certificates per registered domain, 5 per exact set of names).
        parser.error("--force needs --only NAME...: name the lines to renew now (forcing "
                     "every certificate at once can exhaust the CA's rate limits)")
    if args.command is not None:
        return run_command(args)
    # Checked first: a log file that cannot be written is a usage error on every run. (The
    # logging machinery is imported only past the quiet-run memo, unless a file is named.)
    log_fd = None
    if args.log_file is not None:
        from lematt import logs

        try:
            log_fd = logs.open_log_file(args.log_file)
        except OSError as exc:
            print(f"lematt: --log-file {args.log_file}: {exc.strerror or exc}; create its "
                  "directory, or name a file this user may write", file=sys.stderr)
            return EXIT_USAGE
    if args.cron and args.json is None and not (args.only or args.no_deploy):
        # A cron run whose last full check found nothing to do, with every input unchanged
        # and no certificate due yet, ends here (lematt.store.quiet).
        import time

        from lematt.errors import ConfigError
        from lematt.store.quiet import memo_says_quiet

        try:
            if memo_says_quiet(config_path(args), args.test, time.time()):
                return EXIT_OK
        except ConfigError:
            pass  # no config found: the full path below says so
    if args.json is not None and str(args.json) != "-":
        problem = json_target_problem(args.json)
        if problem is not None:
            print(f"lematt: --json {args.json}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    from lematt import logs

    logs.configure(log_file=args.log_file, log_fd=log_fd,
                   stdout_to_stderr=str(args.json) == "-")
    return _run_with_records(args)


def _run_with_records(args: argparse.Namespace) -> int:
    """The run, and on every way it ends the summary and the notify hooks (lematt.records)."""
    from datetime import UTC, datetime

    from lematt.model import Failure, FailureKind, RunResult

    started = datetime.now(UTC)
    result = RunResult()
    error: Failure | None = None
    status = EXIT_FAILED
    crash: Exception | None = None
    loaded: list[Config] = []  # the config, once loaded, also when the run then crashes
    try:
        status, error = _run_main(args, result, loaded)
    except KeyboardInterrupt:
        status, error = EXIT_INTERRUPTED, None
    except Exception as exc:
        # A bug: the summary and the hooks still say that the run failed, then the
        # traceback follows (it is what a bug report needs).
        crash, status, error = exc, EXIT_FAILED, Failure.of(exc)
    config = loaded[0] if loaded else None
    if status == EXIT_INTERRUPTED:
        say("lematt: interrupted; every stored key+cert pair is intact")
        error = Failure(FailureKind.INTERRUPTED, "interrupted by a signal before the run ended")
    if args.json is None and (config is None or not config.settings.notify):
        if crash is not None:
            raise crash
        return status
    from lematt.records import summary as summary_mod

    mode = "test" if args.test else "prod"
    summary = summary_mod.build(result, mode=mode, exit_status=status, error=error,
                                started=started, finished=datetime.now(UTC))
    if config is not None:
        status = _notify(config, summary, status)
    if args.json is not None:
        from lematt.errors import StoreError

        try:
            summary_mod.write(args.json, summary)
        except StoreError as exc:
            # A summary that cannot be written (the directory went away, a full disk) fails
            # the run: whatever reads it would otherwise take an old one for this run's.
            say(f"lematt: {exc}")
            if args.debug:
                traceback.print_exception(exc)
            status = EXIT_FAILED if status == EXIT_OK else status
    if crash is not None:
        raise crash
    return status


def _notify(config: Config, summary: dict[str, object], status: int) -> int:
    """Run the notify hooks when this exit calls for them; a hook's failure is one line and
    turns a successful exit into 1 (the run's own status is never hidden). The summary
    written afterwards records each hook's result."""
    import anyio

    from lematt.records import notify

    if not notify.should_run(config.settings, status):
        return status
    try:
        results = anyio.run(until_signal, notify.run_hooks(config.settings, summary))
    except KeyboardInterrupt:
        results = None
    if results is None:
        say("lematt: notify hooks interrupted")
        return status if status != EXIT_OK else EXIT_INTERRUPTED
    summary["notify"] = [r.to_json() for r in results]
    failed = [r for r in results if not r.ok]
    for hook in failed:
        say(f"lematt: {hook.error}")
    if failed and status == EXIT_OK:
        status = EXIT_FAILED
        summary["exit"] = status
    return status


def _run_main(args: argparse.Namespace, result: RunResult, loaded: list[Config]
              ) -> tuple[int, Failure | None]:
    """Load the config (appended to ``loaded``) and run; (exit status, the run-wide error)."""
    # Imports after parsing keep `lematt --help` and usage errors fast.
    import anyio

    from lematt import config as config_mod
    from lematt.errors import ConfigError, LemattError
    from lematt.model import Failure
    from lematt.progress import Progress
    from lematt.report import Reporter
    from lematt.run import Options
    from lematt.survey import select_lines
    from lematt.tuning import fewer_gc_passes

    # The live status line: only for a person watching a terminal (not under --cron, and
    # not when the JSON summary goes to the same place).
    live = Progress.on_terminal(sys.stderr, not args.cron and str(args.json) != "-")
    reporter = Reporter(cron=args.cron, debug=args.debug, test=args.test, live=live)
    try:
        config = config_mod.load(config_path(args))
        select_lines(config.lines, args.only)  # an unknown name: usage error, exit 2
    except ConfigError as exc:
        say(f"lematt: {exc}")
        if args.debug:
            traceback.print_exc()
        return EXIT_USAGE, Failure.of(exc)
    loaded.append(config)
    s = config.settings
    options = Options(test=args.test, parallel=args.parallel or s.parallel,
                      processes=args.processes or s.processes,
                      deadline=args.deadline or s.run_timeout, only=tuple(args.only),
                      force=args.force, no_deploy=args.no_deploy)
    fewer_gc_passes()
    try:
        done = anyio.run(_run_until_signal, config, options, reporter, result)
    except LemattError as exc:
        return run_wide_error(exc, args.debug), Failure.of(exc)
    if done is None:
        return EXIT_INTERRUPTED, None
    return (EXIT_OK if result.ok else EXIT_FAILED), None


async def _run_until_signal(config: Config, options: Options, reporter: Reporter,
                            result: RunResult | None = None) -> RunResult | None:
    """Run the engine; SIGINT (Ctrl-C), SIGTERM and SIGHUP cancel it, so that shielded
    cleanup (token files, prepare process groups, key workers, temp files) runs before the
    process exits. (Left to Python, SIGINT would raise KeyboardInterrupt wherever the loop
    happens to be, and cleanup that awaits would not run.)

    Returns None when a signal stopped the run. A ``LemattError`` is re-raised as itself (a
    task group would otherwise wrap it in an ExceptionGroup)."""
    from lematt.run import run

    return await until_signal(run(config, options, reporter, result))


