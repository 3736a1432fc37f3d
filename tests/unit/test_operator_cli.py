"""Operator command line: ``lematt plan`` (in-process: it contacts nothing, so it is a unit
test), --only / --force / --no-deploy, --version, --help, and where lematt.conf is looked for."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pytest

# Imported now, not inside a test: asyncssh's import asks ldconfig (a subprocess) about
# optional libraries, which the unit tests' guard refuses.
import lematt.execution.ssh_config  # noqa: F401
from lematt import config as config_mod
from lematt import crypto
from lematt.cli import main
from lematt.deploy.deployer import Deployer
from lematt.errors import ConfigError
from lematt.locate import ENV_VAR
from lematt.model import CertLine
from lematt.report import Reporter
from lematt.store.tree import Store
from lematt.survey import FORCED, select_lines
from lematt.testing.certs import LocalCA
from tests.trees import snapshot

DOMAINS = "cur.plan.test www\nnew.plan.test\n"
ACTIONS = """[default]
prepare: ["echo DOMAIN"]
uploadCerts: ["cp CERTS /nonexistent/"]
update: ["echo reload", {"ssh": "root@127.0.0.1:9", "run": "reload"}]
"""


def write_conf(conf_dir: Path, domains: str = DOMAINS) -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "lematt.conf"
    # A CA that nothing listens on: plan must not need it.
    conf.write_text("[config]\naccountKey = account.key\nchallengeDropDir = drop\n"
                    "directoryTest = https://127.0.0.1:9/directory\n")
    (conf_dir / "domains").write_text(domains)
    (conf_dir / "actions.conf").write_text(ACTIONS)
    return conf


def store_current(conf: Path) -> Store:
    """Store current RSA and EC pairs for the first line (the second stays missing)."""
    config = config_mod.load(conf)
    store = Store(config.settings, test=True)
    store.ensure_dirs()
    ca, line = LocalCA(), config.lines[0]
    for kt in config.settings.key_types:
        key = crypto.load_private_key(crypto.generate_private_pem(kt))
        store.commit(line, kt, key_pem=crypto.private_key_pem(key),
                     csr_pem=crypto.csr_pem(crypto.make_csr(key, line.names)),
                     chain_pem=ca.issue_days(key, line.names, datetime.now(UTC), 1))
    return store




def test_plan_lists_due_certificates_steps_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path / "conf")
    store = store_current(conf)
    # An earlier run's deploy reached every host but local.
    store.pending.settle({}, {("cur.plan.test", "www.cur.plan.test"): frozenset({"local"})})
    before = snapshot(tmp_path)
    assert main(["--test", "plan", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "due: new.plan.test (RSA): missing" in out
    assert "due: new.plan.test (EC): missing" in out
    assert "cur.plan.test (RSA)" not in out and "current: 2 of 4 certificate(s)" in out
    assert "prepare for new.plan.test: echo new.plan.test" in out
    # Local steps: the upload of both lines (one due, one owed), then the update once.
    assert "deploy to local: 2 step(s); owed from an earlier run: cur.plan.test" in out
    local = out[out.index("deploy to local"):]
    assert local.index("uploadCerts") < local.index("update: `echo reload`")
    assert "deploy to [127.0.0.1]:9: 1 step(s)" in out
    # Byte for byte, mode and mtime: no index, no lock, no renewal state, no journal.
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "conf" / ".lematt.lock").exists()


def test_plan_json_and_force_with_only(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path / "conf")
    store_current(conf)
    assert main(["--test", "plan", "--config", str(conf), "--json",
                 "--only", "www.cur.plan.test", "--force"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["names"][0], d["key_type"], d["reason"], d["forced"]) for d in data["due"]] == [
        ("cur.plan.test", "rsa", FORCED, True), ("cur.plan.test", "ec", FORCED, True)]
    assert data["certificates"] == 2 and data["deploy_now"] is True
    assert [s["kind"] for s in data["deploy"]["local"]] == ["uploadCerts", "update"]
    assert data["prepare"] == [
        {"lineno": 1, "name": "cur.plan.test", "argv": ["echo", "cur.plan.test"]},
        {"lineno": 1, "name": "cur.plan.test", "argv": ["echo", "www.cur.plan.test"]}]


def test_no_deploy_leaves_what_was_renewed_owed_to_every_host_it_deploys_to(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The commit of a renewed pair wrote its debt down (every host); --no-deploy only says
    so and writes nothing more, beside what was owed already."""
    conf = write_conf(tmp_path / "conf")
    config = config_mod.load(conf)
    store = Store(config.settings, test=True)
    store.ensure_dirs()
    store.pending.settle({}, {("new.plan.test",): frozenset({"local"})})
    line = config.lines[0]
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    store.commit(line, "ec", key_pem=crypto.private_key_pem(key),
                 csr_pem=crypto.csr_pem(crypto.make_csr(key, line.names)),
                 chain_pem=LocalCA().issue_days(key, line.names, datetime.now(UTC), 1),
                 owes_deploy=True)
    owed = store.pending.load()
    assert owed == {("new.plan.test",): frozenset({"local"}), line.names: None}
    capsys.readouterr()
    Deployer(config, store, Reporter(cron=True), None, owed).defer([line])
    assert store.pending.load() == owed
    said = capsys.readouterr().out
    assert "not deployed (--no-deploy): local is owed 1 line(s)" in said
    assert "not deployed (--no-deploy): [127.0.0.1]:9 is owed 1 line(s)" in said


def test_select_lines_by_any_name_and_refuses_unknown_names() -> None:
    lines = (CertLine(1, ("a.test", "www.a.test")), CertLine(2, ("b.test",)))
    assert select_lines(lines, []) == lines
    assert select_lines(lines, ["WWW.A.test."]) == lines[:1]
    with pytest.raises(ConfigError, match=r"--only nope\.test c\.test: no domains line"):
        select_lines(lines, ["a.test", "nope.test", "c.test"])


def test_unknown_only_name_is_a_usage_error_before_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path / "conf")
    assert main(["--test", "--only", "nope.plan.test", "--config", str(conf)]) == 2
    assert "--only nope.plan.test: no domains line carries this name" in capsys.readouterr().err
    assert not (tmp_path / "conf" / "test").exists()
    assert main(["--test", "plan", "--only", "nope.plan.test", "--config", str(conf)]) == 2


@pytest.mark.parametrize(("argv", "said"), [
    (["--test", "--force"], "--force needs --only"),
    (["--test", "plan", "--force"], "--force needs --only"),
    (["--test", "--only", "a.test", "plan"], "a command goes before --only"),
])
def test_force_needs_only_and_only_does_not_swallow_a_command(
        argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and said in capsys.readouterr().err


def test_version_needs_no_mode_and_comes_from_the_package(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"lematt {version('lematt')}\n"


def test_help_shows_examples_and_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for text in ("--only", "--force", "--no-deploy", "plan", "account show", "revoke",
                 "status", "--cron"):
        assert text in out.split("examples:")[1]
    codes = out.split("exit status:")[1]
    for code in ("0 ", "1 ", "2 ", "75 ", "130 "):
        assert f"\n  {code}" in codes


# -- where lematt.conf is looked for ---------------------------------------------------------

@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no $LEMATT_CONFIG."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return cwd


def plan_tree(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["--test", "plan", *argv]) == 0
    return capsys.readouterr().out.splitlines()[0]


def test_none_found_lists_every_place_and_exits_2(
        elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--test"], ["--test", "plan"], ["--test", "account", "show"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "$LEMATT_CONFIG (not set)" in err and "./conf/lematt.conf" in err
        assert "/etc/lematt/lematt.conf" in err


def test_lookup_order_config_then_env_then_cwd(
        elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    in_cwd = write_conf(elsewhere / "conf")
    in_env = write_conf(tmp_path / "env")
    given = write_conf(tmp_path / "given")
    assert str(in_cwd.parent / "test") in plan_tree(capsys)
    monkeypatch.setenv(ENV_VAR, str(in_env))
    assert str(in_env.parent / "test") in plan_tree(capsys)
    assert str(given.parent / "test") in plan_tree(capsys, "--config", str(given))
    # A named file that does not exist is an error naming it, never a fallback to ./conf.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone.conf"))
    assert main(["--test", "plan"]) == 2
    assert "gone.conf" in capsys.readouterr().err


def test_plan_says_when_a_run_first_finishes_an_interrupted_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lematt.store.journal import Journal

    conf = write_conf(tmp_path / "conf")
    store = store_current(conf)
    assert main(["--test", "plan", "--config", str(conf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["interrupted_store"] is False
    Journal(store.journal_dir / "pending").write({"renames": [], "links": [], "certs": ["x"]})
    before = snapshot(tmp_path)
    assert main(["--test", "plan", "--config", str(conf)]) == 0
    assert "a run first completes a store an earlier run was interrupted in" in (
        capsys.readouterr().out)
    assert snapshot(tmp_path) == before  # plan does not finish it: the run does
