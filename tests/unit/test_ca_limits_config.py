"""The config side of issue 10 section 4: ``caAllowedOrigins`` and ``runTimeout`` in
lematt.conf (INI and YAML), ``--deadline`` on the command line; bad values are one line
naming file, line and key (exit 2 before anything runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lematt.cli import build_parser
from lematt.config import load
from lematt.errors import ConfigError

BASE = "accountKey: account.key\nchallengeDropDir: challenges\n"


def _load(tmp_path: Path, extra: str, name: str = "lematt.conf") -> object:
    (tmp_path / "domains").write_text("example.com\n")
    path = tmp_path / name
    path.write_text(("[config]\n" if name == "lematt.conf" else "") + BASE + extra)
    return load(path).settings


def test_defaults_are_no_extra_origin_and_no_run_deadline(tmp_path: Path) -> None:
    settings = _load(tmp_path, "")
    assert settings.ca_allowed_origins == () and settings.run_timeout is None  # type: ignore


def test_ini_and_yaml_forms(tmp_path: Path) -> None:
    ini = _load(tmp_path, "caAllowedOrigins: https://a.example, https://b.example:8443\n"
                          "runTimeout: 900\n")
    assert ini.ca_allowed_origins == ("https://a.example:443",  # type: ignore[attr-defined]
                                      "https://b.example:8443")
    assert ini.run_timeout == 900.0  # type: ignore[attr-defined]
    yaml = _load(tmp_path, "caAllowedOrigins:\n  - https://a.example\n  - "
                           "https://b.example:8443\nrunTimeout: 900\n", "lematt.conf.yaml")
    assert yaml == ini


@pytest.mark.parametrize(("line", "why"), [
    ("caAllowedOrigins: http://cdn.example", "only allowed for a loopback test CA"),
    ("caAllowedOrigins: https://cdn.example/acme", "not an origin"),
    ("runTimeout: 0", "greater than 0"),
    ("runTimeout: soon", "is not a number"),
])
def test_bad_values_are_one_line_with_file_line_and_key(tmp_path: Path, line: str,
                                                        why: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, line + "\n")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'lematt.conf'}:4: {line.split(':')[0]}: ")
    assert why in message and "\n" not in message


def test_the_deadline_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["--test", "--deadline", "12.5"]).deadline == 12.5
    assert build_parser().parse_args(["--test"]).deadline is None
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["--test", "--deadline", bad])
        assert info.value.code == 2
    assert "--deadline: must be a number of seconds" in capsys.readouterr().err
