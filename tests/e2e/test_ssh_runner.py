"""SSH execution layer against real OpenSSH sshd on loopback (lematt.testing.sshd); parsing and
resolving destinations, without a server, is tests/unit/test_ssh_runner.py.

Each sshd listens on its own 127.0.0.N (one address = one host). Tests assert results and
order only; waits for a remote condition are bounded polls, never sleeps used as sync.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shlex
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from lematt.errors import RemoteError
from lematt.execution import ssh
from lematt.execution.ssh import SESSION_LABEL, SshPool, UploadFile
from lematt.execution.ssh_config import SshDestination
from lematt.testing import RUN_ID_ENV
from lematt.testing.sshd import ClientKit, make_ed25519_key
from tests.e2e.conftest import SSHD_PORT, SshdHostFactory

TIMEOUT = 30.0  # command timeout for commands that should finish at once
POLL_LIMIT = 10.0  # seconds a bounded poll may take before the test fails


def _destination(kit: ClientKit, text: str) -> SshDestination:
    return SshDestination.resolve(text, kit.ssh_config)


def _pids_with(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True,
                           check=False)
    return found.stdout.split()


def _wait_for(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition()`` (bounded in count and time) until it is true, else fail."""
    deadline = time.monotonic() + POLL_LIMIT
    for _ in range(int(POLL_LIMIT / 0.05)):
        if condition():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    pytest.fail(f"timed out waiting until {what}")


# --------------------------------------------------------------------------- commands


@pytest.mark.anyio
async def test_run_returns_output_and_status(sshd_host: SshdHostFactory,
                                             ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.2")
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        ok = await runner.run("echo hello; echo note >&2", timeout=TIMEOUT)
        failed = await runner.run("echo first >&2; echo 'disk full' >&2; exit 3",
                                  timeout=TIMEOUT)
    assert (ok.host, ok.command, ok.exit_status) == (host.alias, "echo hello; echo note >&2", 0)
    assert (ok.stdout, ok.stderr) == ("hello\n", "note\n")  # the pgid marker is gone
    assert not failed.ok and failed.exit_status == 3
    message = failed.describe_failure()
    assert message.startswith(f"{host.alias}: `echo first")
    assert "exited 3" in message and message.endswith("first | disk full")
    assert pool.connections_opened == 1


@pytest.mark.anyio
async def test_hanging_command_is_stopped_at_its_timeout(sshd_host: SshdHostFactory,
                                                         ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.2")
    marker = f"lematt-hang-{secrets.token_hex(6)}"
    # Two processes of the remote group carry the marker in their argv ($0 of each sh).
    command = (f"echo started; sh -c 'sleep 300; true' {marker}-a & "
               f"sh -c 'sleep 300; true' {marker}-b; true")
    async with SshPool() as pool:
        result = await pool.runner(_destination(ssh_client_kit, host.alias)).run(
            command, timeout=3.0)
    assert result.exit_status is None and result.stdout == "started\n"
    assert "timed out" in result.describe_failure()
    _wait_for(lambda: not _pids_with(marker), f"no process carries {marker}")


@pytest.mark.anyio
async def test_cancelled_run_stops_the_remote_command(sshd_host: SshdHostFactory,
                                                      ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.2")
    marker = f"lematt-cancel-{secrets.token_hex(6)}"
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(runner.run, f"sh -c 'sleep 300; true' {marker}",
                                            timeout=TIMEOUT * 10))
            await anyio.to_thread.run_sync(
                _wait_for, lambda: bool(_pids_with(marker)), f"{marker} runs")
            tg.cancel_scope.cancel()
    _wait_for(lambda: not _pids_with(marker), f"no process carries {marker}")


@pytest.mark.anyio
async def test_forced_command_key_with_open_session(sshd_host: SshdHostFactory,
                                                    ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.5", forced_command="echo forced")
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        session = await runner.open_session(timeout=TIMEOUT)
        # A command sent with such a key is ignored by sshd: the forced one runs instead.
        ignored = await runner.run("echo chosen-by-client", timeout=TIMEOUT)
    assert (session.ok, session.stdout, session.command) == (True, "forced\n", SESSION_LABEL)
    assert ignored.stdout == "forced\n"


@pytest.mark.anyio
async def test_background_sees_eof_when_the_context_ends(
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit, tmp_path: Path) -> None:
    host = sshd_host("127.0.0.2")
    marker = f"lematt-bg-{secrets.token_hex(6)}"
    done = tmp_path / "done"
    script = f"while read -r line; do :; done; echo eof > {shlex.quote(str(done))}"
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        async with runner.background(f"sh -c {shlex.quote(script)} {marker}"):
            await anyio.to_thread.run_sync(
                _wait_for, lambda: bool(_pids_with(marker)), f"{marker} runs")
            assert not done.exists()  # still reading its open stdin
        assert done.read_text() == "eof\n"  # it saw EOF and finished on its own
        assert not _pids_with(marker)
        # The connection is still good for later steps.
        assert (await runner.run("echo after", timeout=TIMEOUT)).stdout == "after\n"


@pytest.mark.anyio
async def test_background_ignoring_eof_is_stopped(sshd_host: SshdHostFactory,
                                                  ssh_client_kit: ClientKit,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssh, "STOP_GRACE_SECONDS", 0.5)  # the grace period is not under test
    host = sshd_host("127.0.0.2")
    marker = f"lematt-deaf-{secrets.token_hex(6)}"
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        async with runner.background(f"sh -c 'sleep 300; true' {marker} </dev/null"):
            await anyio.to_thread.run_sync(
                _wait_for, lambda: bool(_pids_with(marker)), f"{marker} runs")
    _wait_for(lambda: not _pids_with(marker), f"no process carries {marker}")


# --------------------------------------------------------------------------- connections


@pytest.mark.anyio
async def test_each_address_is_its_own_host(sshd_host: SshdHostFactory,
                                            ssh_client_kit: ClientKit) -> None:
    hosts = [sshd_host("127.0.0.2"), sshd_host("127.0.0.3")]
    seen: dict[str, str] = {}

    async def where(alias: str) -> None:
        # sshd sets SSH_CONNECTION="client_ip client_port server_ip server_port".
        result = await pool.runner(_destination(ssh_client_kit, alias)).run(
            "echo $SSH_CONNECTION", timeout=TIMEOUT)
        seen[alias] = " ".join(result.stdout.split()[2:])

    async with SshPool() as pool, anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(where, host.alias)
    assert seen == {host.alias: f"{host.address} {host.port}" for host in hosts}


@pytest.mark.anyio
async def test_rig_stop_ends_live_sessions(sshd_host: SshdHostFactory,
                                           ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.2")
    marker = f"lematt-rigstop-{secrets.token_hex(6)}"
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        async with runner.background(f"sh -c 'sleep 300; true' {marker}"):
            await anyio.to_thread.run_sync(
                _wait_for, lambda: bool(_pids_with(marker)), f"{marker} runs")
            listener = host.rig.pid
            await anyio.to_thread.run_sync(host.rig.stop)
            host.rig.stop()  # idempotent
            assert not _pids_with(marker)
            assert not Path(f"/proc/{listener}").exists()
        # The dead connection makes the background exit and the pool close quietly.


@pytest.mark.anyio
async def test_rig_passes_the_run_id_on_to_sessions(
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # sshd starts sessions with a fresh environment; .ci/run finds the suite's leftover
    # processes (a forwarder started over SSH among them) by this variable. Keep the value a
    # CI run has already set, so this test's sshd stays recognisable as the suite's.
    run_id = os.environ.get(RUN_ID_ENV) or f"rig-run-{secrets.token_hex(4)}"
    monkeypatch.setenv(RUN_ID_ENV, run_id)
    host = sshd_host("127.0.0.2")
    async with SshPool() as pool:
        result = await pool.runner(_destination(ssh_client_kit, host.alias)).run(
            f'printf %s "${RUN_ID_ENV}"', timeout=TIMEOUT)
    assert result.stdout == run_id


@pytest.mark.anyio
async def test_two_aliases_one_host_one_connection_per_destination(
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.3")
    second = ssh_client_kit.add_alias("reload-127-0-0-3", host.address, host.port)
    first_dest = _destination(ssh_client_kit, host.alias)
    second_dest = _destination(ssh_client_kit, second)
    written = _destination(ssh_client_kit, f"{host.user}@{host.address}:{host.port}")
    assert first_dest.host_key() == second_dest.host_key() == written.host_key()
    assert first_dest.host_key() == f"[127.0.0.3]:{host.port}"
    results: list[str] = []

    async def run(dest: SshDestination, text: str) -> None:
        result = await pool.runner(dest).run(f"echo {text}", timeout=TIMEOUT)
        results.append(result.stdout.strip())

    async with SshPool() as pool:
        async with anyio.create_task_group() as tg:  # first uses race for the connection
            for index in range(5):
                tg.start_soon(run, first_dest, f"first-{index}")
            tg.start_soon(run, second_dest, "second")
        await run(first_dest, "again")
    assert sorted(results) == sorted([f"first-{i}" for i in range(5)] + ["second", "again"])
    assert pool.connections_opened == 2
    assert host.rig.log_text().count("Accepted publickey") == 2


@pytest.mark.anyio
async def test_unknown_host_key_is_refused(sshd_host: SshdHostFactory,
                                           ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.4")
    ssh_client_kit.forget_host(host.address, host.port)
    async with SshPool() as pool:
        with pytest.raises(RemoteError) as caught:
            await pool.runner(_destination(ssh_client_kit, host.alias)).run("true")
    message = str(caught.value)
    assert f"host key for [127.0.0.4]:{host.port} is not in {ssh_client_kit.known_hosts}" \
        in message
    assert "ssh-keyscan" in message and message.startswith(host.alias)
    assert "Accepted publickey" not in host.rig.log_text()


@pytest.mark.anyio
async def test_changed_host_key_is_refused(sshd_host: SshdHostFactory,
                                           ssh_client_kit: ClientKit, tmp_path: Path) -> None:
    host = sshd_host("127.0.0.4")
    impostor = make_ed25519_key(tmp_path / "other_host_key", "other")
    ssh_client_kit.add_known_host(host.address, host.port, impostor)
    connections_before = host.rig.log_text().count("Connection from")  # readiness probes
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        with pytest.raises(RemoteError, match="does not match") as caught:
            await runner.run("true")
        # The host stays failed for the run: no second handshake is attempted.
        with pytest.raises(RemoteError, match="does not match"):
            await runner.run("true")
    assert "man-in-the-middle" in str(caught.value)
    assert f"[127.0.0.4]:{host.port}" in str(caught.value)
    assert host.rig.log_text().count("Connection from") == connections_before + 1
    assert "Accepted publickey" not in host.rig.log_text()


@pytest.mark.anyio
async def test_nothing_listening_is_a_remote_error(ssh_client_kit: ClientKit) -> None:
    dest = _destination(ssh_client_kit, f"127.0.0.9:{SSHD_PORT}")
    async with SshPool(connect_timeout=5.0) as pool:
        with pytest.raises(RemoteError, match=re.escape(f"127.0.0.9:{SSHD_PORT}")) as caught:
            await pool.runner(dest).run("true")
    assert "refused" in str(caught.value)
    assert pool.connections_opened == 0


@pytest.mark.anyio
async def test_silent_listener_times_out(ssh_client_kit: ClientKit) -> None:
    # A TCP peer that never sends an SSH banner (a hung sshd, a black-holing middlebox):
    # the kernel completes the handshake from the backlog, nothing more ever arrives.
    with socket.socket() as silent:
        # Another test's sshd may have used this address:port; its connections can still be
        # in TIME_WAIT, which only SO_REUSEADDR lets a new listener ignore.
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.7", SSHD_PORT))
        silent.listen(1)
        dest = _destination(ssh_client_kit, f"127.0.0.7:{SSHD_PORT}")
        async with SshPool(connect_timeout=1.0) as pool:
            with pytest.raises(RemoteError, match="timed out") as caught:
                await pool.runner(dest).run("true")
    assert str(caught.value).startswith(f"127.0.0.7:{SSHD_PORT} ([127.0.0.7]:{SSHD_PORT})")


# --------------------------------------------------------------------------- uploads


def _tree(directory: Path) -> dict[str, tuple[str, int | str]]:
    """name -> ("link", target) or ("file", mode) for everything in ``directory``."""
    found: dict[str, tuple[str, int | str]] = {}
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        if path.is_symlink():
            found[entry] = ("link", os.readlink(path))
        else:
            found[entry] = ("file", stat.S_IMODE(path.lstat().st_mode))
    return found


@pytest.mark.anyio
async def test_upload_lands_atomically_with_names_modes_and_symlinks(
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit, tmp_path: Path) -> None:
    host = sshd_host("127.0.0.6")
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    (local / "www.example.test.rsa.crt").write_text("new cert\n")
    (local / "www.example.test.rsa.key").write_text("new key\n")
    # Old deployment: a file and a link that the upload must replace, not append to.
    (remote / "www.example.test.rsa.crt").write_text("old cert\n")
    (remote / "www.example.test.crt").symlink_to("elsewhere.crt")
    (remote / "unrelated.conf").write_text("keep\n")
    files = [
        UploadFile(local / "www.example.test.rsa.crt", "www.example.test.rsa.crt", 0o644),
        UploadFile(local / "www.example.test.rsa.key", "www.example.test.rsa.key", 0o600),
        UploadFile(local / "www.example.test.crt", "www.example.test.crt",
                   symlink_target="www.example.test.rsa.crt"),
    ]
    async with SshPool() as pool:
        await pool.runner(_destination(ssh_client_kit, host.alias)).upload(
            files, str(remote), timeout=TIMEOUT)
    assert _tree(remote) == {
        "unrelated.conf": ("file", 0o644),
        "www.example.test.crt": ("link", "www.example.test.rsa.crt"),
        "www.example.test.rsa.crt": ("file", 0o644),
        "www.example.test.rsa.key": ("file", 0o600),
    }
    assert (remote / "www.example.test.crt").read_text() == "new cert\n"
    assert (remote / "www.example.test.rsa.key").read_text() == "new key\n"


@pytest.mark.anyio
async def test_failed_upload_replaces_nothing_and_leaves_no_temp_files(
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit, tmp_path: Path) -> None:
    host = sshd_host("127.0.0.6")
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    (local / "a.crt").write_text("new\n")
    (remote / "a.crt").write_text("old\n")
    missing = local / "b.key"  # the second file cannot be read: nothing may change
    async with SshPool() as pool:
        runner = pool.runner(_destination(ssh_client_kit, host.alias))
        with pytest.raises(RemoteError, match=re.escape(str(missing))) as local_failure:
            await runner.upload([UploadFile(local / "a.crt", "a.crt", 0o644),
                                 UploadFile(missing, "b.key", 0o600)], str(remote),
                                timeout=TIMEOUT)
        absent = tmp_path / "no-such-dir"
        # The missing directory is found when its stale temporary names are looked for.
        with pytest.raises(RemoteError, match=re.escape(f"listing {absent}")) as remote_failure:
            await runner.upload([UploadFile(local / "a.crt", "a.crt")], str(absent),
                                timeout=TIMEOUT)
    assert str(local_failure.value).startswith(host.alias)
    assert "No such file" in str(remote_failure.value)
    assert _tree(remote) == {"a.crt": ("file", 0o644)}
    assert (remote / "a.crt").read_text() == "old\n"
