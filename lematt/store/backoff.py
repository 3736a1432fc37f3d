"""Persistent back-off: a certificate whose order failed is not ordered again at every run.

Contract: ``BackoffBook.load(tree_root)`` reads ``<tree>/.backoff.json`` once per run. Per
certificate file name (the key ``store.renewal`` uses too) it keeps a ``Backoff``: how many
orders in a row failed, when the last one failed, what went wrong, and ``until``, before which
the certificate is not ordered again. A missing file is an empty book; a file that is not
ours (too large, not JSON, another schema or version) is an empty book plus a ``warning``
for the user, and it is rewritten at the next ``save`` - so a damaged file never blocks a
renewal, and the warning is shown once. A damaged entry is dropped the same way.

``record(name, failure, now)`` counts a failure: the delay starts at ``FIRST_DELAY`` (a
minute), doubles with each further failure in a row and stops growing at ``MAX_DELAY`` (a
day), as Let's Encrypt's integration guide asks of clients ("retry ... with exponential
backoff", https://letsencrypt.org/docs/integration-guide/); a CA's Retry-After that is
longer wins, up to ``MAX_RETRY_AFTER`` (a hostile or broken CA cannot park a certificate for
years). ``clear(name)`` forgets a certificate (its order succeeded, or it is no longer due).
``save(keep)`` writes the book atomically (``store.atomic``: same-dir temp, fsync, rename; a
kill at any instant leaves the old file or the new one) when it changed, keeping only the
certificates in ``keep`` (those of lines still configured).

``hold_back(jobs, book, names, now, ignore_backoff=...)`` is the one place the plan's jobs
meet the book: it splits them into the jobs to order and those still in back-off (``--force``
passes ``ignore_backoff=True``). Nothing here talks to the CA.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from lematt.errors import StoreError, printable
from lematt.model import Failure, Job, KeyType
from lematt.store.books import (
    BookUnreadable,
    ForeignBook,
    certificates_of,
    read_book,
    write_book,
)

FILE_NAME = ".backoff.json"
SCHEMA = "lematt-backoff"
VERSION = 1
FIRST_DELAY = 60.0  # seconds after the first failure
MAX_DELAY = 86400.0  # the doubling stops at a day
# Let's Encrypt's longest rate-limit window is a week (certificates per registered domain):
# a longer Retry-After is taken as a week.
MAX_RETRY_AFTER = 7 * 86400.0
MAX_FILE_BYTES = 16 << 20  # ~50,000 entries with long messages; larger is not ours
MAX_MESSAGE = 300  # characters of the failure kept per certificate

Key = tuple[int, KeyType]


class Backoff(NamedTuple):
    """One certificate's back-off; times in seconds since the epoch."""

    failures: int  # orders in a row that failed
    last: float  # when the last one failed
    until: float  # not ordered again before this moment
    kind: str  # the last failure's kind (model.FailureKind's value)
    message: str  # ... and its sentence, cut to MAX_MESSAGE characters

    def to_json(self) -> dict[str, object]:
        return {"failures": self.failures, "last": self.last, "until": self.until,
                "kind": self.kind, "message": self.message}

    @classmethod
    def from_json(cls, data: object) -> Backoff | None:
        if not isinstance(data, dict):
            return None
        failures, last, until = data.get("failures"), data.get("last"), data.get("until")
        kind, message = data.get("kind"), data.get("message")
        if (not isinstance(failures, int) or isinstance(failures, bool) or failures < 1
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           and math.isfinite(v) for v in (last, until))
                or not isinstance(kind, str) or not isinstance(message, str)):
            return None
        assert isinstance(last, int | float) and isinstance(until, int | float)
        # A file edited by hand (or a clock that jumped) may not hold anyone for more than
        # the longest wait lematt itself would set.
        until = min(float(until), float(last) + MAX_RETRY_AFTER)
        return cls(failures, float(last), until, printable(kind, 40),
                   printable(message, MAX_MESSAGE))

    def describe(self) -> str:
        """``in back-off until T (N failures, last: ...)``: the line a held job gets."""
        count = "1 failure" if self.failures == 1 else f"{self.failures} failures"
        return f"in back-off until {_when(self.until)} ({count}, last: {self.message})"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def delay_for(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row."""
    delay = MAX_DELAY if failures > 17 else min(FIRST_DELAY * 2 ** (failures - 1), MAX_DELAY)
    if retry_after is not None and math.isfinite(retry_after) and retry_after > delay:
        delay = min(retry_after, MAX_RETRY_AFTER)
    return delay


class BackoffBook:
    """``<tree>/.backoff.json``: see the module docstring."""

    def __init__(self, path: Path, entries: dict[str, Backoff] | None = None,
                 warning: str | None = None) -> None:
        self.path = path
        self.entries = entries or {}
        self.warning = warning  # why the file on disk was not used, for the user
        self._changed = warning is not None

    @classmethod
    def load(cls, tree_root: Path) -> BackoffBook:
        path = tree_root / FILE_NAME
        try:
            data = read_book(path, MAX_FILE_BYTES)
        except BookUnreadable as exc:
            return cls(path, warning=f"cannot read {path} ({exc}); ignored")
        return cls(path) if data is None else cls.parse(path, data)

    @classmethod
    def parse(cls, path: Path, data: bytes) -> BackoffBook:
        try:
            certs = certificates_of(data, SCHEMA, VERSION, MAX_FILE_BYTES)
        except ForeignBook as exc:
            return cls(path, warning=f"{path} is not lematt's back-off file ({exc}); it is "
                                     "ignored and rewritten")
        entries: dict[str, Backoff] = {}
        damaged = 0
        for name, value in certs.items():
            entry = Backoff.from_json(value)
            if entry is None or not name or "/" in name:
                damaged += 1
            else:
                entries[name] = entry
        book = cls(path, entries)
        if damaged:
            book.warning = (f"{path}: {damaged} damaged entr{'y' if damaged == 1 else 'ies'} "
                            "ignored (those certificates are ordered as if they had not "
                            "failed)")
            book._changed = True
        return book

    def get(self, name: str) -> Backoff | None:
        return self.entries.get(name)

    def record(self, name: str, failure: Failure, now: float) -> Backoff:
        """Count one more failed order of certificate ``name`` at ``now``."""
        old = self.entries.get(name)
        failures = (old.failures if old is not None else 0) + 1
        entry = Backoff(failures, now, now + delay_for(failures, failure.retry_after),
                        str(failure.kind), printable(failure.message, MAX_MESSAGE))
        self.entries[name] = entry
        self._changed = True
        return entry

    def clear(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self._changed = True

    def save(self, keep: Iterable[str]) -> None:
        """Write the book if it changed or holds certificates not in ``keep`` (dropped);
        no entries left: the file is removed. ``StoreError`` when it cannot be written."""
        keep = set(keep)
        stale = [name for name in self.entries if name not in keep]
        for name in stale:
            del self.entries[name]
        if not self._changed and not stale:
            return
        body = None if not self.entries else {
            "schema": SCHEMA, "version": VERSION,
            "certificates": {name: e.to_json() for name, e in sorted(self.entries.items())}}
        try:
            write_book(self.path, body)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._changed = False


def hold_back(jobs: list[Job], book: BackoffBook, names: Mapping[Key, str], now: float, *,
              ignore_backoff: bool = False) -> tuple[list[Job], list[tuple[Job, Backoff]]]:
    """The jobs to order now, and those still in back-off with their entry (none when
    ``ignore_backoff``: ``--force``)."""
    if ignore_backoff or not book.entries:
        return jobs, []
    ready: list[Job] = []
    held: list[tuple[Job, Backoff]] = []
    for job in jobs:
        entry = book.get(names[(job.line.lineno, job.key_type)])
        if entry is not None and entry.until > now:
            held.append((job, entry))
        else:
            ready.append(job)
    return ready, held
