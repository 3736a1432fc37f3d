"""Shared pytest fixtures: one real Pebble per session, its http-01 drop dir, config writers.

Fixtures
--------
``pebble``            session: :class:`tests.rig.PebbleRig` on the default ports (ACME 14000,
                      management 15000, http-01 5002, DNS 8053, challtestsrv API 8055), each
                      plus ``$LEMATT_TEST_PORT_OFFSET`` (default 0).
``challenge_server``  session: static server on 127.0.0.1:<pebble.http_port> serving
                      ``.drop_dir``; lematt's ``challengeDropDir`` writes tokens there.
``make_conf``         function: ``make_conf(tmp_path, domains_text, *, actions_text=None,
                      extra_conf=None, yaml=False) -> Path`` of the written lematt.conf.
``anyio_backend``     session: ``"asyncio"`` for every ``@pytest.mark.anyio`` test.
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

from tests.rig import PebbleRig, StaticChallengeServer, start_pebble

REPO_ROOT = Path(__file__).resolve().parent.parent
# Added to every rig port, so two developers on one machine can run the suite at the same time
# (LEMATT_TEST_PORT_OFFSET=1000 python3 -m pytest -q). Tests must take ports from the fixture.
PORT_OFFSET = int(os.environ.get("LEMATT_TEST_PORT_OFFSET", "0"))
LEMATT_TIMEOUT = 300.0  # seconds; a hung run must fail the test, not the CI job


@dataclass
class ChallengeDrop:
    """The session's http-01 responder: files put in ``drop_dir`` are what Pebble fetches."""

    drop_dir: Path
    server: StaticChallengeServer


MakeConf = Callable[..., Path]
RunLematt = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """lematt runs on asyncio only (aiohttp, asyncssh). anyio's plugin would otherwise also
    run every ``@pytest.mark.anyio`` test under trio wherever trio happens to be installed."""
    return "asyncio"


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleRig]:
    o = PORT_OFFSET
    rig = start_pebble(tmp_path_factory.mktemp("pebble"), acme_port=14000 + o,
                       management_port=15000 + o, http_port=5002 + o, tls_port=5001 + o,
                       dns_port=8053 + o, challtestsrv_port=8055 + o)
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
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    return run
