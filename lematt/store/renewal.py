"""What lematt keeps about each stored certificate and about its CA, beside the tree.

Contract: ``RenewalBook(tree_root)`` reads ``<tree>/.renewal`` (absent, unreadable, too
large or of another version: empty, and rebuilt; a damaged row is skipped) and holds

* per certificate file name, a ``model.CertState``: the ARI certID of the certificate it
  describes, the profile lematt ordered it with, the CA's renewal window with the moment
  lematt picked in it, when to ask the CA again (its Retry-After), and a revocation mark.
  ``state(cert_name, cert_id)`` returns it only while ``cert_id`` is still that
  certificate's: a renewed certificate is never judged by its predecessor's state;
* per CA directory URL, ``CaFacts``: what its directory offered when lematt last read it
  (renewalInfo, profiles, external account binding, terms of service), so that a cron run
  with nothing to ask the CA reads no directory at all.

``cert_names`` maps each (line, key type) to its row key (the certificate's file name) and
``states_for`` picks the states planning may use. ``put`` / ``set_ca`` change the book in
memory; ``save(keep_certs, keep_directories)``
writes it atomically (same-dir temp, fsync, rename) when something changed, keeping only the
rows of certificates and CAs still configured, so the file stays bounded by the config.
Nothing here talks to the CA or decides anything: planning (``lematt.plan``) judges.

Why one tab-separated file and not JSON, nor a file per certificate: a cron run where nothing
is due reads a row for each of 20,000 certificates; splitting lines costs a few milliseconds,
where a JSON document of that size or 20,000 opens would cost more than the rest of the run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lematt.errors import StoreError
from lematt.model import CertLine, CertState, Found, KeyType, RenewalWindow
from lematt.store.atomic import write_atomic
from lematt.store.layout import PUBLIC_MODE, Layout

STATE_NAME = ".renewal"
STATE_VERSION = 1
MAX_STATE_BYTES = 64 << 20  # ~250,000 rows; a larger file is not ours: ignored and rebuilt
_HEADER = f"lematt-renewal {STATE_VERSION}"
_CA_MARK = "@ca"
_UNKNOWN = "?"  # profile not recorded
_FIELDS = 9
# What may go into a row unescaped: lematt validates profiles and URLs before they get here;
# anything with a tab, a newline or another control character is refused instead.
_CLEAN_RE = re.compile(r"[^\x00-\x1f\x7f]*")


@dataclass(frozen=True)
class CaFacts:
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


def _number(text: str) -> float | None:
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _decode(fields: list[str]) -> CertState:
    profile = None if fields[2] == _UNKNOWN else fields[2]
    start, end, chosen = _number(fields[5]), _number(fields[6]), _number(fields[7])
    window = None
    if start is not None and end is not None and chosen is not None:
        window = RenewalWindow(start, end, chosen, fields[8] or None)
    return CertState(fields[1], profile, window, _number(fields[4]) or 0.0, fields[3] or None)


def _encode(cert_name: str, state: CertState) -> list[str]:
    window = state.window
    fields = [cert_name, state.cert_id, _UNKNOWN if state.profile is None else state.profile,
              state.revoked or "", repr(state.next_check) if state.next_check else "",
              repr(window.start) if window else "", repr(window.end) if window else "",
              repr(window.chosen) if window else "",
              (window.explanation_url or "") if window else ""]
    for value in fields:
        if "\t" in value or not _CLEAN_RE.fullmatch(value):
            raise ValueError(f"{value[:60]!r} cannot be kept in {STATE_NAME}")
    return fields


class RenewalBook:
    """``<tree>/.renewal``: see the module docstring."""

    def __init__(self, tree_root: Path) -> None:
        self.path = tree_root / STATE_NAME
        self._rows: dict[str, list[str]] = {}
        self._decoded: dict[str, CertState] = {}
        self._cas: dict[str, CaFacts] = {}
        self._changed = False
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError:
            self._changed = True  # unreadable: rebuilt by this run
            return
        if len(data) > MAX_STATE_BYTES:
            self._changed = True
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._changed = True
            return
        head, _, body = text.partition("\n")
        if head != _HEADER:
            self._changed = bool(text)
            return
        for row in body.splitlines():
            fields = row.split("\t")
            if len(fields) == _FIELDS:
                self._rows[fields[0]] = fields
            elif len(fields) == 2 and fields[0] == _CA_MARK:
                try:
                    facts = CaFacts.from_json(json.loads(fields[1]))
                except ValueError:
                    facts = None
                if facts is not None:
                    self._cas[facts.directory] = facts

    def __len__(self) -> int:
        return len(self._rows)

    def state(self, cert_name: str, cert_id: str) -> CertState | None:
        """The kept state of the certificate ``cert_name`` if it is still the one with
        ``cert_id``; None otherwise (or when its row is damaged)."""
        fields = self._rows.get(cert_name)
        if fields is None or not cert_id or fields[1] != cert_id:
            return None
        state = self._decoded.get(cert_name)
        if state is None:
            try:
                state = self._decoded[cert_name] = _decode(fields)
            except (ValueError, OverflowError):
                return None
        return state

    def put(self, cert_name: str, state: CertState) -> None:
        """Keep ``state`` for ``cert_name`` (replacing what was kept for it)."""
        fields = _encode(cert_name, state)
        if self._rows.get(cert_name) != fields:
            self._rows[cert_name] = fields
            self._decoded.pop(cert_name, None)
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
             keep_directories: Iterable[str] | None = None) -> None:
        """Write the book if it changed (atomically), dropping the rows of certificates and
        CAs not in ``keep_*`` (None keeps all); ``StoreError`` if it cannot be written."""
        if keep_certs is not None:
            keep = set(keep_certs)
            for name in [n for n in self._rows if n not in keep]:
                del self._rows[name]
                self._decoded.pop(name, None)
                self._changed = True
        if keep_directories is not None:
            keep = set(keep_directories)
            for directory in [d for d in self._cas if d not in keep]:
                del self._cas[directory]
                self._changed = True
        if not self._changed:
            return
        lines = [_HEADER]
        lines += [f"{_CA_MARK}\t{json.dumps(f.to_json(), sort_keys=True)}"
                  for f in self._cas.values()]
        lines += ["\t".join(fields) for fields in self._rows.values()]
        try:
            write_atomic(self.path, ("\n".join(lines) + "\n").encode(), PUBLIC_MODE)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}; check that the certificate "
                             "tree is writable") from exc
        self._changed = False


def cert_names(layout: Layout, lines: Iterable[CertLine], key_types: Iterable[KeyType]
               ) -> dict[tuple[int, KeyType], str]:
    """The certificate file name of every (line number, key type): the book's row keys."""
    kts = tuple(key_types)
    return {(line.lineno, kt): layout.pair_names(line, kt)[1] for line in lines for kt in kts}


def states_for(book: RenewalBook, names: Mapping[tuple[int, KeyType], str],
               found: Mapping[tuple[int, KeyType], Found]
               ) -> dict[tuple[int, KeyType], CertState]:
    """The kept state of every stored certificate that it still describes (planning's
    input); a certificate without a row, or with another certificate's row, has none."""
    if not len(book):
        return {}
    states = {}
    for key, name in names.items():
        cert = found[key].cert
        if cert is not None and cert.cert_id:
            state = book.state(name, cert.cert_id)
            if state is not None:
                states[key] = state
    return states
