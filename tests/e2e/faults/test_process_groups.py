"""Stopping a command stops all of it: a child that ignores SIGTERM does not outlive it.

Each command here starts ``(trap '' TERM; exec sleep N) &``: a child that ignores SIGTERM (an
ignored signal stays ignored across exec) and writes nothing to the command's output, then
lets the shell itself end (at EOF, at SIGTERM, or on its own). Stopping only until the shell
has gone left that child running, reparented to init, after lematt had exited 0. Real
processes throughout: lematt with a prepare command against Pebble, ``LocalRunner``, and
``SshRunner`` against the real sshd rig (its "remote" processes are on this machine, so the
test can look at them in /proc).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from lematt.execution import local, ssh
from lematt.execution.local import LocalRunner
from lematt.execution.ssh import SshPool
from lematt.execution.ssh_config import SshDestination
from lematt.testing.sshd import ClientKit
from tests.e2e.conftest import REPO_ROOT, MakeConf, SshdHostFactory

POLL_LIMIT = 10.0  # seconds a bounded wait for a pid file may take


def _deaf_child(pidfile: Path, seconds: int, then: str) -> str:
    """Shell text: start a child that ignores SIGTERM (it writes its pid to ``pidfile`` once
    it does, then becomes ``sleep <seconds>``, same pid), then run ``then``."""
    child = f"trap '' TERM; echo $$ > {shlex.quote(str(pidfile))}; exec sleep {seconds}"
    return f"sh -c {shlex.quote(child)} >/dev/null 2>&1 </dev/null & {then}"


def _wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + POLL_LIMIT
    for _ in range(int(POLL_LIMIT / 0.05)):
        if condition():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    pytest.fail(f"timed out waiting until {what}")


def _pid(pidfile: Path) -> int:
    _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), f"{pidfile} is written")
    return int(pidfile.read_text())


def _running(pid: int, seconds: int) -> bool:
    """Whether ``pid`` is still our child (its command line names ``sleep <seconds>``, before
    and after the exec) and not a zombie (a zombie has ended; only its parent, init after
    the reparenting, has not collected it yet)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return f"sleep {seconds}".encode() in cmdline and state not in ("Z", "X")


def _kill(pid: int, seconds: int) -> None:
    """Test cleanup: end a child the code under test left behind (only if it is ours)."""
    if _running(pid, seconds):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- lematt


def test_prepare_child_ignoring_sigterm_is_gone_after_the_run(
        tmp_path: Path, make_conf: MakeConf) -> None:
    seconds = 3301
    pidfile = tmp_path / "child.pid"
    # A prepare string runs without a shell (as in the original lematt): a script forks.
    script = tmp_path / "prepare.sh"
    script.write_text(f"#!/bin/sh\n{_deaf_child(pidfile, seconds, 'wait')}\n")
    script.chmod(0o755)
    (tmp_path / "actions.conf").write_text(f"[default]\nprepare: [{json.dumps(str(script))}]\n")
    conf = make_conf(tmp_path, "deaf.groups.test\n", extra_conf={"keyTypes": "ec"})
    result = subprocess.run([sys.executable, "-m", "lematt", "--test", "--config", str(conf)],
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=300)
    child = int(pidfile.read_text())
    try:
        assert result.returncode == 0, result.stderr
        assert "renewed deaf.groups.test (EC)" in result.stdout
        assert not _running(child, seconds)  # lematt waited until its group was empty
    finally:
        _kill(child, seconds)


# --------------------------------------------------------------------------- LocalRunner


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # The grace period is not under test; what is stopped at its end is.
    monkeypatch.setattr(local, "STOP_GRACE_SECONDS", 0.5)
    monkeypatch.setattr(ssh, "STOP_GRACE_SECONDS", 0.5)


@pytest.mark.anyio
@pytest.mark.usefixtures("short_grace")
async def test_local_run_at_its_timeout_stops_the_whole_group(tmp_path: Path) -> None:
    seconds = 3302
    pidfile = tmp_path / "child.pid"
    result = await LocalRunner().run(_deaf_child(pidfile, seconds, "wait"), timeout=1)
    child = _pid(pidfile)
    try:
        assert result.exit_status is None  # stopped at its timeout
        assert not _running(child, seconds)
    finally:
        _kill(child, seconds)


@pytest.mark.anyio
@pytest.mark.usefixtures("short_grace")
async def test_local_run_that_ends_leaves_nothing_behind(tmp_path: Path) -> None:
    seconds = 3303
    pidfile = tmp_path / "child.pid"
    # The shell ends once the child ignores SIGTERM (bounded: 5 s), not before: stopping
    # earlier would end the child before it could ignore anything.
    ready = f"i=0; while [ ! -s {shlex.quote(str(pidfile))} ] && [ $i -lt 500 ]; " \
        "do sleep 0.01; i=$((i + 1)); done; exit 0"
    result = await LocalRunner().run(_deaf_child(pidfile, seconds, ready), timeout=30)
    child = _pid(pidfile)
    try:
        assert result.ok
        assert not _running(child, seconds)
    finally:
        _kill(child, seconds)


@pytest.mark.anyio
@pytest.mark.usefixtures("short_grace")
async def test_local_background_stops_the_whole_group(tmp_path: Path) -> None:
    seconds = 3304
    pidfile = tmp_path / "child.pid"
    async with LocalRunner().background(_deaf_child(pidfile, seconds, "wait")):
        child = await anyio.to_thread.run_sync(_pid, pidfile)
        await anyio.to_thread.run_sync(_wait_for, lambda: _running(child, seconds), "it runs")
    try:
        assert not _running(child, seconds)
    finally:
        _kill(child, seconds)


# --------------------------------------------------------------------------- SshRunner


def _destination(kit: ClientKit, text: str) -> SshDestination:
    return SshDestination.resolve(text, kit.ssh_config)


@pytest.mark.anyio
@pytest.mark.usefixtures("short_grace")
async def test_remote_run_at_its_timeout_stops_the_whole_group(
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit, tmp_path: Path) -> None:
    seconds = 3305
    pidfile = tmp_path / f"child-{secrets.token_hex(4)}.pid"
    host = sshd_host("127.0.0.2")
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        result = await runner.run(_deaf_child(pidfile, seconds, "wait"), timeout=1)
        child = _pid(pidfile)
        try:
            assert result.exit_status is None
            assert not _running(child, seconds)
            # The connection is still good for later steps.
            assert (await runner.run("echo after", timeout=30)).stdout == "after\n"
        finally:
            _kill(child, seconds)


@pytest.mark.anyio
@pytest.mark.usefixtures("short_grace")
async def test_remote_background_ending_at_eof_leaves_nothing_behind(
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit, tmp_path: Path) -> None:
    """The forwarder's shape: it ends by itself at EOF, but a child it started would not."""
    seconds = 3306
    pidfile = tmp_path / f"child-{secrets.token_hex(4)}.pid"
    host = sshd_host("127.0.0.2")
    command = _deaf_child(pidfile, seconds, "cat >/dev/null")
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        async with runner.background(command) as process:
            child = await anyio.to_thread.run_sync(_pid, pidfile)
            await anyio.to_thread.run_sync(_wait_for, lambda: _running(child, seconds),
                                           "it runs")
            assert process.exit_status is None
        try:
            assert process.exit_status == 0  # the shell ended by itself at EOF
            assert not _running(child, seconds)
        finally:
            _kill(child, seconds)
