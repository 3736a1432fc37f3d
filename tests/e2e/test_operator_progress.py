"""The live status line end to end: lematt against Pebble with its output on a pseudo-terminal
shows it and keeps every normal line whole; with pipes not one byte of it appears."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

from lematt.progress import CLEAR
from tests.e2e.conftest import LEMATT_TIMEOUT, REPO_ROOT, MakeConf, RunLematt

DOMAINS = "a.progress.test\nb.progress.test www\nc.progress.test\n"
ACTIONS = '[default]\nupdate: ["true"]\n'


def run_on_terminal(*args: str | os.PathLike[str]) -> tuple[int, str]:
    """Run ``python -m lematt <args>`` with stdout and stderr on one pseudo-terminal (as in
    a person's shell); returns the exit status and everything written to the terminal."""
    master, slave = os.openpty()
    # Raw output: the terminal would turn each "\n" into "\r\n", and the test looks for the
    # status line's own "\r".
    tty.setraw(slave)
    proc = subprocess.Popen([sys.executable, "-m", "lematt", *map(str, args)], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + LEMATT_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: every writer of the terminal is gone
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        else:
            raise AssertionError(f"lematt {args} did not finish in {LEMATT_TIMEOUT:.0f} s")
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        os.close(master)
    return status, b"".join(chunks).decode()


def test_on_a_terminal_the_status_line_shows_and_lines_stay_whole(
        tmp_path: Path, make_conf: MakeConf) -> None:
    conf = make_conf(tmp_path, DOMAINS, actions_text=ACTIONS)
    status, text = run_on_terminal("--test", "--config", conf)
    assert status == 0, text
    assert CLEAR + "orders 0/6: 0 renewed, 0 failed" in text
    assert CLEAR + "deploy 0/1 hosts done, 0 failed: local 0/1" in text
    lines = text.split("\n")
    # What is left on each terminal line after its last erase is a normal line, whole.
    shown = [line.rsplit(CLEAR, 1)[-1] for line in lines]
    for name in ("a.progress.test", "b.progress.test", "c.progress.test"):
        for kind in ("RSA", "EC"):
            assert any(s.startswith(f"[TEST] renewed {name} ({kind}): valid until ")
                       for s in shown), shown
    assert "[TEST] ran [default] update: `true`" in shown
    assert not any(s.startswith(("orders ", "deploy ")) for s in shown)
    assert all("\r" not in s and "\x1b" not in s for s in shown)
    # The status line is erased at the end: nothing of it is left on the terminal.
    assert shown[-1] == ""


def test_without_a_terminal_or_under_cron_nothing_of_it_is_written(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, DOMAINS, actions_text=ACTIONS)
    piped = run_lematt("--test", "--config", conf)
    assert piped.returncode == 0, piped.stderr
    assert "renewed a.progress.test (RSA)" in piped.stdout
    for output in (piped.stdout, piped.stderr):
        assert "\r" not in output and "\x1b" not in output
    (tmp_path / "domains").write_text(DOMAINS + "d.progress.test\n")
    status, text = run_on_terminal("--test", "--cron", "--config", conf)
    assert status == 0, text
    assert "renewed d.progress.test (EC)" in text
    assert "\r" not in text and "\x1b" not in text
