"""actions: sections, placeholder quoting, step order and dedup, prepare commands."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from lematt.actions import LOCAL, Step, deploy_plan, forwarders, prepare_commands, run_host
from lematt.config import Actions, CertLine, Section, Settings, SshForward, SshRun, SshUpload
from lematt.execution.local import LocalRunner
from lematt.store import Store

A = CertLine(1, ("a.example.com", "www.a.example.com"))
MAIL = CertLine(2, ("mail.example.com",))
ACTIONS = Actions(
    default=Section("default", upload_certs=("cp CERTS /srv",), update=("reload nginx",)),
    every=Section("every", upload_keys=("push KEYS",), update=("reload nginx", "log DOMAINS_ALL")),
    overrides=(Section("override-mail", domains=frozenset({"mail.example.com"}),
                       prepare=("fwd DOMAIN",), update=("reload postfix DOMAINS_CN",)),),
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(Settings(conf_dir=tmp_path / "my conf", account_key=tmp_path / "k"), test=False)


def hosts_of(dest: str) -> str:
    """Stand-in resolver: aliases web-a and web-b are one machine."""
    return {"web-a": "[127.0.0.2]:2222", "web-b": "[127.0.0.2]:2222"}.get(dest, dest)


def test_steps_uploads_first_then_distinct_updates(store: Store) -> None:
    plan = deploy_plan(ACTIONS, [A, MAIL], store, hosts_of)
    assert list(plan) == [LOCAL]
    steps = plan[LOCAL]
    kinds = [s.kind for s in steps]
    assert kinds == ["uploadCerts", "uploadKeys", "update", "update", "update"]
    certdir = str(store.cert_dir())
    assert steps[0] == Step("uploadCerts", "default", LOCAL,
                            f"cp '{certdir}/a.example.com'* '{certdir}/www.a.example.com'* /srv")
    assert steps[1].section == "every"
    assert steps[1].command.count("*") == 3  # every renewed cert's names
    updates = [s.command for s in steps[2:]]
    assert updates == ["reload nginx", "reload postfix mail.example.com",
                       "log a.example.com www.a.example.com mail.example.com"]


def test_only_sections_of_renewed_certs_run(store: Store) -> None:
    steps = deploy_plan(ACTIONS, [MAIL], store, hosts_of)[LOCAL]
    assert {s.section for s in steps} == {"override-mail", "every"}


def test_two_aliases_of_one_host_share_one_queue(store: Store) -> None:
    actions = Actions(default=Section(
        "default",
        upload_certs=(SshUpload("web-a", "/etc/ssl"),),
        upload_keys=(SshUpload("web-b", "/etc/ssl/private"),),
        update=(SshRun("web-b", "reload DOMAINS_CN"), SshRun("web-a"), "echo local",
                SshRun("web-b", "reload DOMAINS_CN")),
    ))
    plan = deploy_plan(actions, [A], store, hosts_of)
    assert list(plan) == ["[127.0.0.2]:2222", LOCAL]
    remote = plan["[127.0.0.2]:2222"]
    assert [(s.kind, s.destination, s.command) for s in remote] == [
        ("uploadCerts", "web-a", None), ("uploadKeys", "web-b", None),
        ("update", "web-b", "reload a.example.com"), ("update", "web-a", None)]
    assert remote[0].remote_dir == "/etc/ssl"
    assert [s.command for s in plan[LOCAL]] == ["echo local"]


def test_forwarders_once_per_line() -> None:
    fwd = SshForward("web-a", "http://central.example.com")
    actions = Actions(default=Section("default", prepare=(fwd, "local DOMAIN")),
                      every=Section("every", prepare=(fwd,)))
    assert forwarders(actions, A) == [fwd]
    assert prepare_commands(actions, A) == ["local a.example.com", "local www.a.example.com"]


def test_prepare_one_per_name_with_domain_quoted() -> None:
    assert prepare_commands(ACTIONS, MAIL) == ["fwd mail.example.com"]
    assert prepare_commands(ACTIONS, A) == []


@pytest.mark.anyio
async def test_failed_upload_skips_updates(tmp_path: Path) -> None:
    marker = tmp_path / "updated"
    steps = [Step("uploadCerts", "s", LOCAL, "echo oops >&2; exit 3"),
             Step("update", "s", LOCAL, f"touch '{marker}'")]
    runner = LocalRunner()

    async def execute(step: Step) -> object:
        assert step.command is not None
        return await runner.run(step.command, timeout=30)

    outcomes = await run_host(execute, steps)
    assert outcomes[0].result is not None and outcomes[0].result.exit_status == 3
    assert "oops" in (outcomes[0].error or "")
    assert outcomes[1].result is None and not marker.exists()


@pytest.mark.anyio
async def test_run_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The shell starts a child that would outlive a plain kill of the shell.
    result = await LocalRunner().run(f"sleep 300 & echo $! > '{pidfile}'; wait", timeout=1)
    assert result.exit_status is None
    child = int(pidfile.read_text())
    with anyio.fail_after(10):
        while Path(f"/proc/{child}").exists() and "zombie" not in _state(child):
            await anyio.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


@pytest.mark.anyio
async def test_background_is_stopped_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    async with LocalRunner().background(f"sleep 300 & echo $! > '{pidfile}'; wait"):
        with anyio.fail_after(10):
            while not pidfile.exists() or not pidfile.read_text().strip():
                await anyio.sleep(0.02)
        child = int(pidfile.read_text())
        assert "zombie" not in _state(child)
    with anyio.fail_after(10):
        while Path(f"/proc/{child}").exists() and "zombie" not in _state(child):
            await anyio.sleep(0.05)
