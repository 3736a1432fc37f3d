"""Post-deploy verification end to end: certificates from a real Pebble, deployed by local
shell actions to a real nginx (Debian ``nginx-light``) that serves an RSA and an EC
certificate per vhost, and to the STARTTLS test server (``lematt.testing.starttls``, see its
docstring for why not Postfix); lematt then checks what each endpoint serves."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lematt.crypto import (
    certificate_serial_and_expiry,
    generate_private_pem,
    leaf_der,
    load_private_key,
    private_key_pem,
)
from lematt.testing.certs import LocalCA
from lematt.testing.sshd import ClientKit
from lematt.testing.starttls import StartTlsServer
from tests.e2e.conftest import PORT_OFFSET, REPO_ROOT, MakeConf, RunLematt, SshdHostFactory

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HTTPS_PORT = 9443 + PORT_OFFSET
SMTP_PORT, IMAP_PORT, TLS_PORT = 9025 + PORT_OFFSET, 9143 + PORT_OFFSET, 9993 + PORT_OFFSET
GARBAGE_PORT, SILENT_PORT, DOWN_PORT = (9994 + PORT_OFFSET, 9995 + PORT_OFFSET,
                                        9996 + PORT_OFFSET)
TLS13_PORT, RSA_ONLY_PORT = 9997 + PORT_OFFSET, 9998 + PORT_OFFSET
ADDRESS = "127.0.0.1"
TAGS = {"rsa": "rsa2048", "ec": "prime256v1"}
# Short enough that a check that cannot succeed ends quickly, long enough for nginx to
# reload on a loaded machine (the checker tries five times within it).
VERIFY_TIMEOUT = 4

pytestmark = pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx not installed")


def cert_file(directory: Path, name: str, key_type: str) -> Path:
    return directory / f"{name}-cert-combined.{TAGS[key_type]}.test.pem"


def key_file(directory: Path, name: str, key_type: str) -> Path:
    return directory / f"{name}-key.{TAGS[key_type]}.test.pem"


@dataclass
class Nginx:
    prefix: Path
    conf: Path
    certs: Path
    keys: Path
    proc: subprocess.Popen[bytes]

    @property
    def reload_command(self) -> str:
        return f"{NGINX} -p {self.prefix} -c {self.conf} -e {self.prefix}/error.log -s reload"


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while datetime.now(UTC) < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((ADDRESS, port), 1):
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)  # a pause that also notices an exit
    pytest.fail(f"{what} does not listen on {ADDRESS}:{port}")


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[list[str]], Nginx]]:
    """``start(names)``: a real nginx on ADDRESS:HTTPS_PORT with one vhost per name, each
    serving an RSA and an EC certificate from ``certs``/``keys`` (placeholders from a local
    CA until lematt's actions copy the real ones there)."""
    started: list[Nginx] = []

    def start(names: list[str]) -> Nginx:
        prefix = tmp_path / "nginx"
        certs, keys = prefix / "certs", prefix / "keys"
        for d in (certs, keys, prefix / "temp"):
            d.mkdir(parents=True)
        ca = LocalCA()
        now = datetime.now(UTC)
        servers = ""
        for name in names:
            lines = ""
            for key_type in ("rsa", "ec"):
                pem = generate_private_pem(key_type)
                key = load_private_key(pem)
                key_file(keys, name, key_type).write_bytes(private_key_pem(key))
                cert_file(certs, name, key_type).write_bytes(
                    ca.issue(key, (name,), now - timedelta(days=1), now + timedelta(days=5)))
                lines += (f"    ssl_certificate {cert_file(certs, name, key_type)};\n"
                          f"    ssl_certificate_key {key_file(keys, name, key_type)};\n")
            servers += (f"  server {{\n    listen {ADDRESS}:{HTTPS_PORT} ssl;\n"
                        f"    server_name {name};\n{lines}    return 204;\n  }}\n")
        temp = prefix / "temp"
        # CI runs as root: nginx then wants a user for its workers; root keeps it in tmp.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"daemon off;\n{user}worker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n"
            f"  proxy_temp_path {temp}/proxy;\n  fastcgi_temp_path {temp}/fastcgi;\n"
            f"  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n{servers}}}\n")
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-e",
                                 str(prefix / "error.log")], start_new_session=True,
                                stdin=subprocess.DEVNULL)
        rig = Nginx(prefix, conf, certs, keys, proc)
        started.append(rig)
        _wait_listening(HTTPS_PORT, proc, "nginx")
        return rig

    try:
        yield start
    finally:
        for rig in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rig.proc.pid, signal.SIGTERM)
            try:
                rig.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(rig.proc.pid, signal.SIGKILL)
                rig.proc.wait(10)


def write_actions(conf_dir: Path, actions: dict[str, dict[str, Any]]) -> None:
    text = ""
    for section, keys in actions.items():
        text += f"[{section}]\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in keys.items())
    (conf_dir / "actions.conf").write_text(text)


def deploy_actions(rig: Nginx, update: str, verify: list[Any]) -> dict[str, Any]:
    return {"uploadCerts": [f"cp CERTS {rig.certs}/"], "uploadKeys": [f"cp KEYS {rig.keys}/"],
            "update": [update], "verify": verify}


def stored(conf_dir: Path, name: str, key_type: str) -> tuple[str, str]:
    der = leaf_der(cert_file(conf_dir / "test" / "cert", name, key_type).read_bytes())
    serial, not_after = certificate_serial_and_expiry(der)
    return serial, not_after.isoformat()


def verify_steps(summary_path: Path) -> list[dict[str, Any]]:
    summary = json.loads(summary_path.read_text())
    return [s["verify"] for s in summary["actions"] if s["kind"] == "verify"]


def test_nginx_serves_rsa_and_ec_of_each_vhost(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        nginx: Callable[[list[str]], Nginx]) -> None:
    names = ["a.verify.test", "b.verify.test"]
    rig = nginx(names)
    conf = make_conf(tmp_path, "\n".join(names) + "\n",
                     extra_conf={"verifyTimeout": VERIFY_TIMEOUT})
    # Two endpoints: the shared address (SNI picks the vhost: each line asks for its own
    # name), and a backend entry that asks for b's name only.
    write_actions(tmp_path, {"default": deploy_actions(rig, rig.reload_command, [
        f"https://{ADDRESS}:{HTTPS_PORT}",
        {"connect": f"{ADDRESS}:{HTTPS_PORT}", "name": "b.verify.test", "scheme": "https"}])})
    result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    assert result.returncode == 0, result.stderr
    checks = verify_steps(tmp_path / "run.json")
    seen = {(c["endpoint"], c["name"], c["key_type"]): c for c in checks}
    plain, backend = (f"https://{ADDRESS}:{HTTPS_PORT}",
                      f"https://{ADDRESS}:{HTTPS_PORT} (b.verify.test)")
    assert set(seen) == {(plain, n, kt) for n in names for kt in ("rsa", "ec")} | {
        (backend, "b.verify.test", kt) for kt in ("rsa", "ec")}
    for (_, name, key_type), check in seen.items():
        assert check["matched"], check
        serial, not_after = stored(tmp_path, name, key_type)
        assert check["served"] == {"serial": serial, "not_after": not_after}
    # Four different certificates were told apart: RSA and EC of each vhost.
    assert len({c["served"]["serial"] for c in checks}) == 4
    assert "serves the stored certificate" in result.stdout


def test_reload_that_does_nothing_stays_owed_until_fixed(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        nginx: Callable[[list[str]], Nginx]) -> None:
    name = "noreload.verify.test"
    rig = nginx([name])
    conf = make_conf(tmp_path, f"{name}\n", extra_conf={"verifyTimeout": VERIFY_TIMEOUT})
    endpoint = f"https://{ADDRESS}:{HTTPS_PORT}"
    # The files are copied, but nginx is never told: it keeps serving the placeholders.
    write_actions(tmp_path, {"default": deploy_actions(rig, "true", [endpoint])})
    first = run_lematt("--test", "--config", conf, "--json", tmp_path / "run1.json")
    assert first.returncode == 1, first.stderr
    for key_type in ("rsa", "ec"):
        serial, _ = stored(tmp_path, name, key_type)
        line = next(x for x in first.stderr.splitlines()
                    if f"({key_type.upper()}): expected serial {serial}" in x)
        assert endpoint in line and "; serves serial" in line and "notAfter" in line
    assert "deploy to local is pending" in first.stderr
    assert not any(c["matched"] for c in verify_steps(tmp_path / "run1.json"))

    # `lematt verify` alone sees the same, and says so in its exit status.
    alone = run_lematt("--test", "verify", "--config", conf, "--json", tmp_path / "v1.json")
    assert alone.returncode == 1, alone.stderr
    assert json.loads((tmp_path / "v1.json").read_text())["ok"] is False

    # The update fixed: the next run owes the deploy, runs it again and verifies.
    write_actions(tmp_path, {"default": deploy_actions(rig, rig.reload_command, [endpoint])})
    second = run_lematt("--test", "--config", conf, "--json", tmp_path / "run2.json")
    assert second.returncode == 0, second.stderr
    assert "retrying the pending deploy to local" in second.stdout
    assert [c["matched"] for c in verify_steps(tmp_path / "run2.json")] == [True, True]
    third = run_lematt("--test", "--config", conf)
    assert third.returncode == 0, third.stderr
    assert "retrying the pending deploy" not in third.stdout

    alone = run_lematt("--test", "verify", name, "--config", conf)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.count("serves the stored certificate") == 2
    unknown = run_lematt("--test", "verify", "other.verify.test", "--config", conf)
    assert unknown.returncode == 2 and "on no line of the domains file" in unknown.stderr


def test_checks_follow_the_ssh_host_that_reloads(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        nginx: Callable[[list[str]], Nginx], sshd_host: SshdHostFactory,
        ssh_client_kit: ClientKit) -> None:
    name = "ssh.verify.test"
    rig = nginx([name])
    host = sshd_host("127.0.0.2")
    endpoint = f"https://{ADDRESS}:{HTTPS_PORT}"
    conf = make_conf(tmp_path, f"{name}\n", extra_conf={
        "verifyTimeout": VERIFY_TIMEOUT, "sshConfig": ssh_client_kit.ssh_config})
    # Files copied locally, the reload over SSH: the check belongs to the SSH host, so a
    # failed check leaves that host owed and the local uploads done.
    actions = {"uploadCerts": [f"cp CERTS {rig.certs}/"],
               "uploadKeys": [f"cp KEYS {rig.keys}/"],
               "update": [{"ssh": host.alias, "run": "true"}], "verify": [endpoint]}
    write_actions(tmp_path, {"default": actions})
    first = run_lematt("--test", "--config", conf, "--json", tmp_path / "run1.json")
    assert first.returncode == 1, first.stderr
    ssh_host = f"[127.0.0.2]:{host.port}"
    steps = json.loads((tmp_path / "run1.json").read_text())["actions"]
    assert {(s["kind"], s["host"], s["ok"]) for s in steps} == {
        ("uploadCerts", "local", True), ("uploadKeys", "local", True),
        ("update", ssh_host, True), ("verify", ssh_host, False)}
    assert f"deploy to {ssh_host} is pending" in first.stderr
    assert "deploy to local is pending" not in first.stderr

    actions["update"] = [{"ssh": host.alias, "run": rig.reload_command}]
    write_actions(tmp_path, {"default": actions})
    second = run_lematt("--test", "--config", conf, "--json", tmp_path / "run2.json")
    assert second.returncode == 0, second.stderr
    steps = json.loads((tmp_path / "run2.json").read_text())["actions"]
    assert [(s["kind"], s["host"]) for s in steps] == [
        ("update", ssh_host), ("verify", ssh_host), ("verify", ssh_host)]
    assert all(s["ok"] for s in steps)


def test_kill_while_verifying_leaves_the_deploy_owed(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        nginx: Callable[[list[str]], Nginx]) -> None:
    name = "killed.verify.test"
    rig = nginx([name])
    endpoint = f"https://{ADDRESS}:{HTTPS_PORT}"
    conf = make_conf(tmp_path, f"{name}\n", extra_conf={"verifyTimeout": VERIFY_TIMEOUT})
    write_actions(tmp_path, {"default": deploy_actions(rig, "true", [endpoint])})
    first = run_lematt("--test", "--config", conf)
    assert first.returncode == 1 and "deploy to local is pending" in first.stderr

    # The fixed update runs, then a check hangs on a silent endpoint: SIGKILL lematt there.
    silent = f"tls://{ADDRESS}:{SILENT_PORT}"
    text = (tmp_path / "lematt.conf").read_text()
    assert f"verifyTimeout = {VERIFY_TIMEOUT}\n" in text
    (tmp_path / "lematt.conf").write_text(text.replace(f"verifyTimeout = {VERIFY_TIMEOUT}\n",
                                                       "verifyTimeout = 600\n"))
    write_actions(tmp_path, {"default": deploy_actions(rig, rig.reload_command,
                                                       [endpoint, silent])})
    with StartTlsServer(ADDRESS, SILENT_PORT, "silent", {}) as server:
        proc = subprocess.Popen([sys.executable, "-m", "lematt", "--test", "--config",
                                 str(conf)], cwd=REPO_ROOT, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            assert server.connected.wait(120), "lematt never reached the verify step"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    write_actions(tmp_path, {"default": deploy_actions(rig, rig.reload_command, [endpoint])})
    third = run_lematt("--test", "--config", conf)
    assert third.returncode == 0, third.stderr
    assert "retrying the pending deploy to local" in third.stdout
    assert third.stdout.count("serves the stored certificate") == 2
    # The record of what was served converges too: the kill left the first run's mismatch
    # (written atomically, never half), the third run's matches replace it.
    record = json.loads((tmp_path / "test" / ".verify" / "served.json").read_text())
    checks = [c for endpoints in record["certificates"].values() for c in endpoints.values()]
    assert len(checks) == 2 and all(c["matched"] for c in checks)
    assert not [p for p in (tmp_path / "test" / ".verify").iterdir()
                if p.name != "served.json"]


def test_starttls_tls_and_hostile_endpoints(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    name = "mail.verify.test"
    tree = tmp_path / "test"
    pairs = [(cert_file(tree / "cert", name, kt), key_file(tree / "key", name, kt))
             for kt in ("rsa", "ec")]
    conf = make_conf(tmp_path, f"{name}\n", extra_conf={"verifyTimeout": VERIFY_TIMEOUT})
    good = [f"smtp://{ADDRESS}:{SMTP_PORT}", f"imap://{ADDRESS}:{IMAP_PORT}",
            f"tls://{ADDRESS}:{TLS_PORT}"]
    write_actions(tmp_path, {"default": {"update": ["true"], "verify": good}})
    with contextlib.ExitStack() as stack:
        for mode, port in (("smtp", SMTP_PORT), ("imap", IMAP_PORT), ("tls", TLS_PORT),
                           ("garbage", GARBAGE_PORT), ("silent", SILENT_PORT)):
            stack.enter_context(StartTlsServer(ADDRESS, port, mode, {name: pairs}))
        stack.enter_context(StartTlsServer(ADDRESS, TLS13_PORT, "tls13", {name: pairs}))
        stack.enter_context(StartTlsServer(ADDRESS, RSA_ONLY_PORT, "tls", {name: pairs[:1]}))
        result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
        assert result.returncode == 0, result.stderr
        checks = verify_steps(tmp_path / "run.json")
        assert sorted((c["endpoint"], c["key_type"]) for c in checks) == sorted(
            (e, kt) for e in good for kt in ("rsa", "ec"))
        assert all(c["matched"] for c in checks), checks

        # Hostile and absent endpoints: each is one failure line, within verifyTimeout.
        write_actions(tmp_path, {"default": {"update": ["true"], "verify": [
            f"tls://{ADDRESS}:{GARBAGE_PORT}", f"tls://{ADDRESS}:{SILENT_PORT}",
            f"https://{ADDRESS}:{DOWN_PORT}", f"smtp://{ADDRESS}:{IMAP_PORT}",
            f"tls://{ADDRESS}:{TLS13_PORT}", f"tls://{ADDRESS}:{RSA_ONLY_PORT}"]}})
        alone = run_lematt("--test", "verify", "--config", conf, "--json",
                           tmp_path / "v.json")
    assert alone.returncode == 1, alone.stderr
    results = json.loads((tmp_path / "v.json").read_text())["verify"]
    errors = {r["endpoint"]: r["error"] for r in results if r["key_type"] == "rsa"}
    assert "TLS handshake failed" in errors[f"tls://{ADDRESS}:{GARBAGE_PORT}"]
    assert "no TLS handshake within" in errors[f"tls://{ADDRESS}:{SILENT_PORT}"]
    assert "cannot connect" in errors[f"https://{ADDRESS}:{DOWN_PORT}"]
    assert "not an SMTP reply" in errors[f"smtp://{ADDRESS}:{IMAP_PORT}"]
    # The server that has no EC certificate refuses the ECDSA suites: said so for EC only.
    rsa_only = {r["key_type"]: r for r in results
                if r["endpoint"] == f"tls://{ADDRESS}:{RSA_ONLY_PORT}"}
    assert rsa_only["rsa"]["matched"]
    assert "refused every ECDHE-ECDSA suite" in rsa_only["ec"]["error"]
    # A TLS 1.3-only server is read once more in TLS 1.3: the one certificate it chose is
    # checked, the other key type is reported as not askable.
    tls13 = {r["key_type"]: r for r in results
             if r["endpoint"] == f"tls://{ADDRESS}:{TLS13_PORT}"}
    assert sorted(r["matched"] for r in tls13.values()) == [False, True]
    assert "speaks only TLS 1.3" in next(r["error"] for r in tls13.values()
                                         if not r["matched"])
    others = [r for r in results if r["endpoint"] not in (
        f"tls://{ADDRESS}:{RSA_ONLY_PORT}", f"tls://{ADDRESS}:{TLS13_PORT}")]
    assert not any(r["matched"] or r["served"] for r in others)
    assert alone.stderr.count("FAILED: [default] verify:") == 8 + 2


def served_metrics(prom: Path) -> dict[tuple[str, str], float]:
    """(key type, endpoint) -> lematt_certificate_served_matches, parsed with
    prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(prom.read_text()):
        for sample in family.samples:
            if sample.name == "lematt_certificate_served_matches":
                values[(sample.labels["key_type"], sample.labels["endpoint"])] = sample.value
    return values


def test_served_is_remembered_checked_once_for_two_hosts_and_shown(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        nginx: Callable[[list[str]], Nginx], sshd_host: SshdHostFactory,
        ssh_client_kit: ClientKit) -> None:
    name = "served.verify.test"
    rig = nginx([name])
    host = sshd_host("127.0.0.2")
    ssh_host = f"[127.0.0.2]:{host.port}"
    endpoint = f"https://{ADDRESS}:{HTTPS_PORT}"
    prom = tmp_path / "lematt.prom"
    record = tmp_path / "test" / ".verify" / "served.json"
    conf = make_conf(tmp_path, f"{name}\n", extra_conf={
        "verifyTimeout": VERIFY_TIMEOUT, "sshConfig": ssh_client_kit.ssh_config,
        "metricsFile": prom})
    # The section reloads on two hosts (here and over SSH), neither reload does anything.
    actions = deploy_actions(rig, "true", [endpoint])
    actions["update"] = ["true", {"ssh": host.alias, "run": "true"}]
    write_actions(tmp_path, {"default": actions})
    first = run_lematt("--test", "--config", conf, "--json", tmp_path / "run1.json")
    assert first.returncode == 1, first.stderr
    # One check per key type, not one per host; the failure keeps both hosts owed.
    checks = [s for s in json.loads((tmp_path / "run1.json").read_text())["actions"]
              if s["kind"] == "verify"]
    assert sorted(s["verify"]["key_type"] for s in checks) == ["ec", "rsa"]
    assert all("checked once for" in s["what"] and ssh_host in s["what"] for s in checks)
    assert "deploy to local is pending" in first.stderr
    assert f"deploy to {ssh_host} is pending" in first.stderr
    summary = json.loads((tmp_path / "run1.json").read_text())
    served = {c["key_type"]: c["served"] for c in summary["certificates"]}
    assert {kt: s["matches"] for kt, s in served.items()} == {"rsa": False, "ec": False}
    assert served["ec"]["endpoints"][0]["expected"]["serial"] == stored(tmp_path, name, "ec")[0]
    assert served_metrics(prom) == {("rsa", endpoint): 0.0, ("ec", endpoint): 0.0}
    shown = run_lematt("--test", "status", "--config", conf)
    print(shown.stdout)  # the README's example comes from here
    assert shown.returncode == 1
    assert shown.stdout.count(f"MISMATCH at {endpoint}") == 2
    assert "owed,mismatch" in shown.stdout
    note = next(x for x in shown.stdout.splitlines() if x.startswith(f"{name} (RSA)")
                and "did not serve" in x)
    assert f"expected serial {stored(tmp_path, name, 'rsa')[0]}" in note
    doc = json.loads(run_lematt("--test", "status", "--json", "--config", conf).stdout)
    assert [c["served"]["matches"] for c in doc["certificates"]] == [False, False]
    assert all("mismatch" in c["flags"] for c in doc["certificates"])

    # A damaged record: a warning, read as not checked; `lematt verify` rewrites it.
    record.write_text("{not json")
    damaged = run_lematt("--test", "status", "--config", conf)
    assert damaged.returncode == 1 and "is not lematt's record" in damaged.stdout
    assert "MISMATCH" not in damaged.stdout
    alone = run_lematt("--test", "verify", "--config", conf)
    assert alone.returncode == 1 and "is not lematt's record" in alone.stderr
    assert json.loads(record.read_text())["schema"] == "lematt-served"

    # The reload fixed on one of the hosts: the next run retries both and verifies once.
    actions["update"] = [rig.reload_command, {"ssh": host.alias, "run": "true"}]
    write_actions(tmp_path, {"default": actions})
    second = run_lematt("--test", "--config", conf, "--json", tmp_path / "run2.json")
    assert second.returncode == 0, second.stderr
    assert [c["matched"] for c in verify_steps(tmp_path / "run2.json")] == [True, True]
    assert served_metrics(prom) == {("rsa", endpoint): 1.0, ("ec", endpoint): 1.0}
    fine = run_lematt("--test", "status", "--config", conf)
    assert fine.returncode == 0, fine.stdout
    assert fine.stdout.count("matches") == 2 and "MISMATCH" not in fine.stdout

    # A run with nothing to deploy checks nothing and leaves the record alone.
    before = record.stat().st_mtime_ns, record.read_bytes()
    third = run_lematt("--test", "--config", conf)
    assert third.returncode == 0, third.stderr
    assert (record.stat().st_mtime_ns, record.read_bytes()) == before
    assert served_metrics(prom) == {("rsa", endpoint): 1.0, ("ec", endpoint): 1.0}

    # The endpoint no longer listed: its record is dropped at the next save, and status
    # no longer shows it.
    actions["verify"] = [{"connect": f"{ADDRESS}:{HTTPS_PORT}", "name": name,
                          "scheme": "https"}]
    write_actions(tmp_path, {"default": actions})
    assert run_lematt("--test", "verify", "--config", conf).returncode == 0
    kept = json.loads(record.read_text())["certificates"]
    assert {e for endpoints in kept.values() for e in endpoints} == {f"{endpoint} ({name})"}
