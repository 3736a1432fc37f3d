"""The Pebble rig without Pebble: a missing binary is a failure that says what to install; the
port scheme (the rig itself, running: tests/e2e/test_rig.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from lematt.testing.pebble import pebble_ports, start_pebble


def test_missing_binary_is_a_failure_naming_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install pebble"):
        start_pebble(tmp_path)


def test_port_offset_moves_every_port_start_pebble_takes() -> None:
    assert pebble_ports(2000) == {"acme_port": 16000, "management_port": 17000,
                                  "http_port": 7002, "tls_port": 7001, "dns_port": 10053,
                                  "challtestsrv_port": 10055}
    ports = {name for name in inspect.signature(start_pebble).parameters
             if name.endswith("_port")}
    assert set(pebble_ports()) == ports
