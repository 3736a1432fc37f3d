"""The forwarder over SSH, end to end: Pebble -> remote :http_port -> 301 -> central server.

The "remote" host is 127.0.0.3: challtestsrv resolves the test names there and a fixture sshd
listens there; the central challenge server is the session's drop-dir server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lematt.testing.pebble import PebbleRig
from lematt.testing.sshd import ClientKit
from tests.e2e.conftest import REPO_ROOT, MakeConf, RunLematt, SshdHostFactory
from tests.fakes import BlackHole

REMOTE = "127.0.0.3"


def forwarder_pids(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", "--", marker], capture_output=True, text=True,
                           check=False)
    return found.stdout.split()


def accepts(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((address, port)) == 0


def wait_until(condition: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)  # bounded polling for a condition in another process
    pytest.fail(f"timed out waiting until {what}")


@contextlib.contextmanager
def names_at(pebble: PebbleRig, names: list[str], address: str) -> Iterator[None]:
    for name in names:
        pebble.add_a(name, address)
    try:
        yield
    finally:
        for name in names:
            pebble.clear_a(name)


def write_actions(tmp_path: Path, sections: dict[str, dict[str, object]]) -> None:
    text = ""
    for name, keys in sections.items():
        text += f"[{name}]\n" + "".join(
            f"{k}: {v if isinstance(v, str) else json.dumps(v)}\n" for k, v in keys.items())
    (tmp_path / "actions.conf").write_text(text)


def test_forwarder_serves_rsa_and_ec_of_two_lines_then_is_gone(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host(REMOTE)
    baseurl = f"http://127.0.0.1:{pebble.http_port}"
    fwd = {"ssh": host.alias, "forward": baseurl, "listen": f"{REMOTE}:{pebble.http_port}"}
    write_actions(tmp_path, {"remote": {"domains": "one.fwd.test two.fwd.test",
                                        "prepare": [fwd]}})
    conf = make_conf(tmp_path, "one.fwd.test www\ntwo.fwd.test\nlocal.fwd.test\n",
                     extra_conf={"sshConfig": ssh_client_kit.ssh_config})
    with names_at(pebble, ["one.fwd.test", "www.one.fwd.test", "two.fwd.test"], REMOTE):
        result = run_lematt("--test", "--config", conf)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(f"forwarder on {host.alias} ready") == 1
    for label in ("one.fwd.test (RSA)", "one.fwd.test (EC)", "two.fwd.test (RSA)",
                  "two.fwd.test (EC)", "local.fwd.test (EC)"):
        assert f"renewed {label}" in result.stdout
    assert not accepts(REMOTE, pebble.http_port)
    assert forwarder_pids(f"--baseurl {baseurl}") == []


def test_forwarder_that_cannot_bind_fails_only_its_orders(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host(REMOTE)
    fwd = {"ssh": host.alias, "forward": f"http://127.0.0.1:{pebble.http_port}",
           "listen": f"{REMOTE}:{pebble.http_port}"}
    write_actions(tmp_path, {"remote": {"domains": "busy.fwd.test", "prepare": [fwd]}})
    conf = make_conf(tmp_path, "busy.fwd.test\nfree.fwd.test\n", extra_conf={
        "sshConfig": ssh_client_kit.ssh_config, "keyTypes": "ec"})
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((REMOTE, pebble.http_port))
        squatter.listen()
        with names_at(pebble, ["busy.fwd.test"], REMOTE):
            result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    assert result.returncode == 1
    assert "renewed free.fwd.test (EC)" in result.stdout
    assert "busy.fwd.test (EC)" in result.stderr
    assert f"the forwarder on {host.alias}" in result.stderr
    assert "in use" in result.stderr and "orders were not started" in result.stderr
    assert not (tmp_path / "test/cert/busy.fwd.test-cert-combined.prime256v1.test.pem").exists()


def test_lematt_killed_while_forwarder_runs_forwarder_exits_by_itself(
        tmp_path: Path, make_conf: MakeConf, pebble: PebbleRig,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host(REMOTE)
    hole = BlackHole("127.0.0.8")
    baseurl = f"http://127.0.0.8:{hole.port}"
    fwd = {"ssh": host.alias, "forward": baseurl, "listen": f"{REMOTE}:{pebble.http_port}"}
    write_actions(tmp_path, {"default": {"prepare": [fwd]}})
    conf = make_conf(tmp_path, "killed.fwd.test\n", extra_conf={
        "sshConfig": ssh_client_kit.ssh_config, "keyTypes": "ec"})
    try:
        with names_at(pebble, ["killed.fwd.test"], REMOTE):
            lematt = subprocess.Popen(
                [sys.executable, "-m", "lematt", "--test", "--config", str(conf)],
                cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(lambda: accepts(REMOTE, pebble.http_port), "the forwarder listens")
                assert forwarder_pids(f"--baseurl {baseurl}") != []
            finally:
                lematt.send_signal(signal.SIGKILL)
                lematt.wait(timeout=30)
            wait_until(lambda: forwarder_pids(f"--baseurl {baseurl}") == [],
                       "the forwarder has exited")
            assert not accepts(REMOTE, pebble.http_port)
    finally:
        hole.close()
