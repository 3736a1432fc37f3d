"""Crash tests: lematt SIGKILLed at each step of storing and deploying, against the real
Pebble and a real sshd, through ``lematt.failpoint`` (``LEMATT_FAILPOINT``, test-only).

After each kill every key+cert pair on disk (the tree's, and a host's) must match, and the
next run must converge: the interrupted store completed (or, killed before its journal, not
visible at all), every deploy the stored pairs owe carried out - also when no certificate
is due any more - nothing pending, no staged or temporary file left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lematt.testing.sshd import ClientKit
from tests.e2e.conftest import REPO_ROOT, MakeConf, RunLematt, SshdHostFactory
from tests.e2e.faults.pairs import COUNTS, check_pairs, leftovers

DOMAINS = "crash.store.test\nsan.crash.store.test www\n"
CNS = ("crash.store.test", "san.crash.store.test")
RENEW = {"keyTypes": "ec", "reauthorizeDays": 100000, "alwaysGenerateNewKeys": True}


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    print(f"\nstore crash tests: {COUNTS['kills']} kills survived, "
          f"{COUNTS['pairs']} pairs checked")


def killed(result: Any) -> None:
    assert result.returncode == -9, (result.returncode, result.stdout, result.stderr)
    COUNTS["kills"] += 1


def to_legacy(root: Path) -> None:
    """The tree as the original lematt (or lematt before .pairs) leaves it: regular files."""
    for sub in ("key", "cert"):
        for path in (root / sub).iterdir():
            if path.is_symlink() and os.readlink(path).startswith("../.pairs/"):
                data, mode = path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
                path.unlink()
                path.write_bytes(data)
                os.chmod(path, mode)
    shutil.rmtree(root / ".pairs")


def assert_converged(root: Path) -> None:
    assert not (root / ".deploy-pending.json").exists(), (
        (root / ".deploy-pending.json").read_text())
    assert list((root / ".staging").iterdir()) == []
    assert all(p.stat().st_size == 0 for p in (root / ".journal").glob("pending*"))
    pairs = root / ".pairs"
    versions = {p.name for p in pairs.iterdir() if not p.is_symlink()}
    assert versions == {os.readlink(p) for p in pairs.iterdir() if p.is_symlink()}
    assert leftovers(root / "key") == leftovers(root / "cert") == []


STORE_POINTS = [
    ("versioned", "store.staged"),      # files staged, no journal: the store never happened
    ("versioned", "store.journaled"),   # journal written, nothing renamed
    ("versioned", "store.rename:1"),    # between the renames of a commit
    ("versioned", "store.rename:3"),
    ("versioned", "store.switched:1"),  # one pair switched, the batch's next not yet
    ("versioned", "store.owed"),        # owed deploys written, journal not yet cleared
    ("versioned", "run.deploy"),        # every pair stored, no deploy step has run
    ("legacy", "store.rename:2"),       # a tree of regular files, moving into .pairs
    ("legacy", "store.migrated"),       # upstream names are links to the old pair now
    ("legacy", "store.switched:1"),
]


@pytest.mark.parametrize(("start", "point"), STORE_POINTS)
def test_sigkill_at_a_store_step_leaves_matching_pairs_and_the_next_run_deploys_them(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, start: str,
        point: str) -> None:
    log = tmp_path / "deployed.log"
    actions = f"[default]\nupdate: [\"echo deployed DOMAINS_CN >> '{log}'\"]\n"
    root = tmp_path / "test"
    cert_dir, key_dir = root / "cert", root / "key"

    def conf(**extra: Any) -> Path:
        return make_conf(tmp_path, DOMAINS, actions_text=actions,
                         extra_conf={"keyTypes": "ec", **extra})

    first = run_lematt("--test", "--config", conf())
    assert first.returncode == 0, first.stderr
    assert log.read_text().splitlines() == [f"deployed {' '.join(CNS)}"]
    if start == "legacy":
        to_legacy(root)
    before = check_pairs(cert_dir, key_dir)
    assert len(before) == 4  # two upstream names and two per-name links

    killed(run_lematt("--test", "--config", conf(**RENEW),
                      env={"LEMATT_FAILPOINT": point}))
    check_pairs(cert_dir, key_dir)
    assert log.read_text().splitlines() == [f"deployed {' '.join(CNS)}"]  # not deployed

    # The next run, nothing due any more (the stored certificates are fresh): it completes
    # the interrupted store and carries out exactly the deploys the stored pairs owe.
    again = run_lematt("--test", "--config", conf())
    assert again.returncode == 0, again.stderr
    after = check_pairs(cert_dir, key_dir)
    assert "renewed" not in again.stdout
    changed = [cn for cn in CNS if after[f"{cn}-cert-combined.prime256v1.test.pem"]
               != before[f"{cn}-cert-combined.prime256v1.test.pem"]]
    if point == "store.staged":
        assert changed == [] and "completed an interrupted store" not in again.stdout
    else:
        assert changed
    if point == "run.deploy":  # (a batch-level point may come before the other order ends)
        assert changed == list(CNS)
    deploys = log.read_text().splitlines()
    assert deploys[1:] == ([f"deployed {' '.join(changed)}"] if changed else [])
    assert_converged(root)
    # And it stays converged: a third run has nothing to do and owes nothing.
    third = run_lematt("--test", "--cron", "--config", conf())
    assert (third.returncode, third.stdout, third.stderr) == (0, "", "")


def test_sigterm_during_the_deploy_leaves_it_owed_and_the_next_run_carries_it_out(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    """SIGTERM (a systemd stop, a cron timeout) while the update runs: the run stops its
    command and exits; the pairs it stored are still owed and the next run deploys them."""
    fifo, go, log = tmp_path / "started", tmp_path / "go", tmp_path / "deployed.log"
    os.mkfifo(fifo)
    update = (f"if [ -e '{go}' ]; then echo deployed DOMAINS_CN >> '{log}'; "
              f"else echo started > '{fifo}'; sleep 311; fi")
    actions = f"[default]\nupdate: [{json.dumps(update)}]\n"
    conf = make_conf(tmp_path, DOMAINS, actions_text=actions, extra_conf={"keyTypes": "ec"})
    lematt = subprocess.Popen([sys.executable, "-m", "lematt", "--test", "--config", str(conf)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        # Opening the FIFO waits for the update to open it: no polling, no sleep.
        with fifo.open() as started:
            assert started.readline() == "started\n"
        lematt.send_signal(signal.SIGTERM)
        _out, err = lematt.communicate(timeout=120)
    finally:
        if lematt.poll() is None:
            os.killpg(lematt.pid, signal.SIGKILL)
            lematt.communicate(timeout=30)
    assert lematt.returncode == 130 and "interrupted" in err, err
    COUNTS["kills"] += 1
    stored = check_pairs(tmp_path / "test" / "cert", tmp_path / "test" / "key")
    assert len(stored) == 4 and not log.exists()
    go.touch()
    again = run_lematt("--test", "--config", conf)
    assert again.returncode == 0, again.stderr
    assert "renewed" not in again.stdout and "retrying the pending deploy" in again.stdout
    assert log.read_text() == f"deployed {' '.join(CNS)}\n"
    assert check_pairs(tmp_path / "test" / "cert", tmp_path / "test" / "key") == stored
    assert_converged(tmp_path / "test")


def _ssh_conf(make_conf: MakeConf, tmp_path: Path, kit: ClientKit,
              actions: dict[str, Any], **extra: Any) -> Path:
    conf = make_conf(tmp_path, DOMAINS, extra_conf={"sshConfig": kit.ssh_config,
                                                    "keyTypes": "ec", **extra})
    (tmp_path / "actions.conf").write_text("".join(
        f"[{section}]\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in keys.items())
        for section, keys in actions.items()))
    return conf


@pytest.mark.parametrize("point", ["sftp.staged", "sftp.pair:1"])
def test_sigkill_mid_upload_leaves_matching_pairs_on_the_host_and_the_next_run_finishes(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit, point: str) -> None:
    host = sshd_host("127.0.0.12")
    certs, keys, log = tmp_path / "remote-certs", tmp_path / "remote-keys", tmp_path / "log"
    certs.mkdir()
    keys.mkdir()
    actions = {"default": {
        "uploadCerts": [{"ssh": host.alias, "to": str(certs)}],
        "uploadKeys": [{"ssh": host.alias, "to": str(keys)}],
        "update": [{"ssh": host.alias, "run": f"echo reload >> {log}"}],
    }}
    first = run_lematt("--test", "--config",
                       _ssh_conf(make_conf, tmp_path, ssh_client_kit, actions))
    assert first.returncode == 0, first.stderr
    before = check_pairs(certs, keys)
    assert len(before) == 4 and log.read_text() == "reload\n"

    killed(run_lematt("--test", "--config",
                      _ssh_conf(make_conf, tmp_path, ssh_client_kit, actions, **RENEW),
                      env={"LEMATT_FAILPOINT": point}))
    on_host = check_pairs(certs, keys)
    if point == "sftp.staged":
        assert on_host == before
        assert leftovers(certs) and leftovers(keys)  # what the next run must clear away
    else:
        assert on_host != before  # one pair is new, the other still old; each matches
    assert log.read_text() == "reload\n"

    again = run_lematt("--test", "--config",
                       _ssh_conf(make_conf, tmp_path, ssh_client_kit, actions))
    assert again.returncode == 0, again.stderr
    assert "renewed" not in again.stdout and "retrying the pending deploy" in again.stdout
    local = check_pairs(tmp_path / "test" / "cert", tmp_path / "test" / "key")
    assert check_pairs(certs, keys) == local != before
    assert leftovers(certs) == leftovers(keys) == []
    assert log.read_text() == "reload\nreload\n"
    assert_converged(tmp_path / "test")
