"""End-to-end fixtures: one real Pebble per session, its http-01 drop dir, config writers,
sshd hosts and acme2certifier. Only tests under tests/e2e/ can ask for them: no unit test
starts a service.

Fixtures
--------
``pebble``            session: :class:`lematt.testing.pebble.PebbleRig` on the default ports
                      (ACME 14000, management 15000, http-01 5002, DNS 8053, challtestsrv API
                      8055), each plus ``$LEMATT_TEST_PORT_OFFSET`` (default 0).
``challenge_server``  session: static server on 127.0.0.1:<pebble.http_port> serving
                      ``.drop_dir``; lematt's ``challengeDropDir`` writes tokens there.
``make_conf``         function: ``make_conf(tmp_path, domains_text, *, actions_text=None,
                      extra_conf=None, yaml=False) -> Path`` of the written lematt.conf.
``run_lematt``        function: ``run_lematt(*args, timeout=300, env=None)`` runs
                      ``python -m lematt <args>`` from the repository root.

Test names live under ``.test`` (``www.example.test``); challtestsrv resolves every name to
127.0.0.1 unless a test calls ``pebble.add_a(name, "127.0.0.N")`` (undo it with ``clear_a``:
the rig is shared by the whole session). The session challenge server occupies
127.0.0.1:<http_port>, so a test that runs its own responder (lematt's ``challengeListen``, a
forwarder) maps its names to another loopback address and listens there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml as pyyaml

from lematt.testing.pebble import PebbleRig, StaticChallengeServer, pebble_ports, start_pebble

REPO_ROOT = Path(__file__).resolve().parents[2]
# Added to every rig port, so two developers on one machine can run the suite at the same time
# (LEMATT_TEST_PORT_OFFSET=1000 python3 -m pytest -q). Tests must take ports from the fixture.
PORT_OFFSET = int(os.environ.get("LEMATT_TEST_PORT_OFFSET", "0"))
LEMATT_TIMEOUT = 300.0  # seconds; a hung run must fail the test, not the CI job
# The suite reads lematt's lines as a terminal shows them; without a terminal lematt would put a
# timestamp in front of each (README "Logging"). tests/e2e/test_operator_records.py checks the
# shapes themselves by setting LEMATT_LOG_FORMAT for its runs.
os.environ.setdefault("LEMATT_LOG_FORMAT", "plain")


@dataclass
class ChallengeDrop:
    """The session's http-01 responder: files put in ``drop_dir`` are what Pebble fetches."""

    drop_dir: Path
    server: StaticChallengeServer


MakeConf = Callable[..., Path]
RunLematt = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleRig]:
    rig = start_pebble(tmp_path_factory.mktemp("pebble"), **pebble_ports(PORT_OFFSET))
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture(scope="session")
def challenge_server(pebble: PebbleRig,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallengeDrop]:
    drop_dir = tmp_path_factory.mktemp("challenge-drop")
    with StaticChallengeServer(drop_dir, "127.0.0.1", pebble.http_port) as server:
        yield ChallengeDrop(drop_dir=drop_dir, server=server)


def _ini_value(value: Any) -> str:
    # INI has no types; spell booleans and lists the way humans write them in lematt.conf.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(_ini_value(item) for item in value)
    return str(value)


def _yaml_value(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def write_conf(conf_dir: Path, settings: Mapping[str, Any], domains_text: str, *,
               actions_text: str | None = None, yaml: bool = False) -> Path:
    """Write lematt.conf (``[config]`` INI, or a YAML ``config:`` mapping), ``domains`` and
    optionally ``actions.conf`` into ``conf_dir``; a ``None`` setting is left out."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    items = {key: value for key, value in settings.items() if value is not None}
    conf = conf_dir / "lematt.conf"
    if yaml:
        # Same section name as the INI form, so one loader maps both the same way.
        data = {"config": {key: _yaml_value(value) for key, value in items.items()}}
        conf.write_text(pyyaml.safe_dump(data, sort_keys=False))
    else:
        lines = ["[config]", *(f"{key} = {_ini_value(value)}" for key, value in items.items())]
        conf.write_text("\n".join(lines) + "\n")
    (conf_dir / "domains").write_text(domains_text)
    if actions_text is not None:
        (conf_dir / "actions.conf").write_text(actions_text)
    return conf


@pytest.fixture
def make_conf(pebble: PebbleRig, challenge_server: ChallengeDrop) -> MakeConf:
    """Factory writing a lematt config that points at the session Pebble and drop dir."""

    def make(tmp_path: Path, domains_text: str, *, actions_text: str | None = None,
             extra_conf: dict[str, Any] | None = None, yaml: bool = False) -> Path:
        settings: dict[str, Any] = {
            "challengeDropDir": challenge_server.drop_dir,
            "accountKey": tmp_path / "account.key",
            "directoryTest": pebble.directory_url,
            "directoryProd": pebble.directory_url,
            "caBundle": pebble.ca_bundle,
        }
        settings.update(extra_conf or {})
        return write_conf(tmp_path, settings, domains_text, actions_text=actions_text,
                          yaml=yaml)

    return make


@pytest.fixture
def run_lematt() -> RunLematt:
    """Factory running ``python -m lematt <args>``; returns the CompletedProcess (text)."""

    def run(*args: str | os.PathLike[str], timeout: float = LEMATT_TIMEOUT,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lematt", *map(str, args)]
        full_env = {**os.environ, **(env or {})}
        # Own process group: on timeout we kill lematt *and* anything it started (ssh, hooks).
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=10)
            pytest.fail(f"lematt {' '.join(argv[3:])} did not finish within {timeout:.0f} s\n"
                        f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
        except BaseException:
            # pytest-timeout's per-test limit (or Ctrl-C) interrupts communicate(): lematt's
            # group must not outlive the test then either.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    return run


# --------------------------------------------------------------------------- sshd hosts
# Real OpenSSH servers, one per loopback address (127.0.0.2, .3, ... each is one "host"), all on
# port 2222 + $LEMATT_TEST_PORT_OFFSET. Imported here so that this block stands on its own.
from lematt.testing.sshd import ClientKit, SshdRig, start_sshd  # noqa: E402

SSHD_PORT = 2222 + PORT_OFFSET


@dataclass(frozen=True)
class SshHost:
    """What ``sshd_host`` started: connect with ``alias`` through ``ssh_client_kit.ssh_config``
    (HostName/Port/User/IdentityFile/UserKnownHostsFile all written), or with
    ``f"{user}@{address}:{port}"``."""

    address: str
    port: int
    host_key: str  # "ssh-ed25519 AAAA..."
    known_hosts_line: str  # "[127.0.0.2]:2222 ssh-ed25519 AAAA...", already in the kit
    user: str
    alias: str
    rig: SshdRig


SshdHostFactory = Callable[..., SshHost]


@pytest.fixture(scope="session")
def ssh_client_kit(tmp_path_factory: pytest.TempPathFactory) -> ClientKit:
    """Session: client ed25519 key, known_hosts and ssh config (``lematt.testing.sshd.ClientKit``).

    Shared by every test: ``sshd_host`` (re)writes the entries of the hosts it starts; a test
    that breaks an entry on purpose (``forget_host``, a wrong key) breaks only its own host.
    """
    return ClientKit.create(tmp_path_factory.mktemp("ssh-client"))


@pytest.fixture
def sshd_host(ssh_client_kit: ClientKit,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdHostFactory]:
    """Factory ``sshd_host(address, *, forced_command=None, alias=None) -> SshHost``.

    Starts sshd on ``address:SSHD_PORT`` trusting the kit's key (with
    ``restrict,command="<forced_command>"`` when given), records its host key in the kit's
    known_hosts and writes ``Host <alias>`` (default ``host-127-0-0-N``) into the kit's ssh
    config. Every sshd started is stopped at the end of the test.
    """
    rigs: list[SshdRig] = []

    def start(address: str, *, forced_command: str | None = None,
              alias: str | None = None) -> SshHost:
        key_line = ssh_client_kit.public_line
        if forced_command is not None:
            quoted = forced_command.replace("\\", "\\\\").replace('"', '\\"')
            key_line = f'restrict,command="{quoted}" {key_line}'
        rig = start_sshd(tmp_path_factory.mktemp(f"sshd-{address}"), address, SSHD_PORT,
                         authorized_keys=[key_line])
        rigs.append(rig)
        ssh_client_kit.add_known_host(address, rig.port, rig.host_key)
        name = ssh_client_kit.add_alias(alias or f"host-{address.replace('.', '-')}",
                                        address, rig.port)
        return SshHost(address=address, port=rig.port, host_key=rig.host_key,
                       known_hosts_line=rig.known_hosts_line, user=rig.user, alias=name,
                       rig=rig)

    try:
        yield start
    finally:
        for rig in rigs:
            rig.stop()


# --------------------------------------------------------------------------- acme2certifier
# A second, real ACME CA (acme2certifier, pinned in the test extra) on 127.0.0.1:14500 +
# $LEMATT_TEST_PORT_OFFSET (14100-14400 are taken by test_rig's and test_ca_behaviour's own CAs),
# resolving names through the session Pebble's challtestsrv, so ``pebble.add_a(name,
# "127.0.0.N")`` steers its http-01 requests too: they always go to port 80 of that address
# (see lematt/testing/acme2certifier.py). Imported here so that this block stands on its own.
from lematt.testing.acme2certifier import A2cRig, start_acme2certifier  # noqa: E402

A2C_PORT = 14500 + PORT_OFFSET


def port80_address(host: int) -> str:
    """The loopback address 127.X.Y.``host`` for a responder on port 80, X.Y from the offset.

    Port 80 is the one port the offset cannot move: acme2certifier validates http-01 on port
    80 of the name's address and has no setting to change that. So the address moves instead:
    offset 0 gives 127.0.0.``host``, and suites with different offsets listen on different
    addresses (all of 127.0.0.0/8 is loopback) instead of taking each other's port 80.
    """
    return f"127.{(PORT_OFFSET >> 8) & 0xFF}.{PORT_OFFSET & 0xFF}.{host}"


@pytest.fixture(scope="session")
def acme2certifier(pebble: PebbleRig,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[A2cRig]:
    """Session: :class:`lematt.testing.acme2certifier.A2cRig` with the openssl handler's
    default lifetime (365 days), no EAB, no profiles, ARI on. A missing package fails, it does
    not skip: CI installs it with the test extra, so its absence is a broken setup."""
    missing: str | None = None
    try:
        rig = start_acme2certifier(tmp_path_factory.mktemp("acme2certifier"), port=A2C_PORT,
                                   dns_server=("127.0.0.1", pebble.dns_port))
    except RuntimeError as exc:
        if "pip install" not in str(exc):
            raise  # RigError (a RuntimeError too): keep its traceback and log tail
        missing = str(exc)
    if missing is not None:  # outside the except: one clean message, no chained traceback
        pytest.fail(missing, pytrace=False)
    try:
        yield rig
    finally:
        rig.stop()
