"""--processes: one run's orders spread over order processes, against the real Pebble (how
jobs are dealt out: tests/unit/test_shards.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from lematt.testing.pebble import PebbleRig
from tests.e2e.conftest import REPO_ROOT, ChallengeDrop, MakeConf, RunLematt
from tests.e2e.test_run import assert_pair, tree


def test_sharded_run_issues_every_certificate_and_one_failure_stays_one(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig) -> None:
    names = [f"s{i}.shard.test" for i in range(5)]
    # Nothing listens on 127.0.0.9: the CA cannot validate this one name.
    pebble.add_a("fails.shard.test", "127.0.0.9")
    try:
        conf = make_conf(tmp_path, "".join(f"{n} www\n" for n in names) + "fails.shard.test\n",
                         extra_conf={"keyTypes": "ec"})
        result = run_lematt("--test", "--processes", "2", "--config", conf)
    finally:
        pebble.clear_a("fails.shard.test")
    assert result.returncode == 1
    assert "FAILED: fails.shard.test (EC)" in result.stderr
    assert result.stderr.count("FAILED") == 1, result.stderr
    t = tree(conf)
    for name in names:
        assert f"renewed {name} (EC)" in result.stdout
        stem = f"{name}_www.{name}"
        assert_pair(t["key"] / f"{stem}-key.prime256v1.test.pem",
                    t["cert"] / f"{stem}-cert-combined.prime256v1.test.pem")
    journals = sorted((conf.parent / "test/.journal").iterdir())
    assert [j.name for j in journals] == ["pending", "pending-0", "pending-1"]
    assert all(j.stat().st_size == 0 for j in journals)


def test_sharded_run_with_challenge_listen_is_served_by_the_main_process(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig) -> None:
    names = [f"l{i}.shard.test" for i in range(4)]
    for name in names:
        pebble.add_a(name, "127.0.0.2")
    try:
        conf = make_conf(tmp_path, "".join(f"{n}\n" for n in names), extra_conf={
            "challengeDropDir": None, "keyTypes": "ec", "processes": 3,
            "challengeListen": f"127.0.0.2:{pebble.http_port}"})
        result = run_lematt("--test", "--config", conf)  # processes from lematt.conf
    finally:
        for name in names:
            pebble.clear_a(name)
    assert result.returncode == 0, result.stderr
    assert sorted(j.name for j in (conf.parent / "test/.journal").iterdir()) == [
        "pending", "pending-0", "pending-1", "pending-2"]
    t = tree(conf)
    for name in names:
        assert_pair(t["key"] / f"{name}-key.prime256v1.test.pem",
                    t["cert"] / f"{name}-cert-combined.prime256v1.test.pem")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def test_sigterm_stops_the_order_processes_and_removes_their_tokens(
        tmp_path: Path, make_conf: MakeConf, pebble: PebbleRig,
        challenge_server: ChallengeDrop) -> None:
    """SIGTERM while both order processes wait on validations that never answer: they stop
    (their stdin closes), remove their token files, and the run says it was interrupted."""
    from tests.fakes import BlackHole

    tokens_before = set(challenge_server.drop_dir.iterdir())
    names = ["a.stuck-shard.test", "b.stuck-shard.test"]
    hole = BlackHole("127.0.0.8", pebble.http_port)
    for name in names:
        pebble.add_a(name, "127.0.0.8")
    try:
        conf = make_conf(tmp_path, "".join(f"{n}\n" for n in names),
                         extra_conf={"keyTypes": "ec"})
        lematt = subprocess.Popen(
            [sys.executable, "-m", "lematt", "--test", "--processes", "2", "--config",
             str(conf)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            for _ in range(600):
                if len(hole.clients) >= 2:
                    break
                time.sleep(0.05)  # bounded wait until both orders are in validation
            assert len(hole.clients) >= 2, "the CA never tried to validate"
            workers = _children(lematt.pid)
            assert len(workers) == 2
            lematt.send_signal(signal.SIGTERM)
            _out, err = lematt.communicate(timeout=60)
        finally:
            if lematt.poll() is None:
                lematt.kill()
    finally:
        for name in names:
            pebble.clear_a(name)
        hole.close()
    assert lematt.returncode == 130 and "interrupted" in err, err
    assert "Traceback" not in err
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().split()[2]
    assert set(challenge_server.drop_dir.iterdir()) == tokens_before
