"""``lematt plan`` and the run flags end to end: plan contacts no CA and no host and writes
nothing; --only / --force / --no-deploy against a real Pebble.

The CA front (tests/ca_front.py) is used here only as a recorder: it forwards every request to
Pebble unchanged and lists them, so "Pebble saw no request" is a fact, not a guess.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

from lematt.testing.pebble import PebbleRig
from tests.ca_front import CaFront
from tests.e2e.conftest import MakeConf, RunLematt
from tests.trees import snapshot


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    """A loopback TCP port that accepts connections into its backlog and answers nothing:
    any connection lematt made would be found there afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_plan_contacts_neither_the_ca_nor_any_host(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    with listener() as ca, listener() as ssh:
        ca_port, ssh_port = ca.getsockname()[1], ssh.getsockname()[1]
        dest = f"root@127.0.0.1:{ssh_port}"
        actions = {
            "prepare": ["echo DOMAIN", {"ssh": dest, "forward": "http://127.0.0.1:5002"}],
            "uploadCerts": [{"ssh": dest, "to": "/srv/certs"}],
            "update": [{"ssh": dest, "run": "systemctl reload nginx"}, "echo reloaded"],
        }
        conf = make_conf(tmp_path, "a.noconnect.test www\nb.noconnect.test\n",
                         actions_text="[default]\n" + "".join(
                             f"{k}: {json.dumps(v)}\n" for k, v in actions.items()),
                         extra_conf={"directoryTest": f"https://127.0.0.1:{ca_port}/dir",
                                     "sshConnectTimeout": 2})
        result = run_lematt("--test", "plan", "--config", conf, timeout=60)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "due: a.noconnect.test (RSA): missing" in out
        assert "due: b.noconnect.test (EC): missing" in out
        assert "prepare for a.noconnect.test: echo www.a.noconnect.test" in out
        assert (f"forwarder on {dest} -> http://127.0.0.1:5002, for a.noconnect.test, "
                "b.noconnect.test") in out
        host = f"[127.0.0.1]:{ssh_port}"
        block = out[out.index(f"deploy to {host}: 2 step(s)"):].splitlines()
        assert block[1].endswith(f"uploadCerts: sftp the certificates to {dest}:/srv/certs")
        assert block[2].endswith(f"update: ssh {dest} `systemctl reload nginx`")
        assert "deploy to local: 1 step(s)" in out
        assert not connected(ca) and not connected(ssh)
    # Nothing written: no tree, no lock, no account key.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["actions.conf", "domains",
                                                          "lematt.conf"]


def test_plan_against_pebble_lists_what_a_run_then_does_and_pebble_sees_nothing(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        pebble: PebbleRig) -> None:
    with CaFront(pebble.directory_url, pebble.ca_bundle, tmp_path / "front") as front:
        marker = tmp_path / "deployed.log"
        conf = make_conf(tmp_path / "conf", "first.plan.test\n",
                         actions_text=f'[default]\nupdate: ["echo DOMAINS_CN >> {marker}"]\n',
                         extra_conf={"directoryTest": front.directory_url,
                                     "caBundle": front.ca_bundle})
        first = run_lematt("--test", "--config", conf)
        assert first.returncode == 0, first.stderr
        (conf.parent / "domains").write_text("first.plan.test\nsecond.plan.test www\n")
        seen, before = len(front.requests), snapshot(tmp_path / "conf")

        shown = run_lematt("--test", "plan", "--config", conf)
        assert shown.returncode == 0, shown.stderr
        as_json = run_lematt("--test", "plan", "--json", "--config", conf)
        assert as_json.returncode == 0, as_json.stderr
        assert len(front.requests) == seen  # the CA was not asked anything
        # Byte for byte, modes and mtimes: the lock file the first run left still holds its
        # pid (no lock taken), no index, renewal state or journal was written.
        assert snapshot(tmp_path / "conf") == before

        due = [line for line in shown.stdout.splitlines() if "due: " in line]
        assert due == ["[TEST] due: second.plan.test (RSA): missing",
                       "[TEST] due: second.plan.test (EC): missing"]
        assert "[TEST] current: 2 of 4 certificate(s)" in shown.stdout
        assert "[TEST]   1. [default] update: `echo second.plan.test >> " in shown.stdout
        data = json.loads(as_json.stdout)
        assert [(d["names"], d["key_type"]) for d in data["due"]] == [
            (["second.plan.test", "www.second.plan.test"], "rsa"),
            (["second.plan.test", "www.second.plan.test"], "ec")]
        assert data["mode"] == "test" and data["deploy_now"] is True

        # The run then does what the plan said.
        run = run_lematt("--test", "--config", conf)
        assert run.returncode == 0, run.stderr
        assert [line for line in run.stdout.splitlines() if "due: " in line] == due
        assert len(front.requests) > seen


def test_only_force_no_deploy_then_the_next_run_deploys(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    marker = tmp_path / "deployed.log"
    conf = make_conf(tmp_path, "one.flags.test www\ntwo.flags.test\n",
                     actions_text=f'[default]\nupdate: ["echo DOMAINS_CN >> {marker}"]\n')
    assert run_lematt("--test", "--config", conf).returncode == 0
    marker.unlink()
    cert = tmp_path / "test/cert/one.flags.test_www.one.flags.test-cert-combined.rsa2048.test.pem"
    other = tmp_path / "test/cert/two.flags.test-cert-combined.rsa2048.test.pem"
    old, other_old = cert.read_bytes(), other.read_bytes()

    # Current, but forced; only the line carrying www.one.flags.test; nothing deployed.
    forced = run_lematt("--test", "--config", conf, "--only", "www.one.flags.test", "--force",
                        "--no-deploy")
    assert forced.returncode == 0, forced.stderr
    assert "due: one.flags.test (RSA): forced (--force)" in forced.stdout
    assert "renewed one.flags.test (EC)" in forced.stdout and "two.flags" not in forced.stdout
    assert "not deployed (--no-deploy): local is owed 1 line(s)" in forced.stdout
    assert cert.read_bytes() != old and other.read_bytes() == other_old
    assert not marker.exists()
    pending = json.loads((tmp_path / "test/.deploy-pending.json").read_text())
    # The commit wrote the debt down: the line owes every host its actions name.
    assert pending["owed"] == [{"names": ["one.flags.test", "www.one.flags.test"],
                                "hosts": None}]

    # plan shows the debt; the next plain run pays it without ordering anything.
    shown = run_lematt("--test", "plan", "--config", conf)
    assert "deploy to local: 1 step(s); owed from an earlier run: one.flags.test" in shown.stdout
    after = run_lematt("--test", "--config", conf)
    assert after.returncode == 0, after.stderr
    assert "renewed" not in after.stdout
    assert marker.read_text() == "one.flags.test\n"
    assert not (tmp_path / "test/.deploy-pending.json").exists()


def test_unknown_only_name_and_force_without_only_change_nothing(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "known.flags.test\n")
    unknown = run_lematt("--test", "--config", conf, "--only", "unknown.flags.test")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1] == (
        "lematt: --only unknown.flags.test: no domains line carries this name; give a name "
        "written in the domains file (shorthand expanded)")
    everything = run_lematt("--test", "--config", conf, "--force")
    assert everything.returncode == 2 and "--force needs --only" in everything.stderr
    assert not (tmp_path / "test").exists()
