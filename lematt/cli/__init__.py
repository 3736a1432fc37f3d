"""Command line (``parser``: the grammar; ``commands``: the commands; ``entry``:
the run's ``main``): ``lematt (--test | --prod) [--config PATH] [--parallel N] [--processes N]
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

from lematt.cli.commands import COMMANDS
from lematt.cli.entry import main
from lematt.cli.parser import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
    build_parser,
)

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_LOCKED", "EXIT_OK",
           "EXIT_USAGE", "build_parser", "main"]
