"""``lematt verify [NAME...]``: check now that the endpoints serve what is stored.

Contract: ``verify_stored(config, layout, reporter, names, json_path)`` checks every
``verify`` endpoint of every section for every domains line (only the lines carrying one of
``names`` when given; a name on no line is a ``ConfigError``), against the certificates
stored now; no lock (it only reads the tree). One line per check: a match with
``reporter.change``, anything else with ``reporter.failure``. Returns 0 when every check
matched, 1 otherwise; with ``json_path`` also writes ``{"ok": ..., "verify": [...]}``.
Every result is kept in ``<tree>/.verify/served.json`` (``verify.record``), for ``lematt status``
and the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from lematt.config import Config
from lematt.errors import ConfigError, StoreError
from lematt.model import VerifyResult
from lematt.report import Reporter
from lematt.store.atomic import write_atomic
from lematt.store.layout import PUBLIC_MODE, Layout
from lematt.verify.checks import checks_for, run_checks
from lematt.verify.record import remember


async def verify_stored(config: Config, layout: Layout, reporter: Reporter,
                        names: Sequence[str], json_path: Path | None) -> int:
    lines = list(config.lines)
    if names:
        wanted = {n.lower() for n in names}
        lines = [line for line in lines if wanted & set(line.names)]
        unknown = sorted(wanted - {n for line in lines for n in line.names})
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: on no line of the domains file; name "
                              "a certificate by any of its names", path=config.domains_path)
    checks = checks_for(config.actions, lines, config.settings.key_types, layout,
                        lambda section: True)
    if not checks:
        where = config.actions_path or "the actions file"
        raise ConfigError(f"no endpoint to check: add a 'verify' list to the sections of "
                          f"{where} that deploy these certificates")
    results = await run_checks(checks, config.settings.verify_timeout)
    for warning in remember(config, layout, checks, results, time.time()):
        reporter.warn(warning)
    for check, result in zip(checks, results, strict=True):
        line = f"[{check.section}] verify: {result.describe()}"
        if result.matched:
            reporter.change(line)
        else:
            reporter.failure(line)
    ok = all(r.matched for r in results)
    if json_path is not None:
        _write(json_path, ok, results)
    return 0 if ok else 1


def _write(path: Path, ok: bool, results: Sequence[VerifyResult]) -> None:
    data = {"ok": ok, "verify": [r.to_json() for r in results]}
    try:
        write_atomic(path, (json.dumps(data, indent=2) + "\n").encode(), PUBLIC_MODE)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
