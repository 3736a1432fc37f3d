"""Owed deploys: recorded with the pair's commit, planned per host from the config, cleared per
host only when that host succeeded (the deploys themselves run in tests/e2e)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from lematt import crypto
from lematt.config import Actions, Config, Section, Settings, SshRun, SshUpload
from lematt.deploy.deployer import Deployer
from lematt.deploy.hosts import HostStep
from lematt.deploy.plan import LOCAL, hosts_for
from lematt.model import CertLine
from lematt.report import Reporter
from lematt.store.pending import PendingDeploys
from lematt.store.tree import NewPair, Store
from lematt.testing.certs import LocalCA

A = CertLine(1, ("a.example.com",))
B = CertLine(2, ("b.example.com", "www.b.example.com"))
MAIL = CertLine(3, ("mail.example.com",))
ACTIONS = Actions(
    default=Section("default", upload_certs=(SshUpload("web", "/etc/ssl"),),
                    update=("reload nginx",)),
    overrides=(Section("override-mail", domains=frozenset({"mail.example.com"}),
                       update=(SshRun("mail", "systemctl reload postfix"),)),),
)


def resolve(dest: str) -> str:
    return f"[{dest}]:22"


def test_the_hosts_a_line_owes_come_from_its_sections() -> None:
    assert hosts_for(ACTIONS, A, resolve) == ["[web]:22", LOCAL]
    assert hosts_for(ACTIONS, MAIL, resolve) == ["[mail]:22"]
    assert hosts_for(Actions(), A, resolve) == []


def test_pending_file_add_settle_and_an_earlier_lematts_form(tmp_path: Path) -> None:
    pending = PendingDeploys(tmp_path)
    assert pending.load() == {}
    pending.add([A.names, B.names])
    assert pending.load() == {A.names: None, B.names: None}
    before = pending.load()
    pending.add([MAIL.names])  # stored while the deploy ran: kept whatever it settles
    pending.settle(before, {A.names: frozenset({"[web]:22"}), B.names: frozenset()})
    assert pending.load() == {A.names: frozenset({"[web]:22"}), MAIL.names: None}
    pending.add([A.names])  # a new pair of A owes every host again
    assert pending.load()[A.names] is None
    pending.settle(pending.load(), {})
    assert not pending.path.exists()
    # Written by lematt before this format: host -> the names of each line it is owed.
    pending.path.write_text(json.dumps({"[web]:22": [list(A.names)], LOCAL: [list(A.names)]}))
    assert pending.load() == {A.names: frozenset({"[web]:22", LOCAL})}
    pending.path.write_text("{garbage")
    with pytest.raises(Exception, match="remove it and run lematt again"):
        pending.load()


def test_a_commit_writes_down_the_deploys_its_pairs_owe(tmp_path: Path) -> None:
    store = Store(Settings(conf_dir=tmp_path, account_key=tmp_path / "k"), test=False)
    pairs = []
    for line, owes in ((A, True), (B, False)):
        key = crypto.load_private_key(crypto.generate_private_pem("ec"))
        chain = LocalCA().issue_days(key, line.names, datetime(2026, 1, 1, tzinfo=UTC), 1)
        pairs.append(NewPair(line, "ec", crypto.private_key_pem(key),
                             crypto.csr_pem(crypto.make_csr(key, line.names)), chain, owes))
    store.commit_many(pairs)
    assert store.pending.load() == {A.names: None}


def _deployer(tmp_path: Path, owed: dict[tuple[str, ...], frozenset[str] | None],
              lines: tuple[CertLine, ...] = (A, B, MAIL)) -> Deployer:
    settings = Settings(conf_dir=tmp_path, account_key=tmp_path / "k")
    config = Config(settings, lines, ACTIONS)
    store = Store(settings, test=False)
    store.ensure_dirs()
    deployer = Deployer(config, store, Reporter(cron=True), None, owed)
    deployer._resolve = resolve  # type: ignore[method-assign]
    return deployer


def test_plan_sends_each_host_only_the_lines_it_is_owed(tmp_path: Path) -> None:
    owed = {A.names: None, B.names: frozenset({LOCAL}), MAIL.names: frozenset({"[gone]:22"}),
            ("not.configured.example.com",): None}
    plans, targets = _deployer(tmp_path, owed).plan([A])
    assert targets == {A.names: frozenset({"[web]:22", LOCAL}), B.names: frozenset({LOCAL}),
                       MAIL.names: frozenset()}
    assert set(plans) == {"[web]:22", LOCAL}
    web_upload = plans["[web]:22"][0]
    assert web_upload.kind == "uploadCerts" and web_upload.files == ()  # no files on disk
    local = [s.command for s in plans[LOCAL]]
    assert local == ["reload nginx"]


def test_a_host_is_cleared_only_when_all_its_steps_succeeded(tmp_path: Path) -> None:
    deployer = _deployer(tmp_path, {A.names: None, B.names: None})
    deployer.store.pending.add([A.names, B.names])
    plans, targets = deployer.plan([A, B])
    results = {"[web]:22": [HostStep(plans["[web]:22"][0], None)],
               LOCAL: [HostStep(plans[LOCAL][0], None, failure=_failure())]}
    deployer._finish(plans, results, targets)
    assert deployer.store.pending.load() == {A.names: frozenset({LOCAL}),
                                             B.names: frozenset({LOCAL})}


def test_a_deploy_that_never_finished_for_a_host_stays_owed(tmp_path: Path) -> None:
    deployer = _deployer(tmp_path, {A.names: None})
    deployer.store.pending.add([A.names])
    plans, targets = deployer.plan([A])
    deployer._finish(plans, {LOCAL: [HostStep(plans[LOCAL][0], None)]}, targets)
    assert deployer.store.pending.load() == {A.names: frozenset({"[web]:22"})}


def _failure() -> object:
    from lematt.model import Failure, FailureKind

    return Failure(FailureKind.DEPLOY, "local: `reload nginx` exited 1")


def test_nothing_to_deploy_clears_void_debts(tmp_path: Path) -> None:
    deployer = _deployer(tmp_path, {("not.configured.example.com",): None}, lines=(A,))
    deployer.store.pending.add([("not.configured.example.com",)])
    report = anyio.run(deployer.run, [])
    assert report.steps == [] and deployer.store.pending.load() == {}


def test_owed_deploys_lists_each_configured_line_and_the_hosts_it_is_owed_to(
        tmp_path: Path) -> None:
    """What ``lematt status`` shows: per line, the hosts (resolved key, name as written)."""
    from lematt.deploy.owed import OwedDeploy, owed_deploys

    settings = Settings(conf_dir=tmp_path, account_key=tmp_path / "k")
    config = Config(settings, (A, B, MAIL), ACTIONS)
    store = Store(settings, test=False)
    store.ensure_dirs()
    assert owed_deploys(config, store, resolve) == []  # no pending file
    store.pending.add([MAIL.names, A.names, ("not.configured.example.com",)])
    store.pending.settle({}, {B.names: frozenset({LOCAL, "[gone]:22"})})
    assert owed_deploys(config, store, resolve) == [
        OwedDeploy(A, (("[web]:22", "web"), (LOCAL, LOCAL)), True),
        OwedDeploy(B, ((LOCAL, LOCAL),), False),  # [gone]:22 is named by no action now
        OwedDeploy(MAIL, (("[mail]:22", "mail"),), True)]
