"""actions: sections, placeholder quoting, step order and dedup, prepare commands."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from lematt.actions import Step, deploy_steps, prepare_commands, run_steps
from lematt.config import Actions, CertLine, Section, Settings
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


def test_steps_uploads_first_then_distinct_updates(store: Store) -> None:
    steps = deploy_steps(ACTIONS, [A, MAIL], store)
    kinds = [s.kind for s in steps]
    assert kinds == ["uploadCerts", "uploadKeys", "update", "update", "update"]
    certdir = str(store.cert_dir())
    assert steps[0] == Step("uploadCerts", "default",
                            f"cp '{certdir}/a.example.com'* '{certdir}/www.a.example.com'* /srv")
    assert steps[1].section == "every"
    assert steps[1].command.count("*") == 3  # every renewed cert's names
    updates = [s.command for s in steps[2:]]
    assert updates == ["reload nginx", "reload postfix mail.example.com",
                       "log a.example.com www.a.example.com mail.example.com"]


def test_only_sections_of_renewed_certs_run(store: Store) -> None:
    steps = deploy_steps(ACTIONS, [MAIL], store)
    assert {s.section for s in steps} == {"override-mail", "every"}


def test_prepare_one_per_name_with_domain_quoted() -> None:
    assert prepare_commands(ACTIONS, MAIL) == ["fwd mail.example.com"]
    assert prepare_commands(ACTIONS, A) == []


@pytest.mark.anyio
async def test_failed_upload_skips_updates(tmp_path: Path) -> None:
    marker = tmp_path / "updated"
    steps = [Step("uploadCerts", "s", "echo oops >&2; exit 3"),
             Step("update", "s", f"touch '{marker}'")]
    outcomes = await run_steps(LocalRunner(), steps, timeout=30)
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
