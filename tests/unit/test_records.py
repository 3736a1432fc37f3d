"""Operator records without a run: the summary codec, line shapes, the log file, ``notify``
in lematt.conf and when hooks run (no network, no subprocess)."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lematt import logs
from lematt.config import load
from lematt.config.types import SshRun
from lematt.errors import AcmeProblem, ConfigError, LockError, StoreError
from lematt.model import (
    CertInfo,
    CertLine,
    CertRecord,
    Failure,
    FailureKind,
    Found,
    Job,
    Outcome,
    RunResult,
    StepOutcome,
    outcome_from_json,
    outcome_to_json,
    serial_of,
)
from lematt.records import notify, summary
from lematt.report import Reporter

BASE = "[config]\naccountKey: account.key\nchallengeDropDir: challenges\n"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# --------------------------------------------------------------------------- the summary

def test_failure_keeps_the_cas_problem_detail_and_retry_after_through_the_codec() -> None:
    problem = AcmeProblem("urn:ietf:params:acme:error:rateLimited", "too many certificates",
                          429, context="newOrder", retry_after=3600.0)
    failure = Failure.of(problem)
    assert failure.kind is FailureKind.RATE_LIMITED
    assert (failure.problem, failure.detail, failure.retry_after) == (
        "urn:ietf:params:acme:error:rateLimited", "too many certificates", 3600.0)
    assert Failure.from_json(json.loads(json.dumps(failure.to_json()))) == failure


def test_lock_error_is_its_own_kind() -> None:
    assert Failure.of(LockError("another lematt run")).kind is FailureKind.LOCKED


def test_serial_comes_from_the_ari_cert_id() -> None:
    assert serial_of("AAEC.AQIDBA") == "1020304"
    assert serial_of("") is None and serial_of("only-aki") is None and serial_of("a.!!") is None


def _line(n: int, name: str) -> CertLine:
    return CertLine(n, (name,))


def _record(line: CertLine, cert: CertInfo | None) -> CertRecord:
    return CertRecord(line, "ec", f"/t/key/{line.primary}", f"/t/cert/{line.primary}",
                      Found(cert, None if cert else "missing", cert is not None))


def test_summary_lists_every_certificate_with_its_outcome() -> None:
    old = CertInfo(NOW, NOW.replace(year=2027), frozenset({"a.test"}), cert_id="AA.Cw")
    lines = [_line(1, "renewed.test"), _line(2, "failed.test"), _line(3, "current.test"),
             _line(4, "skipped.test")]
    found = [Found(None, "missing"), Found(old, None, True), Found(old, None, True),
             Found(None, "missing")]
    jobs = [Job(lines[i], "ec", "missing", found[i]) for i in (0, 1, 3)]
    result = RunResult(
        outcomes=[Outcome(jobs[0], changed=True, not_after=NOW, cert_id="AA.Dw"),
                  Outcome(jobs[1], failure=Failure(FailureKind.NETWORK, "no route"))],
        steps=[StepOutcome("default", "update", "web1:22", "reload"),
               StepOutcome("default", "update", "web2:22", "reload",
                           Failure(FailureKind.DEPLOY, "exited 1"))],
        host_seconds={"web1:22": 0.5, "web2:22": 0.25})
    result.certificates = lambda: [_record(lines[i], found[i].cert) for i in range(4)]
    result.jobs = jobs
    data = summary.document(result, "test", 7, exit_status=1, started=NOW, finished=NOW,
                            version="9.9")
    assert (data["schema"], data["lematt"], data["exit"], data["started"]) == (
        1, "9.9", 1, "2026-01-02T03:04:05Z")
    assert data["counts"] == {"renewed": 1, "failed": 1, "current": 1, "skipped": 1}
    entries = {c["names"][0]: c for c in data["certificates"]}
    assert entries["renewed.test"]["serial"] == "f"
    assert entries["failed.test"]["serial"] == "b"  # the stored one, unchanged
    assert entries["failed.test"]["failure"]["kind"] == "network"
    assert entries["current.test"]["paths"] == {"key": "/t/key/current.test",
                                                "cert": "/t/cert/current.test"}
    assert entries["skipped.test"]["reason"] == "missing"
    hosts = data["deploy"]["hosts"]
    assert hosts["web1:22"]["ok"] is True and hosts["web2:22"]["ok"] is False
    assert hosts["web2:22"]["seconds"] == 0.25
    assert hosts["web2:22"]["steps"][0]["failure"]["kind"] == "deploy"


def test_a_run_stopped_before_planning_says_unknown() -> None:
    result = RunResult()
    result.certificates = lambda: [_record(_line(1, "a.test"), None)]
    data = summary.document(result, "prod", 1,
                            Failure(FailureKind.INTERRUPTED, "interrupted"), exit_status=130)
    assert data["interrupted"] is True and data["ok"] is False
    assert [c["outcome"] for c in data["certificates"]] == ["unknown"]


def test_the_order_process_codec_still_round_trips() -> None:
    line = _line(3, "x.test")
    job = Job(line, "rsa", "missing", Found(None, "missing"))
    outcome = Outcome(job, failure=Failure(FailureKind.CA, "bad", "urn:x", "detail", 5.0))
    back = outcome_from_json(job, json.loads(json.dumps(outcome_to_json(outcome))))
    assert back == outcome


def test_summary_write_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "run.json"
    with pytest.raises(StoreError, match=r"cannot write the --json summary .*gone/run\.json"):
        summary.write(target, {"schema": 1})
    summary.write(tmp_path / "run.json", {"schema": 1})
    assert json.loads((tmp_path / "run.json").read_text()) == {"schema": 1}


# --------------------------------------------------------------------------- line shapes

def _record_at(level: int, message: str) -> logging.LogRecord:
    record = logging.LogRecord("lematt", level, __file__, 1, message, None, None)
    record.created = NOW.timestamp()
    return record


@pytest.mark.parametrize(("level", "priority"), [
    (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6), (logging.DEBUG, 7)])
def test_journal_lines_carry_the_sd_daemon_priority(level: int, priority: int) -> None:
    assert logs.format_line("journal", _record_at(level, "m")) == f"<{priority}>m"


def test_every_line_of_a_multi_line_message_gets_the_prefix() -> None:
    record = _record_at(logging.ERROR, "FAILED: prepare printed:\n  | oops")
    assert logs.format_line("journal", record) == "<3>FAILED: prepare printed:\n<3>  | oops"
    assert logs.format_line("timestamp", record).splitlines()[1] == (
        "2026-01-02T03:04:05Z   | oops")


def test_timestamped_and_plain_lines() -> None:
    assert logs.format_line("timestamp", _record_at(logging.INFO, "m")) == (
        "2026-01-02T03:04:05Z m")
    assert logs.format_line("plain", _record_at(logging.INFO, "m")) == "m"


def test_the_journal_is_recognised_by_its_device_and_inode_only() -> None:
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(write_end, "w", closefd=False) as stream:
            st = os.fstat(write_end)
            assert logs.is_journal(stream, f"{st.st_dev}:{st.st_ino}")
            assert not logs.is_journal(stream, f"{st.st_dev}:{st.st_ino + 1}")
            assert not logs.is_journal(stream, None) and not logs.is_journal(stream, "junk")
            assert logs.line_shape(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) \
                == "journal"
            assert logs.line_shape(stream, {}) == "timestamp"  # a pipe
            assert logs.line_shape(stream, {"LEMATT_LOG_FORMAT": "plain"}) == "plain"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_reporter_through_the_logger_routes_streams_and_the_log_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEMATT_LOG_FORMAT", "plain")
    out, err = io.StringIO(), io.StringIO()
    log = tmp_path / "lematt.log"
    old_umask = os.umask(0o077)
    try:
        logs.configure(log_file=log, out=out, err=err)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert logs.log_file_of() == log
    reporter = Reporter(cron=True, test=True)
    reporter.info("quiet progress")
    reporter.change("renewed a.test")
    reporter.warn("careful")
    reporter.failure("b.test")
    assert out.getvalue() == "[TEST] renewed a.test\n"
    assert err.getvalue() == "[TEST] warning: careful\n[TEST] FAILED: b.test\n"
    lines = log.read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "[TEST] quiet progress", "[TEST] renewed a.test", "[TEST] warning: careful",
        "[TEST] FAILED: b.test"]


def test_without_handlers_the_reporter_prints_plainly() -> None:
    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(out=out, err=err)
    reporter.info("progress")
    reporter.failure("x")
    assert (out.getvalue(), err.getvalue()) == ("progress\n", "FAILED: x\n")


def test_an_existing_log_file_is_appended_to(tmp_path: Path) -> None:
    log = tmp_path / "lematt.log"
    log.write_text("earlier\n")
    log.chmod(0o600)
    logs.configure(log_file=log, out=io.StringIO(), err=io.StringIO())
    Reporter().change("now")
    assert log.read_text().splitlines()[0] == "earlier"
    assert log.read_text().splitlines()[1].endswith(" now")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- notify

def _write(tmp_path: Path, conf: str, name: str = "lematt.conf") -> Path:
    (tmp_path / name).write_text(conf)
    (tmp_path / "domains").write_text("example.com\n")
    return tmp_path / name


def test_notify_in_ini_is_a_json_list_of_strings_and_ssh_forms(tmp_path: Path) -> None:
    conf = _write(tmp_path, BASE + 'notify: ["curl -fsS https://hc.example/fail", '
                  '{"ssh": "monitor", "run": "logger lematt failed"}]\nnotifyAlways: yes\n'
                  "notifyTimeout: 15\n")
    s = load(conf).settings
    assert s.notify == ("curl -fsS https://hc.example/fail",
                        SshRun("monitor", "logger lematt failed"))
    assert s.notify_always is True and s.notify_timeout == 15.0


def test_notify_in_yaml_is_a_list(tmp_path: Path) -> None:
    conf = _write(tmp_path, "accountKey: account.key\nchallengeDropDir: challenges\n"
                  "notify:\n  - echo failed\n  - ssh: monitor\n    run: 'true'\n",
                  "lematt.yaml")
    assert load(conf).settings.notify == ("echo failed", SshRun("monitor", "true"))


def test_notify_defaults() -> None:
    from lematt.config.types import Settings

    s = Settings(conf_dir=Path("."), account_key=Path("k"))
    assert (s.notify, s.notify_always, s.notify_timeout) == ((), False, 60.0)


@pytest.mark.parametrize(("value", "words"), [
    ('["a", ', "not valid JSON"),
    ('"echo hi"', "expected a list"),
    ('[""]', "is not a command"),
    ('[{"ssh": "monitor"}]', "needs 'run'"),
    ('[{"ssh": "-oProxyCommand=sh", "run": "x"}]', "not an SSH destination"),
    ('[{"ssh": "monitor", "run": "x", "to": "/tmp"}]', "unknown key 'to'"),
])
def test_bad_notify_names_file_and_line(tmp_path: Path, value: str, words: str) -> None:
    conf = _write(tmp_path, BASE + f"notify: {value}\n")
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert str(info.value).startswith(f"{conf}:4: notify")
    assert words in str(info.value)


def _settings(**kw: object) -> object:
    from lematt.config.types import Settings

    return Settings(conf_dir=Path("."), account_key=Path("k"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("always", "status", "runs"), [
    (False, 0, False), (False, 1, True), (False, 130, True), (False, 75, False),
    (False, 2, False), (True, 0, True), (True, 75, False), (True, 1, True)])
def test_when_hooks_run(always: bool, status: int, runs: bool) -> None:
    settings = _settings(notify=("true",), notify_always=always)
    assert notify.should_run(settings, status) is runs  # type: ignore[arg-type]
    assert notify.should_run(_settings(), 1) is False  # type: ignore[arg-type]


def test_hook_environment_counts_failed_and_renewed() -> None:
    data = {"exit": 1, "mode": "prod", "counts": {"failed": 2, "renewed": 3, "current": 9}}
    assert notify.hook_environment(data) == {"LEMATT_FAILED": "2", "LEMATT_RENEWED": "3",
                                             "LEMATT_EXIT": "1", "LEMATT_MODE": "prod"}


def test_a_crash_still_writes_the_summary_then_shows_the_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lematt import cli
    from lematt.cli import entry

    def broken(*_: object) -> tuple[int, None]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(entry, "_run_main", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["--test", "--config", str(tmp_path / "lematt.conf"),
                  "--json", str(tmp_path / "run.json")])
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["exit"] == 1 and data["failure"]["kind"] == "internal"
