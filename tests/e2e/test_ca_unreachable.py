"""A CA that does not answer costs one attempt an hour, not one per cron run.

Certificates issued by the real Pebble; then the config names a CA directory on a closed
loopback port (a CA that was never read: no facts kept for it). The first run says the
renewal information was not refreshed and plans from the stored certificates; the next run,
within the hour, does not try again (no message, nothing due, exit 0).
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.e2e.conftest import MakeConf, RunLematt

NOT_REFRESHED = "renewal information was not refreshed"


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released, by this test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_ca_is_asked_again_only_after_an_hour(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "unreach.example.com\n", extra_conf={"keyTypes": "ec"})
    first = run_lematt("--test", "--config", conf)
    assert first.returncode == 0, first.stderr

    dead = f"https://127.0.0.1:{_closed_port()}/dir"
    conf = make_conf(tmp_path, "unreach.example.com\n",
                     extra_conf={"keyTypes": "ec", "directoryTest": dead})
    tried = run_lematt("--test", "--config", conf)
    assert tried.returncode == 0, tried.stderr
    assert NOT_REFRESHED in tried.stdout + tried.stderr
    assert "current" in tried.stdout

    again = run_lematt("--test", "--config", conf)
    assert again.returncode == 0, again.stderr
    assert NOT_REFRESHED not in again.stdout + again.stderr
    assert "current" in again.stdout
