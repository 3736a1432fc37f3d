"""``metricsFile``: a Prometheus textfile-collector file written at the end of every run.

Contract: ``with watch_run(config, store, result, reporter, now) as seen:`` wraps a run
inside its lock; the run tells ``seen`` what it learnt as it goes (the scan, the kept
renewal state, the back-off book, how many certificates it held back). When the block
ends - normally, with an error, or interrupted - and ``metricsFile`` is set, the file is
written (``prometheus_client``: its registry and ``write_to_textfile``, which writes a temp
file beside it and renames it over, so node_exporter never reads half a file; the library is
imported only then, so a run without ``metricsFile`` does not load it). A file that cannot
be written is one ``FAILED`` line; after a run that otherwise succeeded it also fails the run
(a ``StepOutcome`` of kind ``metrics`` in the result: exit status 1), since a monitor would
otherwise read the previous run's figures as this one's. Commands write no metrics.

Metrics (README "Status and monitoring"), per certificate (labels ``line``, ``name`` = the
line's first name, ``key_type``): ``lematt_certificate_not_after_timestamp_seconds`` (only
for a readable certificate), ``lematt_certificate_renewal_due_timestamp_seconds`` (the run's
time when it is due), ``lematt_certificate_failures`` (failed orders in a row),
``lematt_certificate_served_matches`` (label ``endpoint`` too: the last verify check of each
endpoint, from ``store.served``; only for checks of the certificate stored now); per run:
``lematt_last_run_timestamp_seconds``, ``lematt_last_run_success`` (1/0),
``lematt_run_duration_seconds``, ``lematt_orders_total{result="renewed|failed|held"}`` (this
run's orders; ``held``: due but still in back-off) and ``lematt_deploys_owed{host}`` (lines
each host is still owed after the run). The rows are ``monitor.rows``' (shared with status).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lematt.config import Config
from lematt.errors import LemattError
from lematt.model import Failure, FailureKind, Found, KeyType, RunResult, StepOutcome
from lematt.monitor.owed import owed_by_host, owed_deploys
from lematt.monitor.rows import Row, certificate_rows
from lematt.report import Reporter
from lematt.store.backoff import BackoffBook
from lematt.store.inventory import scan
from lematt.store.renewal import RenewalBook
from lematt.store.served import ServedBook, served_keep
from lematt.store.tree import Store

if TYPE_CHECKING:
    from collections.abc import Mapping

Key = tuple[int, KeyType]


@dataclass
class RunSeen:
    """What the run learnt, for the metrics at its end (None: it did not get that far)."""

    found: dict[Key, Found] | None = None
    names: dict[Key, str] | None = None
    renewal: RenewalBook | None = None
    backoff: BackoffBook | None = None
    held: int = 0


@dataclass(frozen=True)
class RunFigures:
    """The per-run metrics."""

    finished: float  # seconds since the epoch
    success: bool
    duration: float
    renewed: int
    failed: int
    held: int


@contextlib.contextmanager
def watch_run(config: Config, store: Store, result: RunResult, reporter: Reporter,
              now: datetime | None = None) -> Iterator[RunSeen]:
    """See the module docstring. ``now``: the run's clock when it was given one."""
    seen = RunSeen()
    path = config.settings.metrics_file
    if path is None:
        yield seen
        return
    started = time.monotonic()
    success = False
    try:
        yield seen
        success = result.ok
    finally:
        elapsed = time.monotonic() - started
        end = now.timestamp() + elapsed if now is not None else time.time()
        outcomes = result.outcomes
        figures = RunFigures(end, success, elapsed, sum(1 for o in outcomes if o.changed),
                             sum(1 for o in outcomes if o.failure is not None), seen.held)
        problem = _write(path, config, store, seen, figures, any(o.changed for o in outcomes),
                         reporter)
        if problem is not None:
            reporter.failure(problem)
            if success:
                result.steps.append(StepOutcome("metricsFile", "metrics", "local", str(path),
                                                Failure(FailureKind.STORE, problem)))


def _write(path: Path, config: Config, store: Store, seen: RunSeen, figures: RunFigures,
           renewed: bool, reporter: Reporter) -> str | None:
    """Write the file; the sentence for the user when it could not be written."""
    rows: list[Row] = []
    owed: dict[str, int] = {}
    try:
        names = seen.names if seen.names is not None else {}
        found = seen.found
        if found is None or renewed:
            # New pairs (or a run that stopped before its scan): what the tree holds now.
            # The index is written only under the run's lock, which a run that got as far
            # as renewing holds.
            found = scan(store, config.lines, config.settings.key_types, names,
                         save=renewed)
        owed_lines = owed_deploys(config, store)
        owed = owed_by_host(owed_lines)
        renewal = seen.renewal if seen.renewal is not None else RenewalBook(store.root)
        backoff = seen.backoff if seen.backoff is not None else BackoffBook.load(store.root)
        served = ServedBook.load(store.root)
        keep = (served_keep(config.actions, config.lines, config.settings.key_types,
                            store.layout) if served.entries else None)
        rows = certificate_rows(config.settings, config.lines, found, names, renewal, backoff,
                                owed_lines, figures.finished, served, keep)
    except LemattError as exc:
        reporter.warn(f"metricsFile {path}: certificate figures left out: {exc}")
    try:
        _export(path, rows, figures, owed)
    except OSError as exc:
        return f"cannot write metricsFile {path}: {exc.strerror or exc}"
    return None


def _export(path: Path, rows: list[Row], figures: RunFigures, owed: Mapping[str, int]) -> None:
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["line", "name", "key_type"]
    not_after = GaugeMetricFamily(
        "lematt_certificate_not_after_timestamp_seconds",
        "notAfter of the stored certificate (seconds since the epoch)", labels=labels)
    due = GaugeMetricFamily(
        "lematt_certificate_renewal_due_timestamp_seconds",
        "when lematt renews the certificate (the run's time if it is due now)", labels=labels)
    failures = GaugeMetricFamily(
        "lematt_certificate_failures",
        "orders of the certificate that failed in a row (0: the last one succeeded)",
        labels=labels)
    matches = GaugeMetricFamily(
        "lematt_certificate_served_matches",
        "1 if the endpoint served the stored certificate at its last verify check, "
        "0 if it served another one or none", labels=[*labels, "endpoint"])
    for row in rows:
        values = [str(row.line.lineno), row.line.primary, row.key_type]
        for endpoint, check in row.served or ():
            matches.add_metric([*values, endpoint], 1 if check.matched else 0)
        if row.not_after is not None:
            not_after.add_metric(values, row.not_after)
        due.add_metric(values, row.renew_at)
        failures.add_metric(values, row.backoff.failures if row.backoff is not None else 0)
    orders = CounterMetricFamily("lematt_orders", "orders of the last run by result",
                                 labels=["result"])
    for result, count in (("renewed", figures.renewed), ("failed", figures.failed),
                          ("held", figures.held)):
        orders.add_metric([result], count)
    deploys = GaugeMetricFamily("lematt_deploys_owed",
                                "domains lines whose deploy to the host is still owed",
                                labels=["host"])
    for host, count in sorted(owed.items()):
        deploys.add_metric([host], count)
    families = [
        not_after, due, failures, matches,
        GaugeMetricFamily("lematt_last_run_timestamp_seconds",
                          "when the last run ended (seconds since the epoch)",
                          value=figures.finished),
        GaugeMetricFamily("lematt_last_run_success",
                          "1 if the last run renewed and deployed everything it had to",
                          value=1 if figures.success else 0),
        GaugeMetricFamily("lematt_run_duration_seconds", "how long the last run took",
                          value=figures.duration),
        orders, deploys,
    ]

    class _Collector:
        def collect(self) -> list[object]:
            return families

    registry = CollectorRegistry()
    registry.register(_Collector())  # type: ignore[arg-type]
    _remove_leftovers(path)
    write_to_textfile(str(path), registry)


def _remove_leftovers(path: Path) -> None:
    """Temp files of an earlier write a kill interrupted (``<name>.<pid>.<thread>``, the
    library's temp name), when that process is gone: node_exporter ignores them (not
    ``*.prom``), but they would pile up."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)\.(\d+)")
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            pid = int(match[1])
            if pid != os.getpid():
                try:
                    os.kill(pid, 0)
                    continue  # a live process: perhaps another writer
                except ProcessLookupError:
                    pass
                except OSError:
                    continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
