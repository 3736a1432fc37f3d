"""The test rig itself: real Pebble, real challtestsrv DNS, the static http-01 server, and
``python -m lematt.testing.pebble``."""

from __future__ import annotations

import configparser
import json
import os
import re
import select
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from lematt.testing.pebble import (
    LOOPBACK,
    PebbleRig,
    RigError,
    StaticChallengeServer,
    start_pebble,
)
from tests.e2e.conftest import PORT_OFFSET, ChallengeDrop, MakeConf


def _opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with _opener().open(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_directory_answers_over_verified_https(pebble: PebbleRig) -> None:
    with _opener(pebble.ssl_context()).open(pebble.directory_url, timeout=5) as response:
        directory = json.loads(response.read())
    for key in ("newNonce", "newAccount", "newOrder"):
        assert directory[key].startswith("https://127.0.0.1:")


def test_directory_is_not_trusted_without_ca_bundle(pebble: PebbleRig) -> None:
    # Proves the check above really verifies: the system trust store must reject Pebble.
    with pytest.raises(urllib.error.URLError) as info:
        _opener(ssl.create_default_context()).open(pebble.directory_url, timeout=5)
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


def test_add_a_and_clear_a_change_what_pebble_resolves(pebble: PebbleRig) -> None:
    name = "rig-dns.example.test"
    assert pebble.lookup(name) == [LOOPBACK]
    assert pebble.lookup(name, "AAAA") == []  # no IPv6: Pebble validates over IPv4 only
    try:
        pebble.add_a(name, "127.0.0.3")
        assert pebble.lookup(name) == ["127.0.0.3"]
        pebble.add_a(name, "127.0.0.4")  # replaces, does not append
        assert pebble.lookup(name) == ["127.0.0.4"]
        assert pebble.lookup("other.example.test") == [LOOPBACK]
    finally:
        pebble.clear_a(name)
    assert pebble.lookup(name) == [LOOPBACK]


def test_add_a_refuses_non_loopback(pebble: PebbleRig) -> None:
    with pytest.raises(ValueError, match="loopback"):
        pebble.add_a("rig-dns.example.test", "192.0.2.1")


def test_static_challenge_server_serves_tokens_and_404s_the_rest(tmp_path: Path) -> None:
    (tmp_path / "tok-EN_123").write_bytes(b"tok-EN_123.thumbprint")
    (tmp_path / "not.a.token").write_bytes(b"secret")
    # Port 0: the kernel picks a free one, so this test never fights the session server.
    with StaticChallengeServer(tmp_path, LOOPBACK, 0) as server:
        base = f"http://{LOOPBACK}:{server.port}"
        assert _get(f"{base}/.well-known/acme-challenge/tok-EN_123") == (
            200, b"tok-EN_123.thumbprint")
        for path in ("/.well-known/acme-challenge/missing",
                     "/.well-known/acme-challenge/not.a.token",
                     "/.well-known/acme-challenge/../tok-EN_123",
                     "/.well-known/acme-challenge/",
                     "/tok-EN_123"):
            assert _get(base + path)[0] == 404, path
        assert ("/.well-known/acme-challenge/tok-EN_123", 200) in server.hits
    with pytest.raises(urllib.error.URLError):
        _opener().open(f"{base}/.well-known/acme-challenge/tok-EN_123", timeout=5)


def test_session_challenge_server_listens_on_pebbles_http_port(
        pebble: PebbleRig, challenge_server: ChallengeDrop) -> None:
    token = "rig-session-token"
    (challenge_server.drop_dir / token).write_text("answer")
    try:
        assert _get(f"http://{LOOPBACK}:{pebble.http_port}/.well-known/acme-challenge/"
                    f"{token}") == (200, b"answer")
    finally:
        (challenge_server.drop_dir / token).unlink()


def test_second_rig_on_other_ports_with_nonce_rejection_stops_cleanly(tmp_path: Path) -> None:
    o = PORT_OFFSET + 100  # clear of the session rig
    rig = start_pebble(tmp_path, acme_port=14000 + o, management_port=15000 + o,
                       http_port=5002 + o, tls_port=5001 + o, dns_port=8053 + o,
                       challtestsrv_port=8055 + o, nonce_reject_percent=100,
                       cert_validity_seconds=864000)
    try:
        assert rig.directory_url == f"https://127.0.0.1:{14000 + o}/dir"
        assert rig.lookup("x.example.test") == [LOOPBACK]
        log = rig.pebble_log.read_text()
        assert "reject 100% of good nonces" in log
        assert "validity period of 864000 seconds" in log
        pid = rig.pebble_pid()
    finally:
        rig.stop()
    rig.stop()  # idempotent
    assert not _is_pebble(pid)


def _is_pebble(pid: int) -> bool:
    try:
        return b"pebble" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_pebble_crash_at_startup_raises_with_log_tail(tmp_path: Path) -> None:
    o = PORT_OFFSET + 300
    # A chain length of 0 makes Pebble panic while building its CA: a real early exit.
    with pytest.raises(RigError, match=r"(?s)pebble exited .*At least one intermediate"):
        start_pebble(tmp_path, acme_port=14000 + o, management_port=15000 + o,
                     http_port=5002 + o, tls_port=5001 + o, dns_port=8053 + o,
                     challtestsrv_port=8055 + o, extra_env={"PEBBLE_CHAIN_LENGTH": "0"})


def test_port_in_use_fails_fast_and_says_so(pebble: PebbleRig, tmp_path: Path) -> None:
    # The session Pebble holds its ACME port: a second one must fail fast and say why.
    taken = int(pebble.directory_url.rsplit(":", 1)[1].split("/")[0])
    o = PORT_OFFSET + 200
    with pytest.raises(RuntimeError, match=rf"{taken}/tcp is already in use"):
        start_pebble(tmp_path, acme_port=taken, management_port=15000 + o,
                     http_port=5002 + o, tls_port=5001 + o, dns_port=8053 + o,
                     challtestsrv_port=8055 + o)


def test_make_conf_writes_ini_and_yaml(make_conf: MakeConf, pebble: PebbleRig,
                                       challenge_server: ChallengeDrop, tmp_path: Path) -> None:
    ini_dir, yaml_dir = tmp_path / "ini", tmp_path / "yaml"
    ini_dir.mkdir()
    yaml_dir.mkdir()
    conf = make_conf(ini_dir, "www.example.test\n", actions_text="[default]\n",
                     extra_conf={"reauthorizeDays": 20, "caBundle": None})
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep camelCase keys
    parser.read(conf)
    section = parser["config"]
    assert section["directoryTest"] == pebble.directory_url
    assert section["challengeDropDir"] == str(challenge_server.drop_dir)
    assert section["accountKey"] == str(ini_dir / "account.key")
    assert section["reauthorizeDays"] == "20"
    assert "caBundle" not in section
    assert (ini_dir / "domains").read_text() == "www.example.test\n"
    assert (ini_dir / "actions.conf").exists()

    conf = make_conf(yaml_dir, "a.example.test\n", yaml=True)
    data = yaml.safe_load(conf.read_text())["config"]
    assert data["caBundle"] == str(pebble.ca_bundle)
    assert data["directoryProd"] == pebble.directory_url
    assert not (yaml_dir / "actions.conf").exists()


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What ``proc`` wrote to stdout up to and including ``marker`` (bounded wait)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} within {timeout:.0f} s; stdout so far: {data!r}"
        if select.select([proc.stdout], [], [], remaining)[0]:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"stdout ended before {marker!r}: {data!r}"
            data += chunk
    return data


def test_command_line_rig_prints_its_config_lines_and_stops_on_sigterm(tmp_path: Path) -> None:
    # Free ports (the command's default): nothing to coordinate with the session rig.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lematt.testing.pebble", "--workdir", str(tmp_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        text = _read_until(proc, b"Stop with Ctrl-C", 30).decode()
        settings = dict(re.findall(r"^ +(directoryTest|directoryProd|caBundle|challengeListen)"
                                   r" = (\S+)$", text, re.MULTILINE))
        assert settings["directoryTest"] == settings["directoryProd"]
        assert settings["caBundle"] == str(tmp_path / "rig-ca.pem")
        assert re.fullmatch(r"127\.0\.0\.1:[0-9]+", settings["challengeListen"])
        context = ssl.create_default_context(cafile=settings["caBundle"])
        with _opener(context).open(settings["directoryTest"], timeout=5) as response:
            assert "newOrder" in json.loads(response.read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:  # a failed check above: SIGTERM lets it stop Pebble too
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        rest, err = proc.stdout.read(), proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert b"stopping Pebble" in rest, err
    with pytest.raises(urllib.error.URLError):  # Pebble went with it
        _opener(context).open(settings["directoryTest"], timeout=5)
