"""A CA that stops answering mid-run: every job ends with a clear error, the run ends.

A real Pebble of its own (the shared one must keep answering other tests), frozen with
SIGSTOP by a prepare command - i.e. after lematt has read the directory and found its
account, exactly when the orders begin.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from lematt.testing.pebble import PebbleRig, start_pebble
from tests.e2e.conftest import PORT_OFFSET, RunLematt, write_conf


@pytest.fixture
def own_pebble(tmp_path: Path) -> PebbleRig:
    o = PORT_OFFSET + 700
    rig = start_pebble(tmp_path / "pebble", acme_port=14000 + o, management_port=15000 + o,
                       http_port=5002 + o, tls_port=5001 + o, dns_port=8053 + o,
                       challtestsrv_port=8055 + o)
    try:
        yield rig  # type: ignore[misc]
    finally:
        os.kill(rig.pebble_pid(), signal.SIGCONT)  # stop() must be able to end it
        rig.stop()


def test_frozen_ca_gives_one_error_per_job_and_the_run_ends(
        tmp_path: Path, own_pebble: PebbleRig, run_lematt: RunLematt) -> None:
    conf = write_conf(tmp_path / "conf", {
        "accountKey": tmp_path / "account.key",
        "directoryTest": own_pebble.directory_url, "caBundle": own_pebble.ca_bundle,
        "challengeListen": f"127.0.0.1:{own_pebble.http_port}", "keyTypes": "ec",
        "acmeRequestTimeout": 2, "orderTimeout": 20,
    }, "one.frozen.test\ntwo.frozen.test\n",
        actions_text=f'[default]\nprepare: ["kill -STOP {own_pebble.pebble_pid()}"]\n')
    result = run_lematt("--test", "--config", conf, timeout=120)
    assert result.returncode == 1
    failures = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert len(failures) == 2, result.stderr
    for name in ("one.frozen.test (EC)", "two.frozen.test (EC)"):
        assert any(name in f and "no answer from the CA" in f for f in failures), failures
    assert "Traceback" not in result.stderr
