"""What lematt keeps about each stored certificate and about its CA, beside the tree.

Contract: ``RenewalBook(tree_root)`` reads ``<tree>/.renewal`` (absent, unreadable, too
large or of another version: empty, and rebuilt; a damaged row is skipped) and holds

* per certificate file name, a ``model.CertState``: the ARI certID of the certificate it
  describes, the profile lematt ordered it with, the CA's renewal window with the moment
  lematt picked in it, when to ask the CA again (its Retry-After), and a revocation mark.
  ``state(cert_name, cert_id)`` returns it only while ``cert_id`` is still that
  certificate's: a renewed certificate is never judged by its predecessor's state
  (``all_states`` decodes every row at once, for the caller to compare);
* per CA directory URL, ``CaFacts``: what its directory offered when lematt last read it
  (renewalInfo, profiles, external account binding, terms of service), so that a cron run
  with nothing to ask the CA reads no directory at all.

``put`` / ``set_ca`` change the book in memory; ``save(keep_certs, keep_directories, ...)``
writes it atomically (same-dir temp, fsync, rename) when something changed, keeping only the
rows of certificates and CAs still configured, so the file stays bounded by the config.
``states_for`` gives planning the states it may use. Nothing here talks to the CA or
decides anything: planning (``lematt.plan``) judges.

Why one tab-separated file, its rows split only on demand, and a summary line: a cron run
where nothing is due must stay within a few per cent of a run that keeps no state at all.
The summary says what all rows say together (the earliest next question, window moment and
window end; profiles; revocations) and, when it was written with the inventory index
(``.inventory``) as it is now and a row for every certificate, that every certificate still
has its row. Then one shared state stands for all of them (``Shortcut``) and not a row is
read: until the earliest of those moments nothing kept can make anything due.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from math import isfinite
from pathlib import Path
from typing import NamedTuple

from lematt.errors import StoreError
from lematt.model import CertState, Found, KeyType, RenewalWindow
from lematt.store.atomic import write_atomic
from lematt.store.inventory import INDEX_NAME
from lematt.store.layout import PUBLIC_MODE

STATE_NAME = ".renewal"
STATE_VERSION = 1
MAX_STATE_BYTES = 64 << 20  # ~250,000 rows; a larger file is not ours: ignored and rebuilt
_HEADER = f"lematt-renewal {STATE_VERSION}"
_CA_MARK = "@ca"
_SUMMARY_MARK = "@summary"
_UNKNOWN = "?"  # profile not recorded
_FIELDS = 9
# What may go into a row unescaped: lematt validates profiles and URLs before they get here;
# anything with a tab, a newline or another control character is refused instead.
_CLEAN_RE = re.compile(r"[^\x00-\x1f\x7f]*")

Key = tuple[int, KeyType]


# NamedTuples rather than dataclasses: a dataclass costs a millisecond to define at import,
# and every cron run imports this module.
class CaFacts(NamedTuple):
    """What a CA's directory offered when lematt read it (``checked``: seconds since the
    epoch)."""

    directory: str
    checked: float
    renewal_info: bool = False
    profiles: tuple[str, ...] = ()
    eab_required: bool = False
    terms_of_service: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"directory": self.directory, "checked": self.checked,
                "renewalInfo": self.renewal_info, "profiles": list(self.profiles),
                "externalAccountRequired": self.eab_required,
                "termsOfService": self.terms_of_service}

    @classmethod
    def from_json(cls, data: object) -> CaFacts | None:
        if not isinstance(data, dict):
            return None
        directory, checked = data.get("directory"), data.get("checked")
        profiles = data.get("profiles") or []
        tos = data.get("termsOfService")
        if (not isinstance(directory, str) or not isinstance(checked, int | float)
                or not isinstance(profiles, list)
                or not all(isinstance(p, str) for p in profiles)):
            return None
        return cls(directory, float(checked), bool(data.get("renewalInfo")), tuple(profiles),
                   bool(data.get("externalAccountRequired")),
                   tos if isinstance(tos, str) else None)


def index_identity(tree_root: Path) -> str:
    """Which inventory index is on disk (it is replaced, never edited, when anything in it
    changes): "" when there is none."""
    try:
        st = os.stat(tree_root / INDEX_NAME)
    except OSError:
        return ""
    return f"{st.st_dev},{st.st_ino},{st.st_size},{st.st_mtime_ns}"


def _number(text: str) -> float | None:
    if not text:
        return None
    value = float(text)
    if not isfinite(value):
        raise ValueError(text)
    return value


def _decode(rest: str) -> CertState:
    """A row's state (the row without its certificate name)."""
    fields = rest.split("\t")
    if len(fields) != _FIELDS - 1:
        raise ValueError(rest[:60])
    return _decode_fields(fields, rest)


def _decode_fields(fields: list[str], rest: str) -> CertState:
    """``_decode`` of a row already split. Inlined number parsing: a ``lematt status``
    decodes every row, 20,000 of them."""
    cert_id, profile, revoked, next_check, start, end, chosen, explanation = fields
    s = float(start) if start else None
    e = float(end) if end else None
    c = float(chosen) if chosen else None
    check = float(next_check) if next_check else 0.0
    window = None
    if s is not None and e is not None and c is not None:
        if not (isfinite(s) and isfinite(e) and isfinite(c)):
            raise ValueError(rest[:60])
        window = RenewalWindow(s, e, c, explanation or None)
    elif not all(isfinite(v) for v in (s, e, c) if v is not None):
        raise ValueError(rest[:60])
    if not isfinite(check):
        raise ValueError(rest[:60])
    return CertState(cert_id, None if profile == _UNKNOWN else profile, window,
                     check, revoked or None)


def _encode(state: CertState) -> str:
    window = state.window
    fields = [state.cert_id, _UNKNOWN if state.profile is None else state.profile,
              state.revoked or "", repr(state.next_check) if state.next_check else "",
              repr(window.start) if window else "", repr(window.end) if window else "",
              repr(window.chosen) if window else "",
              (window.explanation_url or "") if window else ""]
    for value in fields:
        if "\t" in value or not _CLEAN_RE.fullmatch(value):
            raise ValueError(f"{value[:60]!r} cannot be kept in {STATE_NAME}")
    return "\t".join(fields)


class _Summary(NamedTuple):
    """What every row says at once (see the module docstring)."""

    rows: int
    next_check: float  # the earliest moment any certificate's info is to be asked again
    chosen: float  # the earliest moment picked in any window (inf: no windows)
    end: float  # the earliest end of any window
    windowless: int  # rows without a window
    revoked: int
    profiles: tuple[str | None, ...]  # every recorded profile (None: unknown)
    index_id: str = ""  # the inventory index the rows were last matched against ...
    complete: bool = False  # ... when every stored, current certificate had its row

    @classmethod
    def of(cls, states: list[CertState], index: str, complete: bool) -> _Summary:
        windows = [s.window for s in states if s.window is not None]
        return cls(len(states), min((s.next_check for s in states), default=math.inf),
                   min((w.chosen for w in windows), default=math.inf),
                   min((w.end for w in windows), default=math.inf),
                   len(states) - len(windows), sum(1 for s in states if s.revoked),
                   tuple(sorted({s.profile for s in states}, key=lambda p: (p is None, p))),
                   index, complete)

    def to_json(self) -> dict[str, object]:
        def num(value: float) -> float | None:
            return None if value == math.inf else value

        return {"rows": self.rows, "nextCheck": num(self.next_check),
                "chosen": num(self.chosen), "end": num(self.end),
                "windowless": self.windowless, "revoked": self.revoked,
                "profiles": list(self.profiles), "index": self.index_id,
                "complete": self.complete}

    @classmethod
    def from_json(cls, data: object) -> _Summary | None:
        try:
            assert isinstance(data, dict)
            numbers = [math.inf if data[k] is None else float(data[k])
                       for k in ("nextCheck", "chosen", "end")]
            profiles = tuple(data["profiles"])
            assert all(p is None or isinstance(p, str) for p in profiles)
            assert isinstance(data["index"], str) and isinstance(data["complete"], bool)
            return cls(int(data["rows"]), *numbers, int(data["windowless"]),
                       int(data["revoked"]), profiles, data["index"], data["complete"])
        except (AssertionError, KeyError, TypeError, ValueError):
            return None


class RenewalBook:
    """``<tree>/.renewal``: see the module docstring."""

    def __init__(self, tree_root: Path) -> None:
        self.path = tree_root / STATE_NAME
        self._data, self._rows_at = b"", 0  # the file, and where its rows start
        self._rows: dict[str, str] | None = None  # name -> the rest of its row
        self._decoded: dict[str, CertState] = {}
        self._cas: dict[str, CaFacts] = {}
        self._summary: _Summary | None = None
        self._changed = False
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError:
            self._changed = True  # unreadable: rebuilt by this run
            return
        head = f"{_HEADER}\n".encode()
        if len(data) > MAX_STATE_BYTES or not data.startswith(head):
            self._changed = bool(data)
            return
        # The marked lines come first (``save``): read them; the rows are decoded and split
        # only if asked for (a copy of megabytes per run is what the shortcut avoids).
        pos = len(head)
        while data.startswith(b"@", pos):
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end
            try:
                line = data[pos:end].decode()
            except UnicodeDecodeError:
                line = ""
            mark, _, value = line.partition("\t")
            self._meta(mark, value)
            pos = end + 1
        self._data, self._rows_at = data, pos

    def _meta(self, mark: str, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            return
        if mark == _CA_MARK:
            facts = CaFacts.from_json(data)
            if facts is not None:
                self._cas[facts.directory] = facts
        elif mark == _SUMMARY_MARK:
            self._summary = _Summary.from_json(data)

    @property
    def rows(self) -> dict[str, str]:
        if self._rows is None:
            rows: dict[str, str] = {}
            text = self._data[self._rows_at:].decode(errors="replace")
            for row in text.splitlines():
                name, _, rest = row.partition("\t")
                if rest and not name.startswith("@") and "\ufffd" not in row:
                    rows[name] = rest
            self._rows, self._data = rows, b""
            if self._summary is not None and self._summary.rows != len(rows):
                self._summary = None  # not written with these rows: trust the rows
        return self._rows

    def __len__(self) -> int:
        return len(self.rows)

    def matches(self, cert_name: str, cert_id: str) -> bool:
        """Whether a row describes the certificate ``cert_id`` (nothing decoded)."""
        rest = self.rows.get(cert_name)
        return (rest is not None and bool(cert_id) and rest.startswith(cert_id)
                and rest[len(cert_id):len(cert_id) + 1] == "\t")

    def state(self, cert_name: str, cert_id: str) -> CertState | None:
        """The kept state of the certificate ``cert_name`` if it is still the one with
        ``cert_id``; None otherwise (or when its row is damaged)."""
        state = self._decoded.get(cert_name)
        if state is not None:  # decoded from (or put as) its current row
            return state if cert_id and state.cert_id == cert_id else None
        if not self.matches(cert_name, cert_id):
            return None
        try:
            state = self._decoded[cert_name] = _decode(self.rows[cert_name])
        except (ValueError, OverflowError):
            return None
        return state

    def all_states(self) -> dict[str, CertState]:
        """Every row's state by certificate file name, damaged rows left out. A state is
        a certificate's only while its certID is the certificate's: the caller compares
        (as ``state`` does). One pass over the file with the row decoding inlined and no
        row kept split: ``lematt status`` reads every row (20,000 of them) and must stay
        as quick as a no-op run."""
        out: dict[str, CertState] = {}
        if self._rows is not None:  # split already (and maybe changed by put)
            for name, rest in self._rows.items():
                with contextlib.suppress(ValueError, OverflowError):
                    out[name] = self._decoded.get(name) or _decode(rest)
            return out
        text = self._data[self._rows_at:].decode(errors="replace")
        for row in text.splitlines():
            fields = row.split("\t")
            if len(fields) != _FIELDS or row.startswith("@") or "\ufffd" in row:
                continue
            name = fields[0]
            try:
                out[name] = _decode_fields(fields[1:], row)
            except (ValueError, OverflowError):
                out.pop(name, None)  # the last row of a name counts, as in ``rows``
        return out

    def shortcut(self, now: float, line_profiles: set[str], index: str) -> Shortcut | None:
        """The shared state that may stand for every row (``Shortcut``), or None when rows
        must be read one by one: something is revoked, the lines' profiles differ from each
        other or from a recorded one, or a window's moment may have come by ``now``."""
        summary = self._summary
        if summary is None or summary.revoked or len(line_profiles) != 1:
            return None
        (wanted,) = line_profiles
        if any(p is not None and p != wanted for p in summary.profiles):
            return None
        if summary.windowless == summary.rows:
            # No window, no revocation, no profile that could differ: for planning exactly
            # as if nothing were kept (when to ask the CA is read from the rows themselves).
            return Shortcut(None, everyone=True)
        if summary.windowless or min(summary.next_check, summary.chosen, summary.end) <= now:
            return None
        window = RenewalWindow(summary.chosen, summary.end, summary.chosen)
        return Shortcut(CertState("", None, window, summary.next_check),
                        everyone=summary.complete and bool(index) and summary.index_id == index)

    def summary_matches(self, index: str) -> bool:
        """Whether the summary was written for ``index`` with a row for every certificate
        (otherwise saving it again, once, lets later runs take the shortcut)."""
        summary = self._summary
        return summary is not None and summary.complete and summary.index_id == index

    def put(self, cert_name: str, state: CertState) -> None:
        """Keep ``state`` for ``cert_name`` (replacing what was kept for it)."""
        rest = _encode(state)
        rows = self.rows
        if rows.get(cert_name) != rest:
            if ("\t" in cert_name or not _CLEAN_RE.fullmatch(cert_name)
                    or cert_name.startswith("@") or not cert_name):
                raise ValueError(f"{cert_name[:60]!r} cannot be kept in {STATE_NAME}")
            rows[cert_name] = rest
            self._decoded[cert_name] = state
            self._summary = None
            self._changed = True

    def ca(self, directory_url: str) -> CaFacts | None:
        return self._cas.get(directory_url)

    def set_ca(self, facts: CaFacts) -> None:
        for value in (facts.directory, *facts.profiles, facts.terms_of_service or ""):
            if not _CLEAN_RE.fullmatch(value):
                raise ValueError(f"{value[:60]!r} cannot be kept in {STATE_NAME}")
        if self._cas.get(facts.directory) != facts:
            self._cas[facts.directory] = facts
            self._changed = True

    def save(self, keep_certs: Iterable[str] | None = None,
             keep_directories: Iterable[str] | None = None, *, index: str = "",
             complete: bool = False) -> None:
        """Write the book if it changed (atomically), dropping the rows of certificates and
        CAs not in ``keep_*`` (None keeps all); ``StoreError`` if it cannot be written.
        ``index`` and ``complete``: the caller has just matched every stored, current
        certificate against the inventory index ``index`` and found a row for each."""
        rows = self.rows
        if keep_certs is not None:
            keep = set(keep_certs)
            for name in [n for n in rows if n not in keep]:
                del rows[name]
                self._decoded.pop(name, None)
                self._changed = True
        if keep_directories is not None:
            keep = set(keep_directories)
            for directory in [d for d in self._cas if d not in keep]:
                del self._cas[directory]
                self._changed = True
        summary = self._summary
        if summary is not None and (summary.index_id, summary.complete) != (index, complete):
            self._changed = True
        if not self._changed:
            return
        states = []
        for name, rest in list(rows.items()):
            try:
                states.append(self._decoded.get(name) or _decode(rest))
            except (ValueError, OverflowError):
                del rows[name]  # damaged: dropped, asked for again
        summary = _Summary.of(states, index, complete)
        lines = [_HEADER, f"{_SUMMARY_MARK}\t{json.dumps(summary.to_json())}"]
        lines += [f"{_CA_MARK}\t{json.dumps(f.to_json(), sort_keys=True)}"
                  for f in self._cas.values()]
        lines += [f"{name}\t{rest}" for name, rest in rows.items()]
        try:
            write_atomic(self.path, ("\n".join(lines) + "\n").encode(), PUBLIC_MODE)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}; check that the certificate "
                             "tree is writable") from exc
        self._summary = summary
        self._changed = False


class Shortcut(NamedTuple):
    """One state standing for many rows (``RenewalBook.shortcut``): for every certificate
    with a matching row (``everyone``: every certificate with a certID, no row read);
    ``state`` None means "as if nothing were kept"."""

    state: CertState | None
    everyone: bool


def states_for(book: RenewalBook, names: Mapping[Key, str], found: Mapping[Key, Found],
               now: float, line_profiles: set[str], index: str
               ) -> tuple[dict[Key, CertState], CertState | None]:
    """Planning's input: the kept state of every stored certificate that it still
    describes (none without a row, or with another certificate's row), and a default for
    every certificate with a certID (``Shortcut.everyone``). ``line_profiles``: every line's
    profile ("" none); ``index``: ``index_identity`` of the tree as the scan left it."""
    shortcut = book.shortcut(now, line_profiles, index)
    if shortcut is not None and shortcut.everyone:
        return {}, shortcut.state
    states = {}
    for key, name in names.items():
        cert = found[key].cert
        if cert is None or not cert.cert_id:
            continue
        if shortcut is not None:
            if shortcut.state is not None and book.matches(name, cert.cert_id):
                states[key] = shortcut.state
            continue
        state = book.state(name, cert.cert_id)
        if state is not None:
            states[key] = state
    return states, None


def complete(book: RenewalBook, names: Mapping[Key, str], found: Mapping[Key, Found],
             now: float) -> bool:
    """Whether every stored, unexpired certificate with a certID has its row."""
    for key, name in names.items():
        state = found[key]
        cert = state.cert
        if (cert is not None and cert.cert_id and state.problem is None
                and cert.not_after.timestamp() > now and not book.matches(name, cert.cert_id)):
            return False
    return True
