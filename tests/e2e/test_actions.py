"""actions run through the local runner: real ``/bin/sh`` processes and their process groups
(the unit part, without processes, is tests/unit/test_actions.py)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from lematt.deploy.hosts import run_host
from lematt.deploy.plan import LOCAL, Step
from lematt.execution import CommandResult
from lematt.execution.local import LocalRunner


@pytest.mark.anyio
async def test_failed_upload_skips_updates(tmp_path: Path) -> None:
    marker = tmp_path / "updated"
    steps = [Step("uploadCerts", "s", LOCAL, "echo oops >&2; exit 3"),
             Step("update", "s", LOCAL, f"touch '{marker}'")]
    runner = LocalRunner()

    async def execute(step: Step) -> CommandResult:
        assert step.command is not None
        return await runner.run(step.command, timeout=30)

    outcomes = await run_host(execute, steps)
    assert outcomes[0].result is not None and outcomes[0].result.exit_status == 3
    assert "oops" in str(outcomes[0].failure)
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
