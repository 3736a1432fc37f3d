"""What a run leaves for its operator, end to end against the real Pebble (and a real sshd):
the ``--json`` summary on every exit path, the shapes of its lines (pipe, journal, terminal,
``--log-file``) and the ``notify`` hooks with the summary on their stdin."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from lematt.testing.pebble import PebbleRig
from lematt.testing.sshd import ClientKit
from tests.e2e.conftest import REPO_ROOT, MakeConf, RunLematt, SshdHostFactory

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
TIMESTAMPED = {"LEMATT_LOG_FORMAT": "auto"}  # the suite's default is plain (conftest)


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def by_name(summary: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["names"][0], c["key_type"]): c for c in summary["certificates"]}


def assert_envelope(summary: dict[str, Any], exit_status: int) -> None:
    assert summary["schema"] == 1
    assert re.fullmatch(r"\d+\.\d+.*", summary["lematt"])
    started = datetime.fromisoformat(summary["started"])
    finished = datetime.fromisoformat(summary["finished"])
    assert started.utcoffset() is not None and started <= finished
    assert summary["mode"] == "test"
    assert summary["exit"] == exit_status


# --------------------------------------------------------------------------- the summary

def test_summary_after_success_and_after_a_quiet_cron_run(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "a.records.test\nb.records.test www.b.records.test\n")
    first = run_lematt("--test", "--config", conf, "--json", tmp_path / "first.json")
    assert first.returncode == 0, first.stderr
    summary = read_summary(tmp_path / "first.json")
    assert_envelope(summary, 0)
    assert summary["ok"] is True and summary["interrupted"] is False
    assert summary["failure"] is None and summary["counts"] == {"renewed": 4}
    certs = by_name(summary)
    assert set(certs) == {(n, kt) for n in ("a.records.test", "b.records.test")
                          for kt in ("rsa", "ec")}
    b_ec = certs[("b.records.test", "ec")]
    assert b_ec["outcome"] == "renewed" and b_ec["lineno"] == 2
    assert b_ec["names"] == ["b.records.test", "www.b.records.test"]
    assert re.fullmatch(r"[0-9a-f]+", b_ec["serial"])
    assert datetime.fromisoformat(b_ec["not_after"]) > datetime.fromisoformat(
        summary["finished"])
    assert Path(b_ec["paths"]["cert"]).is_file() and Path(b_ec["paths"]["key"]).is_file()
    assert b_ec["failure"] is None

    # Nothing due: --cron prints nothing, and the summary still lists every certificate.
    quiet = run_lematt("--test", "--cron", "--config", conf, "--json", tmp_path / "quiet.json")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    again = read_summary(tmp_path / "quiet.json")
    assert_envelope(again, 0)
    assert again["counts"] == {"current": 4}
    current = by_name(again)[("b.records.test", "ec")]
    assert current["outcome"] == "current"
    # The same certificate: serial, notAfter and paths as the run that made it reported.
    assert {k: current[k] for k in ("serial", "not_after", "paths")} == {
        k: b_ec[k] for k in ("serial", "not_after", "paths")}


def test_summary_after_a_failed_order_has_the_cas_problem(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig) -> None:
    conf = make_conf(tmp_path, "broken.records.test\nfine.records.test\n",
                     extra_conf={"keyTypes": "ec"})
    # Nothing listens on 127.0.0.9: the CA's http-01 check cannot connect.
    pebble.add_a("broken.records.test", "127.0.0.9")
    try:
        result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    finally:
        pebble.clear_a("broken.records.test")
    assert result.returncode == 1, result.stderr
    summary = read_summary(tmp_path / "run.json")
    assert_envelope(summary, 1)
    assert summary["ok"] is False and summary["failure"] is None  # no run-wide error
    assert summary["counts"] == {"failed": 1, "renewed": 1}
    broken = by_name(summary)[("broken.records.test", "ec")]
    assert broken["outcome"] == "failed" and broken["serial"] is None
    failure = broken["failure"]
    assert failure["kind"] == "validation"
    assert failure["problem"].startswith("urn:ietf:params:acme:error:")
    assert failure["detail"] and failure["detail"] in failure["message"]
    assert by_name(summary)[("fine.records.test", "ec")]["outcome"] == "renewed"


def test_summary_with_a_config_error(tmp_path: Path, make_conf: MakeConf,
                                     run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "x.records.test\n", extra_conf={"keyBitsRSA": 1000})
    result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    assert result.returncode == 2
    summary = read_summary(tmp_path / "run.json")
    assert_envelope(summary, 2)
    assert summary["ok"] is False and summary["certificates"] == []
    assert summary["failure"]["kind"] == "config"
    assert f"{conf}:" in summary["failure"]["message"] and "keyBitsRSA" in summary["error"]
    assert not (tmp_path / "test").exists()


def test_summary_when_another_run_holds_the_lock(tmp_path: Path, make_conf: MakeConf,
                                                 run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "locked.records.test\n")
    with (tmp_path / ".lematt.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    assert result.returncode == 75, result.stderr
    summary = read_summary(tmp_path / "run.json")
    assert_envelope(summary, 75)
    assert summary["failure"]["kind"] == "locked" and "another lematt run" in summary["error"]
    assert summary["certificates"] == []


def test_summary_after_sigterm_mid_run(tmp_path: Path, make_conf: MakeConf,
                                       pebble: PebbleRig) -> None:
    """SIGTERM while one order hangs in validation and another has finished: exit 130, and
    the summary says interrupted, with the finished certificate renewed and the other
    skipped."""
    from tests.fakes import BlackHole

    conf = make_conf(tmp_path, "stuck.records.test\nquick.records.test\n",
                     extra_conf={"keyTypes": "ec"})
    hole = BlackHole("127.0.0.8", pebble.http_port)  # validation connects, never answered
    pebble.add_a("stuck.records.test", "127.0.0.8")
    try:
        lematt = subprocess.Popen(
            [sys.executable, "-m", "lematt", "--test", "--config", str(conf), "--json",
             str(tmp_path / "run.json")], cwd=REPO_ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        try:
            assert lematt.stdout is not None
            seen = b""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # bounded: until both states are reached
                if hole.clients and b"renewed quick.records.test" in seen:
                    break
                ready, _, _ = select.select([lematt.stdout], [], [], 0.2)
                if ready:
                    chunk = os.read(lematt.stdout.fileno(), 65536)
                    assert chunk, seen
                    seen += chunk
            assert hole.clients and b"renewed quick.records.test" in seen, seen
            lematt.send_signal(signal.SIGTERM)
            _out, err = lematt.communicate(timeout=60)
        finally:
            if lematt.poll() is None:
                lematt.kill()
                lematt.wait(timeout=10)
    finally:
        pebble.clear_a("stuck.records.test")
        hole.close()
    assert lematt.returncode == 130, err
    summary = read_summary(tmp_path / "run.json")
    assert_envelope(summary, 130)
    assert summary["interrupted"] is True and summary["failure"]["kind"] == "interrupted"
    certs = by_name(summary)
    assert certs[("quick.records.test", "ec")]["outcome"] == "renewed"
    stuck = certs[("stuck.records.test", "ec")]
    assert stuck["outcome"] == "skipped" and stuck["reason"]


def test_json_dash_is_stdout_and_every_line_goes_to_stderr(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "dash.records.test\n", extra_conf={"keyTypes": "ec"})
    result = run_lematt("--test", "--config", conf, "--json", "-")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is the summary, nothing else
    assert_envelope(summary, 0)
    assert by_name(summary)[("dash.records.test", "ec")]["outcome"] == "renewed"
    assert "renewed dash.records.test (EC)" in result.stderr
    assert not (REPO_ROOT / "-").exists()


# --------------------------------------------------------------------------- line shapes

def test_lines_to_a_pipe_are_timestamped(tmp_path: Path, make_conf: MakeConf,
                                         run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "pipe.records.test\n", extra_conf={"keyTypes": "ec"})
    result = run_lematt("--test", "--config", conf, env=TIMESTAMPED)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines
    assert any("renewed pipe.records.test (EC)" in line for line in lines)


def test_lines_to_the_journal_carry_priorities(tmp_path: Path, make_conf: MakeConf) -> None:
    """stdout and stderr on one stream named by JOURNAL_STREAM, as systemd sets them up:
    ``<6>`` progress and changes, ``<3>`` errors, no timestamps."""
    conf = make_conf(tmp_path, "journal.records.test\n", extra_conf={"keyTypes": "ec"})
    bad = make_conf(tmp_path / "bad", "journal.records.test\n",
                    extra_conf={"keyBitsRSA": 1000})

    def run(config: Path) -> tuple[int, list[str]]:
        read_end, write_end = os.pipe()
        st = os.fstat(write_end)
        env = {**os.environ, **TIMESTAMPED, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen([sys.executable, "-m", "lematt", "--test", "--config",
                                 str(config)], cwd=REPO_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            data = stream.read()  # until lematt (and all it started) closed the pipe
        return proc.wait(timeout=60), data.decode().splitlines()

    status, lines = run(conf)
    assert status == 0 and lines, lines
    assert all(re.match(r"<[3467]>", line) for line in lines), lines
    assert any(line.startswith("<6>[TEST] renewed journal.records.test (EC)")
               for line in lines), lines
    status, lines = run(bad)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("<3>lematt: ") and "keyBitsRSA" in lines[0]


def test_lines_on_a_terminal_are_plain(tmp_path: Path, make_conf: MakeConf) -> None:
    conf = make_conf(tmp_path, "tty.records.test\n", extra_conf={"keyTypes": "ec"})
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lematt", "--test", "--config", str(conf)],
                            cwd=REPO_ROOT, env={**os.environ, **TIMESTAMPED},
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    data = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # bounded: until the terminal closes
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:  # EIO: every writer of the terminal is gone
                assert exc.errno == errno.EIO
                break
            if not chunk:
                break
            data += chunk
        status = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    lines = data.decode().replace("\r\n", "\n").splitlines()
    assert status == 0, lines
    assert any(line.startswith("[TEST] renewed tty.records.test (EC)") for line in lines)
    assert not any(STAMP.match(line) or line.startswith("<") for line in lines), lines


def test_log_file_gets_every_line_timestamped_even_under_cron(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "file.records.test\n", extra_conf={"keyTypes": "ec"})
    log = tmp_path / "logs" / "lematt.log"
    log.parent.mkdir()
    first = run_lematt("--test", "--config", conf, "--log-file", log)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    quiet = run_lematt("--test", "--cron", "--config", conf, "--log-file", log)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    lines = log.read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    text = "\n".join(lines)
    assert "[TEST] renewed file.records.test (EC)" in text
    # The quiet run's progress is in the file though not on the terminal.
    assert lines[-1].endswith("[TEST] all 1 certificates are current; nothing to do")
    assert stat.S_IMODE(log.stat().st_mode) == 0o640


def test_log_file_with_order_processes(tmp_path: Path, make_conf: MakeConf,
                                       run_lematt: RunLematt) -> None:
    """Order processes append to the same file (their lines never mix with the main
    process's: one write each)."""
    names = ["p1.records.test", "p2.records.test", "p3.records.test"]
    conf = make_conf(tmp_path, "".join(f"{n}\n" for n in names),
                     extra_conf={"keyTypes": "ec"})
    log = tmp_path / "lematt.log"
    result = run_lematt("--test", "--processes", "2", "--config", conf, "--log-file", log)
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    for name in names:
        assert any(f"renewed {name} (EC)" in line for line in lines), lines


def test_log_file_in_a_missing_directory_is_a_usage_error(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "nodir.records.test\n")
    result = run_lematt("--test", "--config", conf, "--log-file", tmp_path / "no" / "x.log")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"lematt: --log-file {tmp_path / 'no' / 'x.log'}: ")
    assert not (tmp_path / "test").exists()  # nothing ran


# --------------------------------------------------------------------------- notify hooks

def recorder(out: Path) -> str:
    """A hook that keeps its stdin and the two counts, one file per call."""
    return (f'n=$(ls {out} | wc -l); cat > {out}/$n.json; '
            f'echo "$LEMATT_FAILED $LEMATT_RENEWED $LEMATT_EXIT" > {out}/$n.env')


def calls(out: Path) -> list[tuple[dict[str, Any], list[str]]]:
    found = sorted(out.glob("*.json"), key=lambda p: int(p.stem))
    return [(json.loads(p.read_text()), p.with_suffix(".env").read_text().split())
            for p in found]


def test_notify_runs_after_a_failed_run_with_the_summary(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig) -> None:
    out = tmp_path / "hook"
    out.mkdir()
    conf = make_conf(tmp_path, "bad.notify.test\ngood.notify.test\n", extra_conf={
        "keyTypes": "ec", "notify": json.dumps([recorder(out)])})
    # A good run: no call.
    (tmp_path / "domains").write_text("good.notify.test\n")
    assert run_lematt("--test", "--config", conf).returncode == 0
    assert calls(out) == []
    (tmp_path / "domains").write_text("bad.notify.test\ngood.notify.test\n")
    pebble.add_a("bad.notify.test", "127.0.0.9")
    try:
        result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    finally:
        pebble.clear_a("bad.notify.test")
    assert result.returncode == 1, result.stderr
    ((summary, env),) = calls(out)
    assert summary["counts"] == {"failed": 1, "current": 1}
    assert env == ["1", "0", "1"]
    assert by_name(summary)[("bad.notify.test", "ec")]["failure"]["kind"] == "validation"
    # The file written afterwards also records the hook.
    written = read_summary(tmp_path / "run.json")
    assert written["notify"] == [{"hook": f"notify hook `{recorder(out)}`", "ok": True,
                                  "error": None}]


def test_notify_always_runs_after_a_good_run_and_a_failing_hook_makes_exit_1(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    out = tmp_path / "hook"
    out.mkdir()
    conf = make_conf(tmp_path, "always.notify.test\n", extra_conf={
        "keyTypes": "ec", "notifyAlways": "yes",
        "notify": json.dumps([recorder(out), "echo no route to the pager >&2; exit 3"])})
    result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    assert result.returncode == 1
    ((summary, env),) = calls(out)
    assert summary["counts"] == {"renewed": 1} and env == ["0", "1", "0"]
    # The run's own result is intact; the hook's failure is one line.
    assert "renewed always.notify.test (EC)" in result.stdout
    (line,) = [x for x in result.stderr.splitlines() if "notify hook" in x]
    assert "exited 3" in line and "no route to the pager" in line
    written = read_summary(tmp_path / "run.json")
    assert written["exit"] == 1 and [h["ok"] for h in written["notify"]] == [True, False]


def test_notify_always_pings_after_every_quiet_cron_run(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    """No quiet-run memo with notifyAlways: a cron run the memo would end still pings."""
    out = tmp_path / "hook"
    out.mkdir()
    conf = make_conf(tmp_path, "ping.notify.test\n", extra_conf={
        "keyTypes": "ec", "notifyAlways": True, "notify": json.dumps([recorder(out)])})
    for _ in range(3):
        result = run_lematt("--test", "--cron", "--config", conf)
        assert result.returncode == 0, result.stderr
    assert [env for _, env in calls(out)] == [["0", "1", "0"], ["0", "0", "0"],
                                              ["0", "0", "0"]]
    assert not (tmp_path / "test" / ".memo" / "quiet").exists()


def test_a_hung_notify_hook_is_stopped_at_its_timeout(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    pidfile = tmp_path / "hook.pid"
    conf = make_conf(tmp_path, "hung.notify.test\n", extra_conf={
        "keyTypes": "ec", "notifyAlways": True, "notifyTimeout": 1,
        "notify": json.dumps([f"sleep 301 & echo $! > {pidfile}; wait"])})
    result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if "notify hook" in x]
    assert "timed out" in line
    assert read_summary(tmp_path / "run.json")["counts"] == {"renewed": 1}
    child = int(pidfile.read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(
        f"/proc/{child}/stat").read_text().split()[2]


def test_notify_config_error_names_file_and_line(tmp_path: Path, make_conf: MakeConf,
                                                 run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "x.notify.test\n", extra_conf={
        "notify": json.dumps([{"ssh": "-oProxyCommand=x", "run": "true"}])})
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"lematt: {conf}:") and "notify" in line
    assert not (tmp_path / "test").exists()


def test_notify_over_ssh_gets_stdin_and_counts(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.4")
    out = tmp_path / "remote-hook"
    out.mkdir()
    conf = make_conf(tmp_path, "ssh.notify.test\n", extra_conf={
        "keyTypes": "ec", "notifyAlways": True, "sshConfig": ssh_client_kit.ssh_config,
        "notify": json.dumps([{"ssh": host.alias, "run": recorder(out)}])})
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 0, result.stderr
    ((summary, env),) = calls(out)
    assert by_name(summary)[("ssh.notify.test", "ec")]["outcome"] == "renewed"
    assert env == ["0", "1", "0"]


def test_notify_over_ssh_to_an_unknown_host_key_is_one_line(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.5")
    ssh_client_kit.forget_host(host.address, host.port)
    conf = make_conf(tmp_path, "unknown.notify.test\n", extra_conf={
        "keyTypes": "ec", "notifyAlways": True, "sshConfig": ssh_client_kit.ssh_config,
        "notify": json.dumps([{"ssh": host.alias, "run": "true"}])})
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 1
    assert "renewed unknown.notify.test (EC)" in result.stdout
    (line,) = [x for x in result.stderr.splitlines() if "notify hook" in x]
    assert "known_hosts" in line or "host key" in line

