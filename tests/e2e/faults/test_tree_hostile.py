"""Hostile trees, with lematt run as a process: umask 000, a conf dir or tree that others own or
can write, forged journals and planted symlinks. Each is refused with one line naming the
path (exit 2 for unsafe ownership or modes, as for any config error; exit 1 for a tree it
cannot use), before anything changes - or, for the umask, simply has no effect."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lematt.store.journal import Journal
from tests.e2e.conftest import MakeConf, RunLematt
from tests.e2e.faults.pairs import check_pairs

DOMAINS = "hostile.tree.test www\n"


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A directory outside the tree whose contents nothing may change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text("precious\n")
    yield outside
    assert [p.name for p in outside.iterdir()] == ["shadow"]
    assert (outside / "shadow").read_text() == "precious\n"


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_under_umask_000_every_directory_and_file_gets_its_own_mode(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path / "conf", DOMAINS, extra_conf={"keyTypes": "ec"})
    previous = os.umask(0)
    try:
        result = run_lematt("--test", "--config", conf)
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "conf" / "test"
    modes = {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
             for p in root.rglob("*") if not p.is_symlink()}
    for path, mode in modes.items():
        assert mode & 0o022 == 0, f"{path} is writable by others: {mode:04o}"
    assert modes["key"] == modes[".staging"] == modes[".journal"] == 0o700
    assert modes["cert"] == modes["csr"] == modes[".pairs"] == 0o755
    # The keys themselves: regular files in .pairs' versions, under their upstream names.
    keys = [m for p, m in modes.items()
            if p.startswith(".pairs/") and "-key." in p.rsplit("/", 1)[-1]]
    assert keys and set(keys) == {0o600}
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "conf" / ".lematt.lock").stat().st_mode) == 0o600
    assert len(check_pairs(root / "cert", root / "key")) == 3


@pytest.mark.parametrize(("where", "bits", "why"), [
    ("conf", 0o002, "writable by every user"),
    ("conf", 0o020, "writable by its group"),
    ("conf/actions.conf", 0o020, "writable by its group"),
    ("conf/test", 0o002, "writable by every user"),
    ("conf/test/key", 0o020, "writable by its group"),
])
def test_a_conf_dir_or_tree_others_can_write_is_refused(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, where: str, bits: int,
        why: str) -> None:
    actions = "[default]\nupdate: [\"true\"]\n"
    conf = make_conf(tmp_path / "conf", DOMAINS, actions_text=actions,
                     extra_conf={"keyTypes": "ec"})
    assert run_lematt("--test", "--config", conf).returncode == 0
    path = tmp_path / where
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | bits)
    before = sorted(p.name for p in (tmp_path / "conf" / "test" / "cert").iterdir())
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(path) in line and why in line
    assert sorted(p.name for p in (tmp_path / "conf" / "test" / "cert").iterdir()) == before
    if bits == 0o020:  # an operator's group setup: allowed when asked for
        conf = make_conf(tmp_path / "conf", DOMAINS, actions_text=actions,
                         extra_conf={"keyTypes": "ec", "allowGroupWritable": True})
        allowed = run_lematt("--test", "--config", conf)
        assert allowed.returncode == 0, allowed.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("where", ["conf", "conf/test", "conf/test/.journal"])
def test_a_conf_dir_or_tree_owned_by_another_user_is_refused(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, where: str) -> None:
    conf = make_conf(tmp_path / "conf", DOMAINS, extra_conf={"keyTypes": "ec"})
    (tmp_path / "conf" / "test").mkdir()
    (tmp_path / "conf" / "test" / ".journal").mkdir(mode=0o700)
    os.chown(tmp_path / where, 65534, -1)
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(tmp_path / where) in line and "owned by uid 65534" in line
    assert not (tmp_path / "conf" / "test" / "cert").exists()


def test_a_forged_journal_is_refused_and_touches_nothing(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, victim: Path) -> None:
    """A journal naming a path outside the tree (relative with '..', or absolute): recovery
    would have renamed a file of the attacker's over it. Also the legacy *.json records,
    which carry no checksum."""
    conf = make_conf(tmp_path / "conf", DOMAINS, extra_conf={"keyTypes": "ec"})
    assert run_lematt("--test", "--config", conf).returncode == 0
    root = tmp_path / "conf" / "test"
    planted = root / "key" / ".x.lematt-tmp-1"
    planted.write_text("pwned\n")
    journal = Journal(root / ".journal" / "pending")
    legacy = root / ".journal" / "0001.json"
    journal.write({"renames": [["key/.x.lematt-tmp-1", "../../outside/shadow"]]})
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 1
    assert "refusing" in one_line(result.stderr) and str(journal.path) in result.stderr
    journal.clear()
    legacy.write_text(f'{{"renames": [["key/.x.lematt-tmp-1", "{victim}/shadow"]]}}')
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 1
    assert "refusing" in one_line(result.stderr) and str(legacy) in result.stderr
    assert planted.read_text() == "pwned\n"


@pytest.mark.parametrize("name", [".staging", "key", ".pairs"])
def test_a_symlink_where_the_tree_keeps_a_directory_is_refused(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, victim: Path,
        name: str) -> None:
    conf = make_conf(tmp_path / "conf", DOMAINS, extra_conf={"keyTypes": "ec"})
    (tmp_path / "conf" / "test").mkdir()
    (tmp_path / "conf" / "test" / name).symlink_to(victim)
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"{name} is a symlink" in line and "never follows" in line
