"""The command line's shape: the run as before, and commands that take --test/--prod,
--config and --debug before or after their name (no network: parsing only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lematt.cli import COMMANDS, build_parser, main


def parse(*argv: str) -> dict[str, object]:
    return vars(build_parser().parse_args(argv))


def test_the_plain_run_parses_as_before() -> None:
    args = parse("--test", "--config", "x/lematt.conf", "--parallel", "5", "--cron")
    assert args["command"] is None and args["test"] is True and args["cron"] is True
    assert args["config"] == Path("x/lematt.conf") and args["parallel"] == 5
    assert parse("--prod")["test"] is False
    # Not given: looked up later (lematt.locate), so no default here.
    assert parse("--prod")["config"] is None


@pytest.mark.parametrize("argv", [
    ("--test", "--config", "c.conf", "account", "show"),
    ("account", "--test", "--config", "c.conf", "show"),
    ("account", "show", "--test", "--config", "c.conf"),
])
def test_common_options_go_anywhere(argv: tuple[str, ...]) -> None:
    args = parse(*argv)
    assert (args["command"], args["action"], args["test"], args["config"]) == (
        "account", "show", True, Path("c.conf"))


def test_revoke_arguments() -> None:
    args = parse("revoke", "a.example.com", "b.example.com", "--prod", "--reason",
                 "keyCompromise", "--key-type", "ec")
    assert args["names"] == ["a.example.com", "b.example.com"]
    assert (args["test"], args["reason"], args["key_type"]) == (False, "keyCompromise", "ec")
    assert parse("revoke", "a.example.com", "--test")["reason"] == "unspecified"


@pytest.mark.parametrize("argv", [
    (), ("account", "show"), ("--test", "account"), ("--test", "revoke"),
    ("--test", "revoke", "a", "--reason", "cACompromise"), ("--test", "--prod"),
    ("--test", "account", "update-contact", "not-an-address"), ("--test", "nosuchcommand"),
])
def test_usage_errors_exit_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("lematt: ")


def test_every_command_has_a_parser_and_a_handler() -> None:
    assert set(COMMANDS) == {"plan", "account", "revoke", "verify", "status"}
    assert all(callable(b) and callable(h) for b, h in COMMANDS.values())


def test_verify_arguments() -> None:
    args = parse("verify", "a.example.com", "--test", "--json", "out.json")
    assert (args["names"], args["test"], args["json"]) == (["a.example.com"], True,
                                                           Path("out.json"))
    args = parse("--prod", "--json", "v.json", "verify")
    assert (args["names"], args["test"], args["json"]) == ([], False, Path("v.json"))
