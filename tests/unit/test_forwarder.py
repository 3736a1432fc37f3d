"""The remote http-01 redirector (forwarder/leforward.py) without running it: its parsers, its
messages, and that it needs nothing but the standard library (the running process, on
loopback: tests/e2e/test_forwarder.py)."""

from __future__ import annotations

import ast
import errno
import sys
from pathlib import Path

import pytest

from forwarder import leforward

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bind_permission_message_explains_low_ports() -> None:
    message = leforward.bind_error_message(errno.EACCES, "[::]:80", 80, "Permission denied")
    assert "permission denied binding port 80" in message
    assert "CAP_NET_BIND_SERVICE" in message
    assert "ip_unprivileged_port_start" in message


def test_good_baseurls_and_listen_addresses_parse() -> None:
    base = leforward.parse_baseurl("HTTPS://Central.Example.test.:8443/")
    assert (base.origin, base.port, base.host_is_ip) == ("https://Central.Example.test.:8443",
                                                         8443, False)
    assert leforward.parse_baseurl("http://[2001:db8::1]").origin == "http://[2001:db8::1]"
    assert leforward.parse_listen(":80") == ("", 80)
    assert leforward.parse_listen("[::]:8080") == ("::", 8080)
    assert leforward.parse_listen("127.0.0.4:0") == ("127.0.0.4", 0)


@pytest.mark.parametrize("name", ["leforward.py", "__init__.py", "__main__.py"])
def test_forwarder_imports_only_the_standard_library(name: str) -> None:
    tree = ast.parse((REPO_ROOT / "forwarder" / name).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and name == "leforward.py":
            pytest.fail("leforward.py must stay one self-contained file: no relative imports")
    assert modules
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)
