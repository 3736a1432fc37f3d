"""The Pebble rig without Pebble: a missing binary is a failure that says what to install (the
rig itself, running: tests/e2e/test_rig.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lematt.testing.pebble import start_pebble


def test_missing_binary_is_a_failure_naming_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install pebble"):
        start_pebble(tmp_path)
