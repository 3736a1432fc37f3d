"""Planning: which (domains line x key type) jobs are due, and why. Pure: no I/O.

Contract: ``plan(settings, lines, found, now)`` returns one ``Job`` per due pair, in domains
order, RSA before EC, each with a human reason. A job is due when its certificate is missing,
unreadable, expired, within ``reauthorizeDays`` of notAfter, older than
``generateNewCertsAfterDays`` (measured from notBefore, so the certificate's own lifetime
counts, not an assumed 90 days), its key is missing or does not match, or its names differ
from the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from lematt.config import Settings
from lematt.model import CertLine, Found, Job, KeyType


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.1f} d" if abs(days) < 10 else f"{days:.0f} d"


def due_reason(settings: Settings, line: CertLine, found: Found, now: datetime) -> str | None:
    """Why this job is due, or None when its pair is current."""
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
    if left <= timedelta(0):
        return f"expired {_days(-left)} ago"
    after = settings.generate_new_certs_after_days
    if after:
        age = now - cert.not_before
        if age >= timedelta(days=after):
            return f"age {_days(age)} (generateNewCertsAfterDays {after:g})"
        return None
    if left < timedelta(days=settings.reauthorize_days):
        return f"expires in {_days(left)}"
    return None


def plan(settings: Settings, lines: tuple[CertLine, ...],
         found: Mapping[tuple[int, KeyType], Found], now: datetime) -> list[Job]:
    jobs: list[Job] = []
    for line in lines:
        for key_type in settings.key_types:
            state = found[(line.lineno, key_type)]
            reason = due_reason(settings, line, state, now)
            if reason is not None:
                jobs.append(Job(line, key_type, reason, state))
    return jobs
