"""The commands (``lematt plan | account | revoke | verify | status``): loading the config,
running a handler until it ends or a signal stops it, mapping errors to exit statuses.

Contract: ``COMMANDS`` maps a command's name to (its parser builder, its handler);
``run_command(args)`` runs the one ``args`` names and returns the exit status.
``until_signal``, ``run_wide_error`` and ``say`` serve the run as well (``lematt.cli.entry``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from lematt.cli.parser import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
    PARSERS,
    _Parser,
)

if TYPE_CHECKING:
    from lematt.errors import LemattError
    from lematt.orders.context import OrderEnv

_R = TypeVar("_R")


def say(message: str) -> None:
    """One error line: through the ``lematt`` logger once ``lematt.logs`` set it up (the run:
    timestamps, journal priority, log file), else plainly on stderr (the commands)."""
    import logging

    logger = logging.getLogger("lematt")
    if any(getattr(h, "lematt_output", False) for h in logger.handlers):
        logger.error("%s", message)
    else:
        print(message, file=sys.stderr, flush=True)


async def until_signal(work: Awaitable[_R]) -> _R | None:
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


def json_target_problem(path: Path) -> str | None:
    """Why ``--json PATH`` could not be written, checked before the run changes anything."""
    directory = path.parent
    if path.is_dir():
        return f"{path} is a directory; name a file"
    if not directory.is_dir():
        return f"directory {directory} does not exist (or is not a directory); create it"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable by this user"
    return None


def run_wide_error(exc: LemattError, debug: bool) -> int:
    """One line for an error that stopped a run or command, and its exit status."""
    from lematt.errors import ConfigError, LockError

    say(f"lematt: {exc}")
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, LockError):
        return EXIT_LOCKED
    # A setting the CA needs (a profile it offers, external account binding) is a config
    # error found before any order: exit 2, as for the files themselves.
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


def run_command(args: argparse.Namespace) -> int:
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
        config = config_mod.load(config_path(args))
        env = OrderEnv(config, Store(config.settings, test=args.test), reporter, args.test,
                       parallel=1)
        handler = COMMANDS[args.command][1]
        status = anyio.run(until_signal, handler(env, args))
    except LemattError as exc:
        return run_wide_error(exc, args.debug)
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

    problem = json_target_problem(args.json) if args.json is not None else None
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


def config_path(args: argparse.Namespace) -> Path:
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
_HANDLERS: dict[str, Handler] = {
    "plan": _plan,
    "account": _account,
    "revoke": _revoke,
    "verify": _verify,
    "status": _status,
}
# command name -> (adds its parser to the subparsers, runs it)
COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction[_Parser]], None], Handler]] = {
    name: (PARSERS[name], handler) for name, handler in _HANDLERS.items()}
