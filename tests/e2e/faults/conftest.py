"""The fault suite, CA side: lematt against a real Pebble behind the fault proxy.

Why a proxy: every case here is something no honest CA does on purpose - a foreign URL, a
forged chain, an endless body, a reset, a newline in a problem detail - or does only when it
is overloaded (503/429 with Retry-After). Pebble cannot be made to do them, so
``tests.ca_front.CaFront`` sits between lematt and the session Pebble, forwards everything,
and changes only what the test's ``Fault``s (``tests.e2e.faults.kit``) name. Everything else
is Pebble's real answer, and lematt runs as a process exactly as cron runs it.

Each scenario orders two domains lines (EC only, to keep the suite quick): the target
``t.<case>.faults.test``, whose requests the faults act on, and the bystander
``b.<case>.faults.test``, which must be renewed whatever happens to the target. The
``Scenario`` result checks the outcome precisely: the target's one FAILED line (or its
renewal), nothing stored for it, the bystander renewed, no request on a foreign origin, and
every line of output printable (no control character from the CA reached it).

``acmeRequestTimeout`` is 3 s in these configs, so a stalled request is given up quickly.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lematt.testing.pebble import PebbleRig
from tests.ca_front import CaFront
from tests.e2e.conftest import ChallengeDrop, MakeConf, RunLematt
from tests.e2e.faults.kit import Fault
from tests.e2e.test_run import assert_pair, tree

REQUEST_TIMEOUT = 3  # acmeRequestTimeout in the scenarios' configs
CURVE = "prime256v1"


@dataclass
class Scenario:
    result: subprocess.CompletedProcess[str]
    conf: Path
    front: CaFront
    target: str
    bystander: str
    summary: dict[str, Any]
    drop_dir: Path
    drop_before: set[Path]

    @property
    def lines(self) -> list[str]:
        return (self.result.stdout + self.result.stderr).splitlines()

    def target_failure(self) -> str:
        """The target's one FAILED line (and it is the only line about its failure)."""
        failed = [line for line in self.result.stderr.splitlines()
                  if line.startswith(f"[TEST] FAILED: {self.target} ")]
        assert len(failed) == 1, self.result.stderr
        return failed[0]

    def target_json(self) -> dict[str, Any]:
        (entry,) = [c for c in self.summary["certificates"] if c["names"] == [self.target]]
        return entry

    def assert_target_failed(self, *expected: str, kind: str | None = None) -> str:
        assert self.result.returncode == 1, self.result.stderr
        line = self.target_failure()
        for text in expected:
            assert text in line, line
        assert "Traceback" not in self.result.stderr
        if kind is not None:
            assert self.target_json()["failure"]["kind"] == kind, self.target_json()
        self.assert_nothing_stored(self.target)
        return line

    def assert_renewed(self, name: str) -> None:
        assert any(line.startswith(f"[TEST] renewed {name} (EC): valid until")
                   for line in self.result.stdout.splitlines()), self.result.stdout
        t = tree(self.conf)
        assert_pair(t["key"] / f"{name}-key.{CURVE}.test.pem",
                    t["cert"] / f"{name}-cert-combined.{CURVE}.test.pem")

    def assert_nothing_stored(self, name: str) -> None:
        root = self.conf.parent / "test"
        stored = [p for p in root.rglob("*") if name in p.name] if root.exists() else []
        assert stored == [], stored

    def assert_contained(self) -> None:
        """What every scenario must show, whatever its fault."""
        assert self.front.foreign_requests == [], self.front.foreign_requests
        for line in self.lines:
            assert line.isprintable(), repr(line)
        self.assert_no_token_left()
        self.assert_renewed(self.bystander)

    def assert_no_token_left(self) -> None:
        """Every token file this run wrote is gone, and nothing was written beside the drop
        dir (a hostile token like ``../x`` must not escape it)."""
        assert set(self.drop_dir.iterdir()) <= self.drop_before
        assert not (self.drop_dir.parent / "x").exists()


RunFaults = Callable[..., Scenario]
TARGET = "TARGET"  # a Fault's name: the scenario's target line


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:40].strip("-")


@pytest.fixture
def run_faults(tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig,
               challenge_server: ChallengeDrop) -> Iterator[RunFaults]:
    """``run_faults(case, faults, *, extra_conf=None, args=(), bystander=True)``: one lematt
    run through a fresh front carrying ``faults`` (each used as rule and as rewrite) for the
    target ``t.<case>.faults.test`` and the bystander ``b.<case>.faults.test``. A fault
    whose ``name`` is ``TARGET`` acts on the target's orders. ``extra_conf``: settings, or a
    function of the front giving them (to name its port)."""
    fronts: list[CaFront] = []

    def run(case: str, faults: list[Fault], *,
            extra_conf: dict[str, Any] | Callable[[CaFront], dict[str, Any]] | None = None,
            args: tuple[str, ...] = (), bystander: bool = True) -> Scenario:
        name = slug(case)
        target, other = f"t.{name}.faults.test", f"b.{name}.faults.test"
        front = CaFront(pebble.directory_url, pebble.ca_bundle, tmp_path / "front",
                        rules=[f.rule for f in faults], rewrites=[f.rewrite for f in faults])
        fronts.append(front)
        for fault in faults:
            if fault.name == TARGET:
                fault.name = target
        domains = f"{target}\n{other}\n" if bystander else f"{target}\n"
        if callable(extra_conf):  # settings that name the front's port
            extra_conf = extra_conf(front)
        conf = make_conf(tmp_path, domains, extra_conf={
            "directoryTest": front.directory_url, "caBundle": front.ca_bundle,
            "keyTypes": "ec", "acmeRequestTimeout": REQUEST_TIMEOUT, "orderTimeout": 60,
            **(extra_conf or {})})
        summary_path = tmp_path / "summary.json"
        drop_before = set(challenge_server.drop_dir.iterdir())
        with front:
            result = run_lematt("--test", "--config", conf, "--json", summary_path, *args)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        return Scenario(result, conf, front, target, other, summary,
                        challenge_server.drop_dir, drop_before)

    yield run
    for front in fronts:
        front.__exit__(None, None, None)
