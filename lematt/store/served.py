"""What each endpoint served at its last check: ``<tree>/.verify/served.json``.

Contract: ``ServedBook.load(tree_root)`` reads the record once. Per certificate file name
(the key ``store.backoff`` uses too) it keeps, per endpoint (its text as ``verify`` results
name it), the last check's ``ServedCheck``: when, the server name asked for, whether the
leaf matched the stored one, the expected and the served certificate (serial, notAfter) and
the error. A missing file is an empty book; a file that is not ours (too large, not JSON,
another schema or version, a symlink) is an empty book plus a ``warning`` for the user, and it
is rewritten at the next ``save``; a damaged entry is dropped the same way.

``record(cert_name, result, at)`` replaces one endpoint's entry; ``save(keep)`` writes the
book atomically (``store.atomic``) when it changed or holds what ``keep`` no longer allows:
``keep`` maps each certificate still configured to the endpoints its sections still check,
anything else is dropped (``served_keep(actions, lines, key_types, layout)`` says what
the config checks now). At most ``MAX_ENDPOINTS`` endpoints per certificate (the oldest go
first), messages cut to ``MAX_MESSAGE``: the file stays bounded by the config. The callers
(a run's deploy, ``lematt verify``) save once, after all their checks, and only when they
checked something: a run with nothing to verify never writes it. The file lives in its own
directory so that writing it does not change the tree's mtime (only creating the directory
does, once): ``lematt verify`` run from cron does not end the quiet-run memo
(``store.quiet``), which watches the tree.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from lematt.config import Actions
from lematt.errors import StoreError, printable
from lematt.model import CertLine, KeyType, Served, VerifyResult
from lematt.store.books import (
    BookUnreadable,
    ForeignBook,
    certificates_of,
    read_book,
    write_book,
)
from lematt.store.layout import PUBLIC_DIR_MODE, Layout

DIR_NAME = ".verify"
FILE_NAME = "served.json"
SCHEMA = "lematt-served"
VERSION = 1
MAX_FILE_BYTES = 16 << 20
MAX_MESSAGE = 300
MAX_ENDPOINTS = 64  # per certificate; more is not a config, it is a damaged file


class ServedCheck(NamedTuple):
    """The last check of one endpoint for one certificate; ``at`` in seconds since the
    epoch."""

    at: float
    name: str  # the server name (SNI) asked for
    matched: bool
    expected: Served | None
    served: Served | None
    error: str | None

    def to_json(self) -> dict[str, object]:
        # A match served what was expected: written once (the file stays small).
        served = (None if self.served is None or (self.matched and self.served == self.expected)
                  else self.served.to_json())
        return {"at": self.at, "name": self.name, "matched": self.matched,
                "expected": self.expected.to_json() if self.expected else None,
                "served": served, "error": self.error}

    @classmethod
    def from_json(cls, data: object) -> ServedCheck | None:
        if not isinstance(data, dict):
            return None
        at, name, matched, error = (data.get("at"), data.get("name"), data.get("matched"),
                                    data.get("error"))
        if (not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at)
                or not isinstance(name, str) or not isinstance(matched, bool)
                or not (error is None or isinstance(error, str))):
            return None
        try:
            expected = _served(data.get("expected"))
            served = _served(data.get("served"))
        except ValueError:
            return None
        if matched and served is None:
            served = expected
        return cls(float(at), printable(name, 260), matched, expected, served,
                   None if error is None else printable(error, MAX_MESSAGE))


def _served(data: object) -> Served | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("not an object")
    serial, not_after = data.get("serial"), data.get("not_after")
    # str.strip with the hex digits leaves something only when another character is in it
    # (faster than a per-character test: status reads 20,000 of these).
    if not isinstance(serial, str) or not isinstance(not_after, str) or len(serial) > 80 \
            or serial.strip("0123456789abcdef"):
        raise ValueError("bad serial or notAfter")
    return Served(serial, datetime.fromisoformat(not_after))


def served_keep(actions: Actions, lines: Sequence[CertLine], key_types: Sequence[KeyType],
                layout: Layout) -> dict[str, set[str]]:
    """Per certificate file name, the endpoints (their text) its sections check now: what
    the book may keep (empty when no section has a ``verify`` list)."""
    keep: dict[str, set[str]] = {}
    if not any(s.verify for s in actions.all_sections()):
        return keep
    for line in lines:
        sections = [s for s in actions.sections_for(line.names) if s.verify]
        if not sections:
            continue
        endpoints = {str(e) for s in sections for e in s.verify
                     if e.name is None or e.name in line.names}
        for key_type in key_types:
            keep[layout.pair_names(line, key_type)[1]] = endpoints
    return keep


def check_of(result: VerifyResult, at: float) -> ServedCheck:
    error = None if result.error is None else printable(result.error, MAX_MESSAGE)
    return ServedCheck(at, result.name, result.matched, result.expected, result.served, error)


class ServedBook:
    """``<tree>/.verify/served.json``: see the module docstring."""

    def __init__(self, path: Path, entries: dict[str, dict[str, ServedCheck]] | None = None,
                 warning: str | None = None) -> None:
        self.path = path
        self.entries = entries or {}  # certificate file name -> endpoint -> last check
        self.warning = warning
        self._changed = warning is not None

    @classmethod
    def load(cls, tree_root: Path) -> ServedBook:
        path = tree_root / DIR_NAME / FILE_NAME
        if path.parent.is_symlink():
            return cls(path, warning=f"{path.parent} is a symlink, not lematt's; ignored")
        try:
            data = read_book(path, MAX_FILE_BYTES)
        except BookUnreadable as exc:
            return cls(path, warning=f"cannot read {path} ({exc}); ignored")
        return cls(path) if data is None else cls.parse(path, data)

    @classmethod
    def parse(cls, path: Path, data: bytes) -> ServedBook:
        try:
            certs = certificates_of(data, SCHEMA, VERSION, MAX_FILE_BYTES)
        except ForeignBook as exc:
            return cls(path, warning=f"{path} is not lematt's record of served certificates "
                                     f"({exc}); it is ignored and rewritten")
        entries: dict[str, dict[str, ServedCheck]] = {}
        damaged = 0
        for name, endpoints in certs.items():
            if not name or "/" in name or not isinstance(endpoints, dict) \
                    or len(endpoints) > MAX_ENDPOINTS:
                damaged += 1
                continue
            kept: dict[str, ServedCheck] = {}
            for endpoint, value in endpoints.items():
                check = ServedCheck.from_json(value)
                if check is None or not endpoint or len(endpoint) > 600:
                    damaged += 1
                else:
                    kept[endpoint] = check
            if kept:
                entries[name] = kept
        book = cls(path, entries)
        if damaged:
            book.warning = (f"{path}: {damaged} damaged entr{'y' if damaged == 1 else 'ies'} "
                            "ignored (shown as not checked until the next check)")
            book._changed = True
        return book

    def get(self, cert_name: str) -> dict[str, ServedCheck] | None:
        return self.entries.get(cert_name)

    def record(self, cert_name: str, endpoint: str, check: ServedCheck) -> None:
        endpoints = self.entries.setdefault(cert_name, {})
        endpoints.pop(endpoint, None)  # re-inserted last: the newest stays when trimming
        endpoints[endpoint] = check
        while len(endpoints) > MAX_ENDPOINTS:
            del endpoints[min(endpoints, key=lambda e: endpoints[e].at)]
        self._changed = True

    def prune(self, keep: Mapping[str, Collection[str]]) -> bool:
        """Drop certificates and endpoints ``keep`` does not name; whether any went."""
        dropped = False
        for name in list(self.entries):
            allowed = keep.get(name)
            endpoints = self.entries[name]
            if allowed is None:
                del self.entries[name]
                dropped = True
                continue
            for endpoint in [e for e in endpoints if e not in allowed]:
                del endpoints[endpoint]
                dropped = True
            if not endpoints:
                del self.entries[name]
        return dropped

    def save(self, keep: Mapping[str, Collection[str]]) -> None:
        """Write the book if it changed or held what ``keep`` drops; empty: the file is
        removed. ``StoreError`` when it cannot be written."""
        if not self.prune(keep) and not self._changed:
            return
        try:
            if self.entries:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.path.parent, PUBLIC_DIR_MODE)
                if self.path.parent.is_symlink() or not self.path.parent.is_dir():
                    raise StoreError(f"cannot write {self.path}: {self.path.parent} is not "
                                     "a directory of lematt's")
            # One line: 20,000 certificates indented would be megabytes of blanks.
            write_book(self.path, None if not self.entries else {
                "schema": SCHEMA, "version": VERSION, "certificates": {
                    name: {e: c.to_json() for e, c in endpoints.items()}
                    for name, endpoints in sorted(self.entries.items())}}, compact=True)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._changed = False
