"""The quiet-run memo (lematt.store.quiet): trusted only while every input is unchanged,
the moment not reached and the memo is lematt's own; anything else means a full run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lematt.store import quiet

NOW = 1_800_000_000.0


def _conf(tmp_path: Path) -> tuple[Path, list[Path], Path]:
    conf_dir = tmp_path / "conf"
    tree = conf_dir / "test"
    for sub in ("key", "cert", "csr", ".journal"):
        (tree / sub).mkdir(parents=True)
    files = [conf_dir / "lematt.conf", conf_dir / "domains"]
    for f in files:
        f.write_text("x\n")
    (tree / "cert" / "a.pem").write_text("cert\n")
    return conf_dir, files, tree


def _written(tmp_path: Path, until: float = NOW + 3600) -> tuple[Path, list[Path], Path]:
    conf_dir, files, tree = _conf(tmp_path)
    assert quiet.write_memo(files[0], files, conf_dir, tree, until, NOW)
    assert quiet.memo_says_quiet(files[0], True, NOW + 60)
    return conf_dir, files, tree


def test_an_unchanged_tree_is_quiet_until_the_moment_and_a_day_at_most(
        tmp_path: Path) -> None:
    _conf_dir, files, _tree = _written(tmp_path, until=NOW + 10 * 86400)
    assert not quiet.memo_says_quiet(files[0], False, NOW + 60)  # the other tree
    assert quiet.memo_says_quiet(files[0], True, NOW + 86400 - 2)
    assert not quiet.memo_says_quiet(files[0], True, NOW + 86400)
    _conf_dir2, files2, _tree2 = _written(tmp_path / "b", until=NOW + 3600)
    assert not quiet.memo_says_quiet(files2[0], True, NOW + 3600)


def test_nothing_is_written_for_a_moment_already_near(tmp_path: Path) -> None:
    conf_dir, files, tree = _conf(tmp_path)
    assert not quiet.write_memo(files[0], files, conf_dir, tree, NOW + 0.5, NOW)
    assert not quiet.memo_says_quiet(files[0], True, NOW)


@pytest.mark.parametrize("change", [
    "append to domains", "replace lematt.conf", "new actions file", "store a certificate",
    "delete a key", "new journal", "new pairs directory", "tree record written",
])
def test_any_change_of_an_input_ends_the_memo(tmp_path: Path, change: str) -> None:
    conf_dir, files, tree = _written(tmp_path)
    if change == "append to domains":
        with open(files[1], "a") as f:  # in place: the file's own identity changes
            f.write("b.example.com\n")
    elif change == "replace lematt.conf":
        new = conf_dir / "lematt.conf.new"
        new.write_text("x\n")
        os.rename(new, files[0])
    elif change == "new actions file":
        (conf_dir / "actions.yaml").write_text("{}\n")
    elif change == "store a certificate":
        tmp = tree / "cert" / ".a.tmp"
        tmp.write_text("new\n")
        os.rename(tmp, tree / "cert" / "a.pem")
    elif change == "delete a key":
        (tree / "key" / "k.pem").write_text("k\n")  # (this alone already changes key/)
    elif change == "new journal":
        (tree / ".journal" / "pending").write_text("j\n")
    elif change == "new pairs directory":
        (tree / ".pairs").mkdir()
    else:
        (tree / ".deploy-pending.json").write_text("{}\n")
    assert not quiet.memo_says_quiet(files[0], True, NOW + 60)


def test_another_version_or_config_path_is_not_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir, files, _tree = _written(tmp_path)
    other = conf_dir / "other.conf"
    other.write_text("x\n")
    assert not quiet.memo_says_quiet(other, True, NOW + 60)
    monkeypatch.setattr(quiet.lematt, "__version__", "99.0")
    assert not quiet.memo_says_quiet(files[0], True, NOW + 60)


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": 1}', b"\0" * 10,
                                     b" " * (70 * 1024)])
def test_a_damaged_or_foreign_memo_means_a_full_run(tmp_path: Path, content: bytes) -> None:
    _conf_dir, files, tree = _written(tmp_path)
    (tree / ".memo" / "quiet").write_bytes(content)
    assert not quiet.memo_says_quiet(files[0], True, NOW + 60)


def test_a_forged_memo_naming_no_inputs_is_not_trusted(tmp_path: Path) -> None:
    _conf_dir, files, tree = _written(tmp_path)
    memo_path = tree / ".memo" / "quiet"
    memo = json.loads(memo_path.read_text())
    memo["inputs"] = []
    memo_path.write_text(json.dumps(memo))
    assert not quiet.memo_says_quiet(files[0], True, NOW + 60)


def test_symlinks_are_neither_read_nor_written_through(tmp_path: Path) -> None:
    conf_dir, files, tree = _written(tmp_path)
    memo_path = tree / ".memo" / "quiet"
    real = tmp_path / "elsewhere"
    os.rename(memo_path, real)
    memo_path.symlink_to(real)
    assert not quiet.memo_says_quiet(files[0], True, NOW + 60)

    conf_dir, files, tree = _conf(tmp_path / "b")
    target = tmp_path / "b-target"
    target.mkdir()
    (tree / ".memo").symlink_to(target)
    assert not quiet.write_memo(files[0], files, conf_dir, tree, NOW + 3600, NOW)
    assert list(target.iterdir()) == []


def test_clearing_ends_the_memo(tmp_path: Path) -> None:
    _conf_dir, files, tree = _written(tmp_path)
    quiet.clear_memo(tree)
    assert not quiet.memo_says_quiet(files[0], True, NOW + 60)
    quiet.clear_memo(tree)  # nothing there: no error


def test_a_write_cut_short_by_a_kill_leaves_nothing_behind_the_next_one(tmp_path: Path) -> None:
    conf_dir, files, tree = _written(tmp_path)
    leftover = tree / ".memo" / ".quiet.lematt-tmp-0badf00d"
    leftover.write_text("half")
    other = tree / ".memo" / "not-ours"
    other.write_text("x")
    assert quiet.write_memo(files[0], files, conf_dir, tree, NOW + 3600, NOW)
    assert not leftover.exists() and other.exists()
    assert quiet.memo_says_quiet(files[0], True, NOW + 60)
