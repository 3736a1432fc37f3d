"""Command line: ``lematt (--test | --prod) [--config PATH] [--parallel N] [--processes N]
[--deadline SECONDS] [--cron] [--json PATH|-] [--log-file PATH] [--only NAME...] [--force]
[--no-deploy] [--debug]`` (the run), ``lematt --version``, and the commands ``lematt plan``,
``lematt account show|update-contact|rollover|deactivate``, ``lematt revoke NAME...`` and
``lematt verify [NAME...]`` (exit 1: an endpoint does not serve the stored certificate)
and ``lematt status [--json] [--warn-days N]`` (exit 1: something needs attention).

Contract: ``main(argv)`` returns the exit status and never raises for expected problems:
0 every certificate current or renewed and every action succeeded (a command: done); 1 some
certificate or action failed (all others still completed), or the run could not start (CA or
account unreachable); 2 usage or config error, reported before anything changed (a ``--json``
directory that is missing or not writable is one); 75 (EX_TEMPFAIL) another run holds the
lock - nothing was done, a later run will; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP) after
cleaning up. Errors are one line; a traceback only with ``--debug``. Lines go through the
``lematt`` logger, whose handlers ``lematt.logs`` sets up once here (``--log-file``: a file
that cannot be opened is status 2 before the run). The ``--json`` summary (``-``: stdout) is
written and the ``notify`` hooks run on every exit of the run (``lematt.records``); a summary
that cannot be written, or a hook that fails, is one line and makes status 0 into 1.

Every command takes ``--test | --prod``, ``--config`` and ``--debug`` like the run, before or
after its name (``lematt --test account show`` = ``lematt account show --test``). A command is
an entry in ``COMMANDS`` with a parser builder and a handler; plain ``lematt --test`` (no
command) is the run, unchanged. Without ``--config`` the run and every command look for
lematt.conf as ``lematt.locate`` says (``$LEMATT_CONFIG``, ``./conf/lematt.conf``,
``/etc/lematt/lematt.conf``); none found is one line listing where, exit 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from lematt.config import Config
    from lematt.errors import LemattError
    from lematt.model import Failure, RunResult
    from lematt.orders.context import OrderEnv
    from lematt.report import Reporter
    from lematt.run import Options

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_LOCKED = 75  # EX_TEMPFAIL (sysexits.h): cron wrappers and systemd treat it as "try later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C
_R = TypeVar("_R")


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds greater than 0")
    return value


def _common(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--test/--prod, --config, --debug: on the top parser with their defaults, on every
    command's parser without (SUPPRESS), so that a value given before the command's name is
    not overwritten by the command parser's default."""
    keep: dict[str, object] = {} if top else {"default": argparse.SUPPRESS}
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--test", dest="test", action="store_const", const=True,
                      help="use the test CA (directoryTest) and the test/ tree", **keep)
    mode.add_argument("--prod", dest="test", action="store_const", const=False,
                      help="use the production CA (directoryProd) and the prod/ tree", **keep)
    p.add_argument("--config", type=Path, metavar="PATH", **({"default": None} | keep),
                   help="lematt.conf; domains and actions.conf are read from its directory "
                        "(default: $LEMATT_CONFIG, else ./conf/lematt.conf, else "
                        "/etc/lematt/lematt.conf)")
    p.add_argument("--debug", action="store_true", help="show tracebacks",
                   **({"default": False} | keep))


def _selection(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--only, --force, --no-deploy: the run's, and plan's (to show what such a run does);
    SUPPRESS on the command parser as in ``_common``."""
    keep: dict[str, object] = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--only", nargs="+", metavar="NAME", **({"default": []} | keep),
                   help="only the domains lines that carry one of these names")
    p.add_argument("--force", action="store_true", **({"default": False} | keep),
                   help="renew the --only certificates now, even if they are current "
                        "(requires --only: the CA's rate limits count every certificate)")
    p.add_argument("--no-deploy", action="store_true", **({"default": False} | keep),
                   help="order and store, deploy nothing; the next run deploys what was "
                        "renewed")


class _Version(argparse.Action):
    """``--version``: the installed package's version, read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print lematt's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("lematt")
        except PackageNotFoundError:  # run from a checkout that was never installed
            from lematt import __version__ as text
        print(f"lematt {text}")
        raise SystemExit(EXIT_OK)


EPILOG = """\
examples:
  lematt --prod --cron                      the cron or timer run: silent unless news
      17 3,15 * * *  root  lematt --prod --cron --config /etc/lematt/lematt.conf
  lematt --prod plan                        what a run would do now; contacts nothing
  lematt --prod --only www.example.com --force
                                            renew that line's certificates now
  lematt --prod --no-deploy                 renew what is due; deploy at the next run
  lematt --prod status                      one row per certificate, from the tree alone
  lematt --prod account show                the ACME account of accountKey
  lematt --prod revoke www.example.com --reason keyCompromise

exit status:
  0    every certificate current or renewed, every action succeeded (a command: done)
  1    some certificate or action failed, or the run could not start
  2    usage or config error, reported before anything changed
  75   another run holds the lock: nothing was done, try later (EX_TEMPFAIL)
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP), after cleaning up

lematt.conf: --config PATH, else $LEMATT_CONFIG, else ./conf/lematt.conf, else
/etc/lematt/lematt.conf.
"""


def _plan_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    plan = sub.add_parser("plan", help="what a run would do now, without doing it",
                          description="Show what a run would do now: each due certificate "
                                      "and why, the prepare commands and forwarders its "
                                      "orders start, each host's deploy steps in order. "
                                      "Contacts no CA and no host, takes no lock, writes "
                                      "nothing.")
    _common(plan, top=False)
    _selection(plan, top=False)
    plan.add_argument("--json", dest="plan_json", action="store_true",
                      help="print the plan as JSON on stdout")


def _email(text: str) -> str:
    from lematt.config.settings import email_address

    try:
        return email_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _account_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    account = sub.add_parser("account", help="show or change the ACME account of accountKey",
                             description="Show or change the ACME account that accountKey "
                                         "has at the CA of --test or --prod.")
    _common(account, top=False)
    actions = account.add_subparsers(dest="action", metavar="ACTION", required=True,
                                     parser_class=_Parser)
    show = actions.add_parser("show", help="the account's URL, status, contact and key")
    contact = actions.add_parser("update-contact", help="replace the account's contact "
                                 "addresses (default: contactEmail of lematt.conf)")
    contact.add_argument("emails", nargs="*", type=_email, metavar="EMAIL")
    rollover = actions.add_parser("rollover", help="move the account to a new key (RFC 8555 "
                                  "7.3.5); accountKey is replaced once the CA confirmed")
    deactivate = actions.add_parser("deactivate", help="deactivate the account for good "
                                    "(RFC 8555 7.3.6)")
    deactivate.add_argument("--yes", action="store_true",
                            help="really deactivate: the CA refuses the key from then on")
    for action in (show, contact, rollover, deactivate):
        _common(action, top=False)


def _revoke_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    revoke = sub.add_parser("revoke", help="revoke stored certificates; they are renewed at "
                            "the next run", description="Revoke the stored certificates of "
                            "the domains lines that carry NAME (RFC 8555 7.6), signed with the "
                            "account key; each is due at the next run, with a new key.")
    _common(revoke, top=False)
    revoke.add_argument("names", nargs="+", metavar="NAME",
                        help="any name of a domains line")
    revoke.add_argument("--reason", default="unspecified", choices=REVOCATION_REASONS,
                        help="RFC 5280 reason (default: %(default)s)")
    revoke.add_argument("--key-type", choices=("rsa", "ec"),
                        help="only this key type's certificate (default: every keyTypes)")


def _verify_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    verify = sub.add_parser("verify", help="check that the endpoints of the actions' verify "
                            "lists serve the stored certificates", description="Connect to "
                            "every endpoint of the actions' verify lists and compare the "
                            "certificate it serves, RSA and EC, with the stored one (only for "
                            "the domains lines that carry NAME, when given). Exit 0: all "
                            "match; 1: a mismatch or an endpoint that did not answer.")
    _common(verify, top=False)
    verify.add_argument("names", nargs="*", metavar="NAME", help="any name of a domains line")
    verify.add_argument("--json", type=Path, metavar="PATH", default=argparse.SUPPRESS,
                        help="also write the results as JSON to PATH")


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 <= value < 100000:
        raise argparse.ArgumentTypeError("must be a number of days from 0 to 99999")
    return value


def _status_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    status = sub.add_parser(
        "status", help="every certificate's expiry, next renewal, back-off and owed deploys",
        description="Show every certificate of the tree (--test or --prod): notAfter, days "
                    "left, when the next run renews it and why, its last failed orders and "
                    "owed deploys. Reads only the local tree: no CA, no host, no lock. Exit "
                    "status 0 all fine; 1 something expires within --warn-days, failed its "
                    "last order, owes a deploy or is missing; 2 config error.")
    _common(status, top=False)
    status.add_argument("--json", dest="as_json", action="store_true",
                        help="print a JSON document instead of the table")
    status.add_argument("--warn-days", type=_days, metavar="N", default=14.0,
                        help="exit 1 when a certificate expires within N days "
                             "(default: %(default)g)")


# The RFC 5280 reasons a subscriber may give (lematt.acme.client.REVOCATION_REASONS), spelled
# here too so that `lematt --help` does not import the ACME client.
REVOCATION_REASONS = ("unspecified", "keyCompromise", "affiliationChanged", "superseded",
                      "cessationOfOperation", "privilegeWithdrawn")


def build_parser(commands: bool = True) -> argparse.ArgumentParser:
    """The parser; ``commands=False`` leaves the commands out (the cron run's path: their
    seven parsers would triple the cost of parsing its arguments)."""
    p = _Parser(prog="lematt", description="Keep RSA and EC certificates for every domains "
                "line fresh from an ACME CA, and deploy them.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version)
    _common(p, top=True)
    # Defaults come from lematt.conf (parallel, processes), else 20 and 1: 20 is the best
    # measured throughput against a local CA without provoking Pebble's stalls, and already
    # past what Let's Encrypt's rate limits let one account use (README, Speed).
    p.add_argument("--parallel", type=_positive, metavar="N",
                   help="orders in flight at once (default: lematt.conf's parallel, else 20)")
    p.add_argument("--processes", type=_positive, metavar="N",
                   help="spread the orders over N processes, to use N cores in bulk runs "
                        "against a nearby CA (default: lematt.conf's processes, else 1)")
    p.add_argument("--deadline", type=_seconds, metavar="SECONDS",
                   help="end the orders this many seconds after the start: unfinished "
                        "certificates fail with a timeout, renewed ones are still deployed "
                        "(default: lematt.conf's runTimeout, else no limit)")
    p.add_argument("--cron", action="store_true",
                   help="print nothing when nothing is due; else only renewals, actions "
                        "and failures")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="also write a JSON summary of the run to PATH ('-': to stdout, "
                        "and every other line to stderr); written on every exit")
    p.add_argument("--log-file", type=Path, metavar="PATH",
                   help="also append every line, timestamped, to PATH (created 0640)")
    _selection(p, top=True)
    if not commands:
        p.set_defaults(command=None)
        return p
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                           help="without one: the run")
    for builder, _ in COMMANDS.values():
        builder(sub)
    return p


async def _run_until_signal(config: Config, options: Options, reporter: Reporter,
                            result: RunResult | None = None) -> RunResult | None:
    """Run the engine; SIGINT (Ctrl-C), SIGTERM and SIGHUP cancel it, so that shielded
    cleanup (token files, prepare process groups, key workers, temp files) runs before the
    process exits. (Left to Python, SIGINT would raise KeyboardInterrupt wherever the loop
    happens to be, and cleanup that awaits would not run.)

    Returns None when a signal stopped the run. A ``LemattError`` is re-raised as itself (a
    task group would otherwise wrap it in an ExceptionGroup)."""
    from lematt.run import run

    return await _until_signal(run(config, options, reporter, result))


async def _until_signal(work: Awaitable[_R]) -> _R | None:
    """``work`` until it ends or a signal cancels it (then None); see _run_until_signal."""
    import anyio
    import anyio.abc

    from lematt.errors import LemattError

    result: _R | None = None
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
            result = await work
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


def _json_target_problem(path: Path) -> str | None:
    """Why ``--json PATH`` could not be written, checked before the run changes anything."""
    directory = path.parent
    if path.is_dir():
        return f"{path} is a directory; name a file"
    if not directory.is_dir():
        return f"directory {directory} does not exist (or is not a directory); create it"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable by this user"
    return None


def _run_wide_error(exc: LemattError, debug: bool) -> int:
    """One line for an error that stopped a run or command, and its exit status."""
    from lematt.errors import ConfigError, LockError

    _say(f"lematt: {exc}")
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, LockError):
        return EXIT_LOCKED
    # A setting the CA needs (a profile it offers, external account binding) is a config
    # error found before any order: exit 2, as for the files themselves.
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


def _command(args: argparse.Namespace) -> int:
    """Run a command (``lematt account ...``, ``lematt revoke ...``): load the config, run
    its handler until it ends or a signal stops it, map errors to exit statuses."""
    import anyio

    from lematt import config as config_mod
    from lematt.errors import LemattError
    from lematt.orders.context import OrderEnv
    from lematt.report import Reporter
    from lematt.store.tree import Store

    reporter = Reporter(debug=args.debug, test=args.test)
    try:
        config = config_mod.load(_config_path(args))
        env = OrderEnv(config, Store(config.settings, test=args.test), reporter, args.test,
                       parallel=1)
        handler = COMMANDS[args.command][1]
        status = anyio.run(_until_signal, handler(env, args))
    except LemattError as exc:
        return _run_wide_error(exc, args.debug)
    except KeyboardInterrupt:
        status = None
    if status is None:
        print("lematt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(status)


async def _account(env: OrderEnv, args: argparse.Namespace) -> int:
    from lematt.errors import ConfigError
    from lematt.orders import manage

    if args.action == "show":
        return await manage.show(env)
    if args.action == "update-contact":
        emails = args.emails or ([env.settings.contact_email]
                                 if env.settings.contact_email else [])
        if not emails:
            raise ConfigError("no address: give one (lematt account update-contact "
                              "EMAIL...) or set contactEmail", path=env.settings.source)
        return await manage.update_contact(env, emails)
    if args.action == "rollover":
        return await manage.rollover(env)
    if not args.yes:
        raise ConfigError("deactivating an account cannot be undone: the CA refuses its key "
                          "from then on; add --yes to do it")
    return await manage.deactivate(env)


async def _revoke(env: OrderEnv, args: argparse.Namespace) -> int:
    from lematt.orders import manage

    key_types = (args.key_type,) if args.key_type else env.settings.key_types
    return await manage.revoke(env, args.names, args.reason, key_types)


async def _verify(env: OrderEnv, args: argparse.Namespace) -> int:
    from lematt.errors import ConfigError
    from lematt.verify.command import verify_stored

    problem = _json_target_problem(args.json) if args.json is not None else None
    if problem is not None:
        raise ConfigError(f"--json {args.json}: {problem}")
    return await verify_stored(env.config, env.store.layout, env.reporter, args.names,
                               args.json)
async def _plan(env: OrderEnv, args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from lematt import preview

    result = await preview.preview(env.config, env.store, datetime.now(UTC),
                                   only=tuple(args.only), force=args.force,
                                   no_deploy=args.no_deploy)
    try:
        if args.plan_json:
            print(json.dumps(preview.to_json(result), indent=2, sort_keys=True), flush=True)
        else:
            for warning in result.warnings:
                env.reporter.warn(warning)
            for line in preview.lines(result):
                env.reporter.change(line)
    except BrokenPipeError:
        # `lematt plan | head`: the reader is gone. Quietly, as Python's own docs advise:
        # stdout points at /dev/null so that the flush at exit does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILED
    return EXIT_OK


def _config_path(args: argparse.Namespace) -> Path:
    from lematt.locate import find_config

    return find_config(args.config, os.environ)


async def _status(env: OrderEnv, args: argparse.Namespace) -> int:
    """Reads the tree only: no lock (it runs beside a run), no CA, no host."""
    import time

    from lematt.monitor.status import status
    from lematt.tuning import fewer_gc_passes

    fewer_gc_passes()  # as for the run: 20,000 rows are many young objects
    try:
        return status(env.config, env.store, time.time(), args.warn_days, args.as_json,
                      sys.stdout, "test" if env.test else "prod")
    except BrokenPipeError:
        # `lematt status | head`: the reader has what it wanted. Python's own flush at exit
        # would fail on the closed pipe again, so stdout goes to /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


Handler = Callable[["OrderEnv", argparse.Namespace], Awaitable[int]]
# command name -> (adds its parser to the subparsers, runs it). Later commands (status)
# slot in here the same way.
COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction[_Parser]], None], Handler]] = {
    "plan": (_plan_parser, _plan),
    "account": (_account_parser, _account),
    "revoke": (_revoke_parser, _revoke),
    "verify": (_verify_parser, _verify),
    "status": (_status_parser, _status),
}


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
        return _command(args)
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
            if memo_says_quiet(_config_path(args), args.test, time.time()):
                return EXIT_OK
        except ConfigError:
            pass  # no config found: the full path below says so
    if args.json is not None and str(args.json) != "-":
        problem = _json_target_problem(args.json)
        if problem is not None:
            print(f"lematt: --json {args.json}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    from lematt import logs

    logs.configure(log_file=args.log_file, log_fd=log_fd,
                   stdout_to_stderr=str(args.json) == "-")
    return _run_with_records(args)


def _say(message: str) -> None:
    """One error line: through the ``lematt`` logger once ``lematt.logs`` set it up (the run:
    timestamps, journal priority, log file), else plainly on stderr (the commands)."""
    import logging

    logger = logging.getLogger("lematt")
    if any(getattr(h, "lematt_output", False) for h in logger.handlers):
        logger.error("%s", message)
    else:
        print(message, file=sys.stderr, flush=True)


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
        _say("lematt: interrupted; every stored key+cert pair is intact")
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
            _say(f"lematt: {exc}")
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
        results = anyio.run(_until_signal, notify.run_hooks(config.settings, summary))
    except KeyboardInterrupt:
        results = None
    if results is None:
        _say("lematt: notify hooks interrupted")
        return status if status != EXIT_OK else EXIT_INTERRUPTED
    summary["notify"] = [r.to_json() for r in results]
    failed = [r for r in results if not r.ok]
    for hook in failed:
        _say(f"lematt: {hook.error}")
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
        config = config_mod.load(_config_path(args))
        select_lines(config.lines, args.only)  # an unknown name: usage error, exit 2
    except ConfigError as exc:
        _say(f"lematt: {exc}")
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
        return _run_wide_error(exc, args.debug), Failure.of(exc)
    if done is None:
        return EXIT_INTERRUPTED, None
    return (EXIT_OK if result.ok else EXIT_FAILED), None
