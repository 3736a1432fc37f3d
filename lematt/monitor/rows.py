"""One row per certificate (domains line x key type): what ``lematt status`` shows and what
``metricsFile`` exports, computed once, here.

Contract: ``certificate_rows(settings, lines, found, names, renewal, backoff, owed, now)``
returns a ``Row`` per certificate in domains order (key types in ``keyTypes`` order) from
what the local tree holds: the inventory scan (``found``, ``names``), the kept renewal
state (``store.renewal.RenewalBook``: the CA's renewal window, profile, revocation), the
back-off book, the owed deploys (``monitor.owed``) and what the verify endpoints served at
their last check (``store.served``). Pure: no I/O.

``next_renewal`` says when the next run will renew a certificate and by which rule. It
asks ``lematt.plan`` alone: when ``plan.due_reason`` says the certificate is due, it is due
now for that reason; otherwise at ``plan.due_rule``'s moment, by its rule (README "Renewal
timing"): the end of the CA's window (rule 2) when that comes first, else
``generateNewCertsAfterDays`` (rule 3), ``reauthorizeDays`` (rule 4), the moment picked in
the CA's renewal window (rule 5), or a third (half) of the lifetime left (rule 6).
``due_reason`` is asked only near or past that moment: before it, it has nothing to say.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from lematt.config import Settings
from lematt.model import CertLine, CertState, Found, KeyType, RenewalWindow
from lematt.monitor.owed import Names
from lematt.plan import due_reason, due_rule
from lematt.store.backoff import Backoff, BackoffBook
from lematt.store.renewal import RenewalBook
from lematt.store.served import ServedBook, ServedCheck

# plan.due_at's promise: more than this before its moment, due_reason names no reason.
_ROUNDING = 2.0

Key = tuple[int, KeyType]


class Row(NamedTuple):
    """One certificate; times in seconds since the epoch."""

    line: CertLine
    key_type: KeyType
    cert_name: str  # its file name in cert/ (the key of the kept state and back-off)
    not_after: float | None  # None: no readable certificate
    not_before: float | None
    due: bool  # the next run orders it (unless it is in back-off)
    renew_at: float  # when it becomes due (now, if it is due)
    why: str  # the reason it is due, or the rule that will make it due
    profile: str | None  # the profile the line orders with (None: the CA's default)
    problem: str | None  # what is wrong with the stored pair (missing, unreadable, ...)
    backoff: Backoff | None  # its last orders failed: how often, why, and until when
    owed: tuple[str, ...]  # hosts its line's deploy still has to reach
    window: RenewalWindow | None  # the CA's renewal window (ARI) that planning trusts
    # The last check of each verify endpoint of the stored certificate (store.served), in
    # endpoint order; None: not checked (no endpoint, or not since it was stored).
    served: tuple[tuple[str, ServedCheck], ...] | None = None

    @property
    def mismatched(self) -> list[tuple[str, ServedCheck]]:
        return [(e, c) for e, c in self.served or () if not c.matched]

    @property
    def label(self) -> str:
        return f"{self.line.primary} ({self.key_type.upper()})"

    def days_left(self, now: float) -> float | None:
        return None if self.not_after is None else (self.not_after - now) / 86400


def next_renewal(settings: Settings, line: CertLine, found: Found, now: datetime,
                 state: CertState | None, now_ts: float,
                 span: tuple[float, float] | None = None) -> tuple[bool, float, str]:
    """(due now, when it is or becomes due, why); see the module docstring. ``span``: the
    certificate's (notBefore, notAfter) as timestamps, when the caller has them."""
    moment, rule = due_rule(settings, line, found, state, span)
    if moment > now_ts + _ROUNDING:
        return False, moment, rule  # plan.due_reason has nothing to say before the moment
    reason = due_reason(settings, line, found, now, state, now_ts)
    if reason is not None:
        return True, now_ts, reason
    return False, moment, rule  # within a second or two of the moment


def served_state(checks: Mapping[str, ServedCheck] | None, allowed: Collection[str] | None,
                 not_after: datetime) -> tuple[tuple[str, ServedCheck], ...] | None:
    """The checks that still speak of the stored certificate: of endpoints the config still
    checks (``allowed``), made while it was the one stored (same notAfter)."""
    if not checks or not allowed:
        return None
    if len(checks) == 1:  # the usual case, and status runs this for every certificate
        ((endpoint, check),) = checks.items()
        expected = check.expected
        if endpoint in allowed and expected is not None and expected.not_after == not_after:
            return ((endpoint, check),)
        return None
    kept = tuple((endpoint, check) for endpoint, check in sorted(checks.items())
                 if endpoint in allowed and check.expected is not None
                 and check.expected.not_after == not_after)
    return kept or None


def certificate_rows(settings: Settings, lines: tuple[CertLine, ...],
                     found: Mapping[Key, Found], names: Mapping[Key, str],
                     renewal: RenewalBook | None, backoff: BackoffBook | None,
                     owed: Mapping[Names, tuple[str, ...]], now: float,
                     served: ServedBook | None = None,
                     served_keep: Mapping[str, Collection[str]] | None = None) -> list[Row]:
    """A row per certificate; see the module docstring. ``served``: the record of verify
    checks, ``served_keep`` the endpoints each certificate's sections check now
    (``verify.checks.served_keep``). (Written as one tight loop, the kept states decoded in
    one pass and ``next_renewal`` inlined: status runs it for 20,000 certificates and must
    stay as quick as a no-op run.)"""
    now_dt = datetime.fromtimestamp(now, UTC)
    rows: list[Row] = []
    append = rows.append
    entries = backoff.entries if backoff is not None else {}
    served_entries = served.entries if served is not None and served_keep else None
    key_types = settings.key_types
    get_kept = (renewal.all_states() if renewal is not None else {}).get
    soon = now + _ROUNDING
    for line in lines:
        line_owed = owed.get(line.names, ()) if owed else ()
        profile = line.profile
        lineno = line.lineno
        for key_type in key_types:
            key = (lineno, key_type)
            state = found[key]
            name = names[key]
            entry = entries.get(name) if entries else None
            cert = state.cert
            if cert is None:
                problem = state.problem or "missing"
                append(Row(line, key_type, name, None, None, True, now, problem, profile,
                           problem, entry, line_owed, None))
                continue
            not_before, not_after = cert.not_before.timestamp(), cert.not_after.timestamp()
            kept = get_kept(name)
            if kept is not None and (kept.cert_id != cert.cert_id or not cert.cert_id):
                kept = None  # another certificate's state (as RenewalBook.state)
            at, why = due_rule(settings, line, state, kept, (not_before, not_after))
            due = False
            if at <= soon:  # next_renewal: due_reason is asked only near or past the moment
                reason = due_reason(settings, line, state, now_dt, kept, now)
                if reason is not None:
                    due, at, why = True, now, reason
            # The window planning trusts (not one whose moment lies past the certificate's
            # life): the row shows it.
            window = kept.window if kept is not None else None
            if window is not None and window.chosen >= not_after:
                window = None
            checked = None
            if served_entries:
                assert served_keep is not None
                checked = served_state(served_entries.get(name), served_keep.get(name),
                                       cert.not_after)
            append(Row(line, key_type, name, not_after, not_before, due, at, why, profile,
                       state.problem, entry, line_owed, window, checked))
    return rows
