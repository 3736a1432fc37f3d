"""Hostile config files: refused at load with one ``ConfigError`` naming the file and line.

The same inputs through the command line (exit 2, one line, no traceback) are in
tests/e2e/faults/test_hostile_config.py.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lematt.config import load
from lematt.config.loader import NAME_MAX, TEMP_NAME_EXTRA
from lematt.config.source import read_yaml
from lematt.errors import ConfigError
from lematt.execution.sftp import TEMP_INFIX
from lematt.store.atomic import temp_name

MINIMAL = "[config]\naccountKey = account.key\nchallengeDropDir = /var/www/acme\n"


def laughs(levels: int, width: int, *, key: str = "lol") -> str:
    """A "billion laughs" YAML document: level N lists level N-1 ``width`` times, so it
    stands for ``width ** levels`` strings. Kept modest here (the test must stay fast even
    if the refusal broke); nine levels of nine took minutes and gigabytes before."""
    lines = [f"{key}0: &l0 [\"ha\", \"ha\"]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"{key}{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def load_error(conf_dir: Path, conf_name: str = "lematt.conf") -> str:
    with pytest.raises(ConfigError) as info:
        load(conf_dir / conf_name)
    return str(info.value)


def test_billion_laughs_lematt_conf_yaml_is_refused_at_its_first_anchor(tmp_path: Path) -> None:
    (tmp_path / "lematt.conf.yaml").write_text(
        "accountKey: account.key\nchallengeDropDir: /var/www/acme\n" + laughs(4, 10))
    # No domains file: the refusal comes before anything else is read.
    message = load_error(tmp_path, "lematt.conf.yaml")
    assert message.startswith(f"{tmp_path.resolve() / 'lematt.conf.yaml'}:3: YAML anchor '&l0'")
    assert "not supported" in message


def test_billion_laughs_actions_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lematt.conf").write_text(MINIMAL)
    (tmp_path / "domains").write_text("example.com\n")
    (tmp_path / "actions.yaml").write_text(
        "default:\n  update: [\"true\"]\n" + laughs(4, 10, key="x"))
    message = load_error(tmp_path)
    assert message.startswith(f"{tmp_path.resolve() / 'actions.yaml'}:3: YAML anchor '&l0'")


@pytest.mark.parametrize(("text", "line", "what"), [
    ("a: &x 1\n", 1, "anchor '&x'"),  # an anchor alone is refused too: outright
    ("a: 1\nb: *x\n", 2, "alias '*x'"),  # an alias to nothing is still an alias
    ("a: &x [*x]\n", 1, "anchor '&x'"),  # a recursive one
    ("a: &x {k: v}\nb:\n  <<: *x\n", 1, "anchor '&x'"),
])
def test_any_anchor_or_alias_is_refused_with_its_line(text: str, line: int, what: str) -> None:
    with pytest.raises(ConfigError) as info:
        read_yaml(Path("f.yaml"), text)
    assert str(info.value).startswith(f"f.yaml:{line}: YAML {what}")


def test_ampersand_and_star_in_values_are_fine() -> None:
    block = read_yaml(Path("f.yaml"), 'cmd: "cp a* b && echo &x *y"\nplain: a & b * c\n')
    assert [e.value for e in block.entries] == ["cp a* b && echo &x *y", "a & b * c"]


# --- NUL characters ------------------------------------------------------------------------

def test_nul_in_an_ini_account_key_is_refused_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "lematt.conf").write_text(
        "[config]\nchallengeDropDir = /var/www/acme\naccountKey = acc\x00ount.key\n")
    (tmp_path / "domains").write_text("example.com\n")
    assert load_error(tmp_path) == (
        f"{tmp_path.resolve() / 'lematt.conf'}:3: a NUL character (byte 0) in the config "
        "file; remove it")


def test_nul_escape_in_a_yaml_path_is_refused_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "lematt.conf.yaml").write_text(
        'challengeDropDir: /var/www/acme\naccountKey: "acc\\0ount.key"\n')
    (tmp_path / "domains").write_text("example.com\n")
    message = load_error(tmp_path, "lematt.conf.yaml")
    assert message.startswith(f"{tmp_path.resolve() / 'lematt.conf.yaml'}:2: a NUL character")


@pytest.mark.parametrize(("name", "text", "line"), [
    ("domains", "example.com\nwww.exa\x00mple.com\n", 2),
    ("actions.conf", '[default]\nupdate: ["reload\x00 nginx"]\n', 2),
    ("actions.yaml", 'default:\n  update: ["reload\\0 nginx"]\n', 2),
])
def test_nul_in_domains_or_actions_is_refused(tmp_path: Path, name: str, text: str,
                                              line: int) -> None:
    (tmp_path / "lematt.conf").write_text(MINIMAL)
    (tmp_path / "domains").write_text("example.com\n")
    (tmp_path / name).write_text(text)
    message = load_error(tmp_path)
    assert message.startswith(f"{tmp_path.resolve() / name}:{line}: a NUL character")


# --- file names over 255 bytes -------------------------------------------------------------

def _name_of_length(length: int) -> str:
    """A valid DNS name of exactly ``length`` characters (labels of at most 63)."""
    labels, left = [], length - len(".example.com")
    while left > 0:
        size = min(63, left)
        if left - size == 1:  # a label cannot be empty: leave room for at least "x"
            size -= 2
        labels.append("x" * size)
        left -= size + 1
    name = ".".join(labels) + ".example.com"
    assert len(name) == length
    return name


def test_the_longest_line_that_fits_loads_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    # Default tags: rsa2048 and prime256v1 (the longer one decides).
    limit = NAME_MAX - len("-cert-combined.") - len(".test.pem") - len("prime256v1") \
        - TEMP_NAME_EXTRA
    (tmp_path / "lematt.conf").write_text(MINIMAL)
    fits, too_long = _name_of_length(limit), _name_of_length(limit + 1)
    (tmp_path / "domains").write_text(f"example.com\n{fits}\n")
    assert [line.primary for line in load(tmp_path / "lematt.conf").lines] == [
        "example.com", fits]
    (tmp_path / "domains").write_text(f"example.com\n{fits}\n{too_long}\n")
    message = load_error(tmp_path)
    assert message.startswith(f"{tmp_path.resolve() / 'domains'}:3: the file names of this "
                              "certificate would be too long")

    # The limit is the real one: the longest name lematt would create for the line that
    # fits can be created, and one byte more cannot (on this file system, like most).
    cert = tmp_path / f"{fits}-cert-combined.prime256v1.test.pem"
    longest = temp_name(cert)
    assert len(longest.name) == NAME_MAX
    longest.touch()
    with pytest.raises(OSError) as info:
        temp_name(cert.with_name("x" + cert.name)).touch()
    assert info.value.errno == errno.ENAMETOOLONG


def test_a_line_of_many_names_is_refused_and_counts_the_others(tmp_path: Path) -> None:
    (tmp_path / "lematt.conf").write_text(MINIMAL)
    many = "example.com " + " ".join(f"host-number-{i}" for i in range(20))
    (tmp_path / "domains").write_text(f"ok.example.com\n{many}\nb.{many}\n")
    message = load_error(tmp_path)
    assert message.startswith(f"{tmp_path.resolve() / 'domains'}:2: ")
    assert "(and 1 more line(s))" in message and "split the line" in message


def test_temp_name_extra_covers_every_temporary_name_lematt_makes() -> None:
    """The config's headroom follows the store's and the SFTP upload's temporary names."""
    final = "a" * 20
    assert len(temp_name(Path(final)).name) - len(final) <= TEMP_NAME_EXTRA
    sftp_temp = f".{final}{TEMP_INFIX}{os.urandom(4).hex()}"  # lematt.execution.sftp
    assert len(sftp_temp) - len(final) <= TEMP_NAME_EXTRA
