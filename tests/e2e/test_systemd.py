"""The shipped systemd units (conf/systemd/) pass `systemd-analyze verify`.

``ExecStart`` names where the README installs lematt (/opt/lematt); systemd checks that the
program exists, so the copy verified here points at this checkout's installed ``lematt``
instead - every other line is verified as shipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT

UNITS = REPO_ROOT / "conf" / "systemd"
SHIPPED_EXEC = "/opt/lematt/bin/lematt"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd", pytrace=False)
    installed = Path(sys.executable).parent / "lematt"
    assert installed.exists(), f"{installed}: install lematt (pip install -e .) first"
    service = (UNITS / "lematt.service").read_text()
    assert SHIPPED_EXEC in service
    (tmp_path / "lematt.service").write_text(service.replace(SHIPPED_EXEC, str(installed)))
    shutil.copy(UNITS / "lematt.timer", tmp_path / "lematt.timer")
    result = subprocess.run([analyze, "verify", "lematt.service", "lematt.timer"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr  # warnings count too
