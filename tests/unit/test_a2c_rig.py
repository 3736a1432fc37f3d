"""The acme2certifier rig without acme2certifier: a missing package is a failure with the
install hint, before anything is written or started (the rig itself, running:
tests/e2e/test_a2c_rig.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lematt.testing import acme2certifier as a2c_rig
from lematt.testing.acme2certifier import start_acme2certifier


def test_missing_package_is_a_runtime_error_with_the_install_hint(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(a2c_rig, "A2C_MODULE", "acme2certifier_not_installed_here")
    with pytest.raises(RuntimeError, match="pip install acme2certifier"):
        # No port: the package check stops it before anything would listen.
        start_acme2certifier(tmp_path)
    assert not (tmp_path / "acme_srv.cfg").exists()  # nothing started, nothing written
