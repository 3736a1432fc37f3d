"""The run summary (``--json PATH``, ``--json -`` for stdout), on every exit of a run.

Contract: ``build(result, ...)`` is the summary document (README "Run summary"):
``document`` of the run's ``RunResult`` with the run's exit status, times and lematt's
version (the outcomes themselves are encoded by ``model.outcome_to_json``, the codec order
processes exchange them with);
``tallies(summary)`` counts its certificates by outcome; ``write(target, summary)`` writes it
atomically to a file (or to stdout for ``-``) and raises ``StoreError`` naming the path.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lematt.errors import StoreError
from lematt.model import (
    Failure,
    FailureKind,
    RunResult,
    StepOutcome,
    outcome_to_json,
    serial_of,
)
from lematt.store.atomic import write_atomic
from lematt.store.layout import PUBLIC_MODE

STDOUT = Path("-")

# The summary's format (``--json``): raised when a field changes meaning or goes away, not
# when one is added.
SUMMARY_SCHEMA = 1


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _step_json(s: StepOutcome) -> dict[str, Any]:
    return ({"section": s.section, "kind": s.kind, "what": s.what, "host": s.host, "ok": s.ok,
             "error": s.failure.message if s.failure else None,
             "failure": s.failure.to_json() if s.failure else None}
            | ({"verify": s.verified.to_json()} if s.verified else {}))


def lematt_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lematt")
    except PackageNotFoundError:
        return None


def build(result: RunResult, *, mode: str, exit_status: int, error: Failure | None,
          started: datetime, finished: datetime) -> dict[str, Any]:
    return document(result, mode, os.getpid(), error, exit_status=exit_status, started=started,
                    finished=finished, version=lematt_version())


def tallies(summary: dict[str, Any]) -> tuple[int, int]:
    """(failed, renewed) certificates of a summary."""
    counts = summary.get("counts", {})
    return int(counts.get("failed", 0)), int(counts.get("renewed", 0))


def encode(summary: dict[str, Any]) -> bytes:
    return (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()


def write(target: Path, summary: dict[str, Any]) -> None:
    """Write the summary to ``target`` (atomically: a reader never sees half of it), or to
    stdout when ``target`` is ``-``. A failure is a ``StoreError`` naming the target."""
    data = encode(summary)
    try:
        if target == STDOUT:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            write_atomic(target, data, PUBLIC_MODE)
    except OSError as exc:
        raise StoreError(f"cannot write the --json summary {target}: "
                         f"{exc.strerror or exc}") from exc


def _certificate_entries(result: RunResult) -> list[dict[str, Any]]:
    """Every certificate: its outcome when it had an order, else what the run knew."""
    outcomes = {(o.job.line.lineno, o.job.key_type): o for o in result.outcomes}
    due = {(j.line.lineno, j.key_type): j for j in result.jobs or ()}
    entries = []
    for record in result.certificates() if result.certificates is not None else ():
        key = (record.line.lineno, record.key_type)
        cert = record.found.cert
        outcome = outcomes.pop(key, None)
        if outcome is not None:
            entry = outcome_to_json(outcome)
        else:
            job = due.get(key)
            state = ("skipped" if job is not None else "unknown" if result.jobs is None
                     else "current")
            entry = {
                "outcome": state, "lineno": record.line.lineno,
                "names": list(record.line.names), "key_type": record.key_type,
                "reason": job.reason if job else None, "renewed": False, "new_key": False,
                "serial": serial_of(cert.cert_id) if cert else None,
                "not_after": cert.not_after.isoformat() if cert else None,
                "error": None, "failure": None, "profile": record.line.profile,
                "cert_id": (cert.cert_id or None) if cert else None,
            }
        if outcome is not None and not outcome.changed and cert is not None:
            # A failed order left the stored certificate as it was.
            entry["serial"] = serial_of(cert.cert_id)
            entry["not_after"] = cert.not_after.isoformat()
        entry["paths"] = {"key": record.key_path, "cert": record.cert_path}
        checked = result.served.get(key)
        entry["served"] = None if checked is None else {
            "matches": all(r.matched for r in checked),
            "endpoints": [r.to_json() for r in checked]}
        entries.append(entry)
    # Outcomes of certificates the run did not record (none in a normal run).
    entries.extend(outcome_to_json(o) for o in outcomes.values())
    return entries

def document(result: RunResult, mode: str, pid: int, error: Failure | None = None, *,
             exit_status: int | None = None, started: datetime | None = None,
             finished: datetime | None = None, version: str | None = None
             ) -> dict[str, Any]:
    """The run summary (``--json``, README "Run summary") of ``result``; ``error`` is a
    run-wide error that stopped it (its kind ``interrupted`` for a signal)."""
    certificates = _certificate_entries(result)
    counts: dict[str, int] = {}
    for entry in certificates:
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    hosts: dict[str, dict[str, Any]] = {}
    for s in result.steps:
        host = hosts.setdefault(s.host, {"ok": True, "seconds": None, "steps": []})
        host["ok"] = host["ok"] and s.ok
        host["steps"].append(_step_json(s))
    for name, seconds in result.host_seconds.items():
        hosts.setdefault(name, {"ok": True, "seconds": None, "steps": []})
        hosts[name]["seconds"] = round(seconds, 3)
    return {
        "schema": SUMMARY_SCHEMA,
        "lematt": version,
        "started": _iso(started),
        "finished": _iso(finished),
        "mode": mode,
        "pid": pid,
        "exit": exit_status,
        "ok": result.ok and error is None,
        "interrupted": error is not None and error.kind is FailureKind.INTERRUPTED,
        "error": error.message if error else None,
        "failure": error.to_json() if error else None,
        "counts": counts,
        "certificates": certificates,
        "deploy": {"wall_s": round(result.deploy_seconds, 3),
                   "hosts_s": {h: round(t, 3) for h, t in result.host_seconds.items()},
                   "hosts": hosts},
        "actions": [_step_json(s) for s in result.steps],
    }
