"""The command line's grammar: the run's flags, each command's parser, ``--help`` with
examples and exit codes. Nothing is imported here beyond argparse until a value needs
checking, so that parsing a cron run's arguments stays cheap.

Contract: ``build_parser(commands)`` returns the parser (``commands=False``: without the
command parsers, the cron run's path); ``PARSERS`` maps each command's name to the function
that adds its parser; usage errors exit 2 (``EXIT_USAGE``) with one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_LOCKED = 75  # EX_TEMPFAIL (sysexits.h): cron wrappers and systemd treat it as "try later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C


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


# command name -> adds its parser to the subparsers (lematt.cli.commands pairs each with its
# handler).
PARSERS: dict[str, Callable[[argparse._SubParsersAction[_Parser]], None]] = {
    "plan": _plan_parser,
    "account": _account_parser,
    "revoke": _revoke_parser,
    "verify": _verify_parser,
    "status": _status_parser,
}


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
    for builder in PARSERS.values():
        builder(sub)
    return p


