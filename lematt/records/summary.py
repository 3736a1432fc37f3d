"""The run summary (``--json PATH``, ``--json -`` for stdout), on every exit of a run.

Contract: ``build(result, ...)`` is the summary document (README "Run summary"): the run's
``RunResult.to_json`` with the run's exit status, times and lematt's version;
``tallies(summary)`` counts its certificates by outcome; ``write(target, summary)`` writes it
atomically to a file (or to stdout for ``-``) and raises ``StoreError`` naming the path.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from lematt.errors import StoreError
from lematt.model import Failure, RunResult
from lematt.store.atomic import write_atomic
from lematt.store.layout import PUBLIC_MODE

STDOUT = Path("-")


def lematt_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lematt")
    except PackageNotFoundError:
        return None


def build(result: RunResult, *, mode: str, exit_status: int, error: Failure | None,
          started: datetime, finished: datetime) -> dict[str, Any]:
    return result.to_json(mode, os.getpid(), error, exit_status=exit_status, started=started,
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
