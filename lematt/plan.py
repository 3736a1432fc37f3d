"""Planning: which (domains line x key type) jobs are due, and why. Pure: no I/O.

Contract: ``plan(settings, lines, found, now, states, default)`` returns one ``Job`` per due
pair, in domains order, RSA before EC, each with a human reason; ``states`` holds what is
kept about each stored certificate (``model.CertState``: the CA's renewal window, the profile it was
ordered with, a revocation mark), only for certificates it still describes. The rules, first
match wins (README "Renewal timing"):

1. the certificate is missing or unreadable, its key is missing or does not match, its names
   differ from the line, it has expired, ``lematt revoke`` revoked it, or its profile is not
   the line's profile: due;
2. the CA's renewal window (ARI, RFC 9773) has already ended: due, whatever else is set (a
   CA moves the window into the past to ask for renewal now, e.g. before a revocation);
3. ``generateNewCertsAfterDays`` set: due at that age (from notBefore, so the certificate's
   own lifetime counts); an age the certificate cannot reach before it expires also falls
   back to rule 6, so a short certificate never runs out;
4. ``reauthorizeDays`` set: due that many days before notAfter;
5. a renewal window from the CA: due once the moment picked in it has passed;
6. otherwise: due when a third of the certificate's lifetime is left (half for lifetimes
   under 10 days).

``timing_warnings`` names the settings that make no sense for the stored certificates'
lifetimes (renewing at every run, or expiring first).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

from lematt.config import Settings
from lematt.model import CertInfo, CertLine, CertState, Found, Job, KeyType, RenewalWindow

# Below this lifetime a third left is too little room for a failed run or two (a 6-day
# certificate would have 2 days): renew at half of it instead.
SHORT_LIFETIME = timedelta(days=10)
_SHORT_SECONDS = SHORT_LIFETIME.total_seconds()
_ZERO = timedelta(0)


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.1f} d" if abs(days) < 10 else f"{days:.0f} d"


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _see(state: CertState) -> str:
    url = state.window.explanation_url if state.window else None
    return f"; the CA explains: {url}" if url else ""


def _fallback(cert: CertInfo, left: timedelta) -> str | None:
    # Seconds, not timedeltas: every certificate of a cron run passes here.
    lifetime = (cert.not_after - cert.not_before).total_seconds()
    part = 2 if lifetime < _SHORT_SECONDS else 3
    if left.total_seconds() * part > lifetime:
        return None
    share = "half" if part == 2 else "a third"
    return (f"{share} of its lifetime left ({_days(left)} of "
            f"{_days(timedelta(seconds=lifetime))})")


def due_reason(settings: Settings, line: CertLine, found: Found, now: datetime,
               state: CertState | None = None, now_ts: float | None = None) -> str | None:
    """Why this job is due, or None when its pair is current (``now_ts``: ``now`` as a
    timestamp, computed once per plan rather than once per certificate)."""
    cert = found.cert
    if cert is None:
        return found.problem or "missing"
    if found.problem is not None:
        return found.problem
    if frozenset(line.names) != cert.names:
        added = sorted(set(line.names) - cert.names)
        dropped = sorted(cert.names - set(line.names))
        parts = ([f"+{' +'.join(added)}"] if added else []) + (
            [f"-{' -'.join(dropped)}"] if dropped else [])
        return f"names changed ({' '.join(parts)})"
    left = cert.not_after - now
    if left <= _ZERO:
        return f"expired {_days(-left)} ago"
    window = None
    if state is not None:
        if now_ts is None:
            now_ts = now.timestamp()
        if state.revoked:
            return f"revoked ({state.revoked})"
        wanted = line.profile or ""
        if state.profile is not None and state.profile != wanted:
            return (f"profile changed ({state.profile or 'the CA default'} -> "
                    f"{wanted or 'the CA default'})")
        window = state.window
        # A window that reaches past notAfter was clamped when it was kept; one that is
        # somehow still beyond it is not trusted with the certificate's life.
        if window is not None and window.chosen - now_ts >= left.total_seconds():
            window = None
        if window is not None and window.end <= now_ts:
            return f"past the CA's renewal window (ended {_date(window.end)}){_see(state)}"
    after = settings.generate_new_certs_after_days
    if after:
        age = now - cert.not_before
        if age >= timedelta(days=after):
            return f"age {_days(age)} (generateNewCertsAfterDays {after:g})"
        if timedelta(days=after) < cert.not_after - cert.not_before:
            return None
        return _fallback(cert, left)
    if settings.reauthorize_days is not None:
        if left.total_seconds() < settings.reauthorize_days * 86400:
            return f"expires in {_days(left)}"
        return None
    if window is not None:
        assert state is not None and now_ts is not None
        if window.chosen <= now_ts:
            return (f"inside the CA's renewal window (until {_date(window.end)})"
                    f"{_see(state)}")
        return None
    return _fallback(cert, left)


def plan(settings: Settings, lines: tuple[CertLine, ...],
         found: Mapping[tuple[int, KeyType], Found], now: datetime,
         states: Mapping[tuple[int, KeyType], CertState] | None = None,
         default: CertState | None = None, force: str | None = None) -> list[Job]:
    """``default``: the state of every certificate with a certID that ``states`` does not
    name (``store.renewal.states_for``: one state standing for all while none is due).
    ``force``: every pair of ``lines`` is due, with this reason where no rule makes it so."""
    jobs: list[Job] = []
    now_ts = now.timestamp()
    for line, key_type, state, kept in _pairs(settings, lines, found, states, default):
        reason = due_reason(settings, line, state, now, kept, now_ts) or force
        if reason is not None:
            cert_id = state.cert.cert_id if state.cert is not None else ""
            jobs.append(Job(line, key_type, reason, state, replaces=cert_id or None,
                            new_key=bool(kept is not None and kept.revoked)))
    return jobs


def timing_warnings(settings: Settings, lines: tuple[CertLine, ...],
                    found: Mapping[tuple[int, KeyType], Found]) -> list[str]:
    """One warning per explicit renewal setting that does not fit the lifetimes of the
    stored certificates: ``reauthorizeDays`` at least a lifetime (renewed at every run),
    ``generateNewCertsAfterDays`` at least a lifetime (the age is never reached)."""
    checks = []
    if settings.reauthorize_days is not None and not settings.generate_new_certs_after_days:
        checks.append(("reauthorizeDays", settings.reauthorize_days,
                       "renewed at every run; unset it to follow the CA's renewal window "
                       "(or a third of the lifetime)"))
    if settings.generate_new_certs_after_days:
        checks.append(("generateNewCertsAfterDays", settings.generate_new_certs_after_days,
                       "never that old: renewed when a third of the lifetime is left "
                       "instead; lower it or unset it"))
    warnings = []
    for key, days, effect in checks:
        limit = timedelta(days=days)
        count, first = 0, None
        for line in lines:
            for key_type in settings.key_types:
                cert = found[(line.lineno, key_type)].cert
                if cert is not None and cert.not_after - cert.not_before <= limit:
                    count += 1
                    first = first or (line, key_type, cert.not_after - cert.not_before)
        if first is not None:
            line, key_type, lifetime = first
            warnings.append(
                f"{settings.where(key)}: {key} {days:g} is at least the lifetime of {count} "
                f"certificate(s) (first {line.primary} ({key_type.upper()}), "
                f"{_days(lifetime)}): they are {effect}")
    return warnings


# What ``due_rule`` names as the rule that makes a pair due at its moment (README "Renewal
# timing"); the window rule (5) also carries the CA's explanation URL when it gave one.
RULE_NOW = ""  # due whatever the time: due_reason says why
RULE_EXPIRY = "expiry"
RULE_WINDOW_END = "the end of the CA's renewal window (ARI)"
RULE_WINDOW = "the CA's renewal window (ARI)"
RULE_HALF = "half of its lifetime left"
RULE_THIRD = "a third of its lifetime left"


def due_at(settings: Settings, line: CertLine, found: Found,
           state: CertState | None = None) -> float:
    """The moment (seconds since the epoch) from which ``due_reason`` names a reason for
    this pair if nothing but the clock changes; 0.0 when it is due whatever the time.
    ``due_rule``'s moment (see there)."""
    return due_rule(settings, line, found, state)[0]


def due_rule(settings: Settings, line: CertLine, found: Found,
             state: CertState | None = None,
             span: tuple[float, float] | None = None) -> tuple[float, str]:
    """(``due_at``'s moment, the rule that makes the pair due then): the one answer to
    "when does this pair become due" (the quiet-run memo and ``lematt status`` both ask
    it). Rule by rule the same decisions as ``due_reason`` (kept in step by
    tests/unit/test_plan_due_at.py). Where rounding could tip ``due_reason`` either way (a
    value within a second of a limit), the earlier moment is answered: early is only a full
    run too many. The rule is ``RULE_NOW`` for 0.0, else the rule of the earliest moment
    (on a tie, the configured rule before a window's end, both before expiry). ``span``:
    the certificate's (notBefore, notAfter) as timestamps, when the caller has them."""
    cert = found.cert
    if cert is None or found.problem is not None or frozenset(line.names) != cert.names:
        return 0.0, RULE_NOW
    window = None
    if state is not None:
        if state.revoked:
            return 0.0, RULE_NOW
        if state.profile is not None and state.profile != (line.profile or ""):
            return 0.0, RULE_NOW
        window = state.window
    not_before, not_after = span or (cert.not_before.timestamp(), cert.not_after.timestamp())
    if window is not None and window.chosen >= not_after - 1.0:
        # Not trusted with the certificate's life (see due_reason); at the limit itself,
        # either way.
        untrusted = _due_moment(settings, not_before, not_after, None)
        if window.chosen >= not_after + 1.0:
            return untrusted
        trusted = _due_moment(settings, not_before, not_after, window)
        return trusted if trusted[0] < untrusted[0] else untrusted
    return _due_moment(settings, not_before, not_after, window)


def _due_moment(settings: Settings, not_before: float, not_after: float,
                window: RenewalWindow | None) -> tuple[float, str]:
    lifetime = not_after - not_before
    if lifetime < _SHORT_SECONDS:
        fallback, fallback_rule = not_after - lifetime / 2, RULE_HALF
    else:
        fallback, fallback_rule = not_after - lifetime / 3, RULE_THIRD
    after = settings.generate_new_certs_after_days
    if after:
        moment, rule = not_before + after * 86400, f"generateNewCertsAfterDays {after:g}"
        # Within a second of the lifetime, rounding decides which rule due_reason takes.
        if after * 86400 >= lifetime - 1.0 and fallback < moment:
            moment, rule = fallback, fallback_rule
    elif settings.reauthorize_days is not None:
        moment = not_after - settings.reauthorize_days * 86400
        rule = f"reauthorizeDays {settings.reauthorize_days:g}"
    elif window is not None:
        url = window.explanation_url
        moment, rule = window.chosen, (f"{RULE_WINDOW}; the CA explains: {url}" if url
                                       else RULE_WINDOW)
    else:
        moment, rule = fallback, fallback_rule
    if window is not None and window.end < moment:
        moment, rule = window.end, RULE_WINDOW_END
    if not_after < moment:
        moment, rule = not_after, RULE_EXPIRY
    return moment, rule


def next_due(settings: Settings, lines: tuple[CertLine, ...],
             found: Mapping[tuple[int, KeyType], Found],
             states: Mapping[tuple[int, KeyType], CertState] | None = None,
             default: CertState | None = None) -> float:
    """The earliest ``due_at`` of every pair (the arguments as for ``plan``); infinity
    when there are none."""
    return min((due_at(settings, line, state, kept)
                for line, _, state, kept in _pairs(settings, lines, found, states, default)),
               default=float("inf"))


def _pairs(settings: Settings, lines: tuple[CertLine, ...],
           found: Mapping[tuple[int, KeyType], Found],
           states: Mapping[tuple[int, KeyType], CertState] | None,
           default: CertState | None
           ) -> Iterator[tuple[CertLine, KeyType, Found, CertState | None]]:
    """Each pair in domains order, RSA before EC, with what is kept about it: its own
    state, else ``default`` for a stored certificate with a certID."""
    states = states or {}
    for line in lines:
        for key_type in settings.key_types:
            key = (line.lineno, key_type)
            state = found[key]
            kept = states.get(key)
            if kept is None and default is not None and state.cert is not None \
                    and state.cert.cert_id:
                kept = default
            yield line, key_type, state, kept
