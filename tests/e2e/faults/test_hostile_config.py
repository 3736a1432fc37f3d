"""Hostile input through the command line: one line on stderr, never a traceback.

Config and usage problems exit 2 before anything changes (no tree, no account key is
created); a tree or summary that cannot be written is run-time I/O and exits 1. None of these
runs reaches a CA (the directory URL points at a closed loopback port): each is refused first.

Read-only directories need a process without CAP_DAC_OVERRIDE, which root has: as root, the
lematt process drops it (and CAP_DAC_READ_SEARCH) from its capability bounding set before
exec, so the mode bits bind it as they bind any other user.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT
from tests.unit.test_config_hostile import laughs

_PR_CAPBSET_DROP = 24  # <linux/prctl.h>
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2  # <linux/capability.h>


def _without_dac_override() -> None:
    """preexec_fn: as root, lose the capabilities that ignore file modes (see the docstring)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def lematt(*args: str | Path, preexec: Callable[[], None] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lematt", "--test", *map(str, args)],
                          cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, preexec_fn=preexec)


def one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The single stderr line of a refused run (its exit status checked)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == status, result.stderr
    return lines[0]


def conf_dir(tmp_path: Path, *, domains: str = "site.hostile.test\n",
             conf: str | None = None, conf_name: str = "lematt.conf") -> Path:
    """A conf dir whose config loads (unless the test breaks it); returns lematt.conf."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / conf_name
    path.write_text(conf if conf is not None else (
        "[config]\naccountKey = account.key\n"
        f"challengeDropDir = {tmp_path / 'drop'}\n"
        "directoryTest = https://127.0.0.1:9/directory\n"))
    (tmp_path / "domains").write_text(domains)
    return path


def untouched(path: Path) -> None:
    """Nothing was created beside the config: no tree, no account key, no lock."""
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        p for p in ("lematt.conf", "lematt.conf.yaml", "domains", "actions.yaml",
                    "actions.conf") if (path.parent / p).exists())


def test_billion_laughs_lematt_conf_yaml(tmp_path: Path) -> None:
    conf = conf_dir(tmp_path, conf_name="lematt.conf.yaml", conf=(
        "accountKey: account.key\nchallengeDropDir: drop\n" + laughs(5, 10)))
    line = one_line(lematt("--config", conf), 2)
    assert line.startswith(f"lematt: {conf.resolve()}:3: YAML anchor '&l0'")
    untouched(conf)


def test_billion_laughs_actions_yaml(tmp_path: Path) -> None:
    conf = conf_dir(tmp_path)
    (tmp_path / "actions.yaml").write_text("default:\n  update: [x]\n" + laughs(5, 10))
    line = one_line(lematt("--config", conf), 2)
    assert line.startswith(f"lematt: {tmp_path.resolve() / 'actions.yaml'}:3: YAML anchor")
    untouched(conf)


def test_nul_in_account_key(tmp_path: Path) -> None:
    conf = conf_dir(tmp_path, conf=(
        "[config]\nchallengeDropDir = drop\naccountKey = acc\x00ount.key\n"
        "directoryTest = https://127.0.0.1:9/directory\n"))
    line = one_line(lematt("--config", conf), 2)
    assert line == (f"lematt: {conf.resolve()}:3: a NUL character (byte 0) in the config file; "
                    "remove it")
    untouched(conf)


def test_nul_escape_in_a_yaml_account_key(tmp_path: Path) -> None:
    conf = conf_dir(tmp_path, conf_name="lematt.conf.yaml", conf=(
        'challengeDropDir: drop\naccountKey: "acc\\0ount.key"\n'))
    line = one_line(lematt("--config", conf), 2)
    assert line.startswith(f"lematt: {conf.resolve()}:2: a NUL character")
    untouched(conf)


def test_a_line_with_too_long_file_names(tmp_path: Path) -> None:
    many = "many.hostile.test " + " ".join(f"host-number-{i}" for i in range(20))
    conf = conf_dir(tmp_path, domains=f"ok.hostile.test\n{many}\nother.hostile.test\n")
    line = one_line(lematt("--config", conf), 2)
    assert line.startswith(f"lematt: {tmp_path.resolve() / 'domains'}:2: the file names of "
                           "this certificate would be too long")
    untouched(conf)


@pytest.mark.parametrize("where", ["missing", "file"])
def test_json_in_a_directory_that_cannot_hold_it(tmp_path: Path, where: str) -> None:
    conf = conf_dir(tmp_path / "conf")
    parent = tmp_path / "summaries"
    if where == "file":
        parent.write_text("not a directory\n")
    line = one_line(lematt("--config", conf, "--json", parent / "run.json"), 2)
    assert line.startswith(f"lematt: --json {parent / 'run.json'}: directory {parent} ")
    untouched(conf)


def test_json_in_a_read_only_directory(tmp_path: Path) -> None:
    conf = conf_dir(tmp_path / "conf")
    parent = tmp_path / "summaries"
    parent.mkdir(mode=0o555)
    line = one_line(lematt("--config", conf, "--json", parent / "run.json",
                           preexec=_without_dac_override), 2)
    assert line == (f"lematt: --json {parent / 'run.json'}: directory {parent} is not "
                    "writable by this user")


def test_json_that_cannot_be_written_at_the_end(tmp_path: Path) -> None:
    """Run-time I/O: the directory is fine, the file system refuses the name when the run
    writes its summary (nothing was due, so no CA was needed): exit 1, one line."""
    conf = conf_dir(tmp_path / "conf", domains="")
    target = tmp_path / ("s" * 250 + ".json")  # its temporary name passes 255 bytes
    result = lematt("--config", conf, "--json", target)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"lematt: cannot write the --json summary {target}: File name too long")


def test_read_only_conf_dir_before_the_first_run(tmp_path: Path) -> None:
    conf = conf_dir(tmp_path / "conf")
    conf.parent.chmod(0o555)
    try:
        line = one_line(lematt("--config", conf, preexec=_without_dac_override), 1)
    finally:
        conf.parent.chmod(0o755)
    assert line.startswith("lematt: ") and str(conf.parent.resolve()) in line
    assert "Permission denied" in line
    untouched(conf)


def test_read_only_tree_before_the_first_run(tmp_path: Path) -> None:
    conf = conf_dir(tmp_path / "conf")
    tree = conf.parent / "test"
    tree.mkdir(mode=0o555)
    try:
        line = one_line(lematt("--config", conf, preexec=_without_dac_override), 1)
    finally:
        tree.chmod(0o755)
    # The tree's first directory is what cannot be made (the store opens the tree itself
    # without following links, then makes key/, cert/, ... inside it).
    assert line.startswith(f"lematt: cannot create {tree.resolve()}")
    assert "Permission denied" in line
    assert list(tree.iterdir()) == []


def test_tree_that_is_a_file(tmp_path: Path) -> None:
    conf = conf_dir(tmp_path / "conf")
    (conf.parent / "test").write_text("not a directory\n")
    line = one_line(lematt("--config", conf), 1)
    assert line.startswith(
        f"lematt: cannot open the certificate tree {conf.parent.resolve() / 'test'}")
    assert line.endswith("Not a directory")
