"""The quiet-run memo against the real Pebble: a cron run after a quiet full run ends
before it reads the config (``python -X importtime`` shows lematt.config is never
imported); a new domains line, a deleted certificate or a run without ``--cron`` is a full
run that does what is due."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import REPO_ROOT, MakeConf, RunLematt


def _cron_run_loads_config(conf: Path) -> tuple[bool, subprocess.CompletedProcess[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lematt", "--test",
                           "--cron", "--config", str(conf)], cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    return "lematt.config" in proc.stderr, proc


def test_a_quiet_tree_ends_cron_runs_early_until_something_changes(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "quiet.example.com\n", extra_conf={"keyTypes": "ec"})
    assert run_lematt("--test", "--config", conf).returncode == 0
    full = run_lematt("--test", "--cron", "--config", conf)
    assert (full.returncode, full.stdout) == (0, "")
    assert (tmp_path / "test" / ".memo" / "quiet").exists()

    loaded, early = _cron_run_loads_config(conf)
    assert early.returncode == 0 and not loaded, early.stderr[-2000:]

    # A new line: the memo is not trusted, the line is ordered.
    with open(tmp_path / "domains", "a") as f:
        f.write("quiet2.example.com\n")
    loaded, proc = _cron_run_loads_config(conf)
    assert proc.returncode == 0 and loaded
    assert "quiet2.example.com" in proc.stdout
    assert list((tmp_path / "test" / "cert").glob("quiet2.example.com-*"))

    # Quiet again, then a certificate deleted: renewed by the next cron run.
    assert run_lematt("--test", "--cron", "--config", conf).stdout == ""
    assert not _cron_run_loads_config(conf)[0]
    cert = next((tmp_path / "test" / "cert").glob("quiet.example.com-*"))
    os.unlink(cert)
    loaded, proc = _cron_run_loads_config(conf)
    assert proc.returncode == 0 and loaded and cert.exists(), proc.stdout


def test_a_run_without_cron_always_checks_in_full(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "full.example.com\n", extra_conf={"keyTypes": "ec"})
    assert run_lematt("--test", "--config", conf).returncode == 0
    assert run_lematt("--test", "--cron", "--config", conf).stdout == ""
    cert = next((tmp_path / "test" / "cert").glob("full.example.com-*"))
    cert.write_text("damaged in place\n")  # its directory keeps its mtime
    proc = run_lematt("--test", "--config", conf)
    assert proc.returncode == 0, proc.stderr
    assert "renewed" in proc.stdout
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
