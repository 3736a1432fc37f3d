"""SSH destinations and config without a server: parsing, ``ssh_config`` resolution, what is
refused before any connection; the sshd rig's missing-binary message and run-id setting
(against real sshd on loopback: tests/e2e/test_ssh_runner.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lematt.errors import ConfigError, RemoteError
from lematt.execution.ssh import SshPool
from lematt.execution.ssh_config import SshDestination
from lematt.testing import RUN_ID_ENV
from lematt.testing import sshd as sshd_rig


@pytest.mark.parametrize(("text", "user", "host", "port"), [
    ("web", None, "web", None),
    ("deploy@web", "deploy", "web", None),
    ("root@192.0.2.7:2200", "root", "192.0.2.7", 2200),
    ("[::1]:2222", None, "::1", 2222),
    ("admin@[fe80::1]:22", "admin", "fe80::1", 22),
    ("::1", None, "::1", None),
    ("mail_reload", None, "mail_reload", None),
])
def test_parse_destination(text: str, user: str | None, host: str, port: int | None) -> None:
    parsed = SshDestination.parse(text)
    assert (parsed.explicit_user, parsed.host, parsed.explicit_port) == (user, host, port)
    assert parsed.written == text


@pytest.mark.parametrize("text", ["", "a b", "user@", "host:", "host:ssh", "host:0",
                                  "host:70000", "[::1", "[::1]x", "[::1]:", "a/b"])
def test_parse_destination_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="SSH destination"):
        SshDestination.parse(text)


def test_resolve_through_ssh_config(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host web web-reload\n    HostName 127.0.0.2\n    Port 2222\n"
                      "    User deploy\n    IdentityFile ~/keys/web\n"
                      "    UserKnownHostsFile /k/one /k/two\n"
                      "Host open\n    HostName 127.0.0.3\n    UserKnownHostsFile none\n")
    web = SshDestination.resolve("web", config)
    assert (web.address, web.port, web.user) == ("127.0.0.2", 2222, "deploy")
    assert web.identity_files == ("~/keys/web",) and web.known_hosts == ("/k/one", "/k/two")
    # What the destination itself says wins over the file, as on the ssh command line.
    other = SshDestination.resolve("root@web-reload:2200", config)
    assert (other.user, other.port) == ("root", 2200)
    # Two names of one machine are one host for ordering, also when written as an address.
    assert web.host_key() == SshDestination.resolve("web-reload", config).host_key()
    assert web.host_key() == SshDestination.resolve("127.0.0.2:2222", config).host_key()
    assert web.host_key() == "[127.0.0.2]:2222" and web.connection_key() != other.connection_key()
    assert SshDestination.resolve("open", config).known_hosts == ()
    assert SshDestination.resolve("elsewhere", config).known_hosts == ("~/.ssh/known_hosts",)
    config.write_text("Host web\n    Port many\n")
    with pytest.raises(ConfigError, match="line 2"):
        SshDestination.resolve("web", config)


@pytest.mark.anyio
async def test_known_hosts_none_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host open\n    HostName 127.0.0.9\n    UserKnownHostsFile none\n")
    async with SshPool() as pool:
        with pytest.raises(RemoteError, match="UserKnownHostsFile none") as caught:
            await pool.runner(SshDestination.resolve("open", config)).run("true")
    assert "never" in str(caught.value)
    assert pool.connections_opened == 0


def test_missing_sshd_says_how_to_install(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sshd_rig, "SSHD", str(tmp_path / "no-sshd"))
    with pytest.raises(RuntimeError, match="apt-get install openssh-server"):
        # No port: the missing binary stops it before anything would listen.
        sshd_rig.start_sshd(tmp_path, "127.0.0.2")


def test_sshd_rig_passes_a_plain_run_id_on_to_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    assert sshd_rig._run_id_setting() == ""
    monkeypatch.setenv(RUN_ID_ENV, "ci-123-4567")
    assert sshd_rig._run_id_setting() == f"SetEnv {RUN_ID_ENV}=ci-123-4567\n"
    monkeypatch.setenv(RUN_ID_ENV, "two words")  # would need quoting in sshd_config
    with pytest.raises(ValueError, match=RUN_ID_ENV):
        sshd_rig._run_id_setting()
