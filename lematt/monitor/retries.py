"""A run's order outcomes into the persistent back-off (``lematt.store.backoff``).

Contract: ``settle(book, due, outcomes, names, now)`` updates the book after the orders (or
after planning, when nothing was ordered) and writes it (``BackoffBook.save``, atomic), with
a warning, not an exception, when it cannot be written:

* a certificate renewed: its back-off is cleared;
* a certificate whose order failed: one more failure in a row (the delay doubles), except a
  job the run's deadline cut short (``orders.UNFINISHED``): the run ran out of time, the
  certificate did not fail;
* a certificate that is not due any more (renewed by hand, its line changed): cleared;
* certificates of lines no longer configured: dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lematt.errors import StoreError
from lematt.model import Job, KeyType, Outcome
from lematt.orders import UNFINISHED
from lematt.store.backoff import BackoffBook

Key = tuple[int, KeyType]


def settle(book: BackoffBook, due: Iterable[Job], outcomes: Iterable[Outcome],
           names: Mapping[Key, str], now: float,
           planned: Iterable[int] | None = None) -> str | None:
    """Update and save ``book``; returns a warning for the user when it could not be saved.
    ``names``: every configured certificate's file name; ``planned``: the line numbers the
    run planned for (``--only``; None: all), the only ones whose "no longer due" counts."""
    still_due = {names[(job.line.lineno, job.key_type)] for job in due}
    lines = None if planned is None else set(planned)
    judged = {name for (lineno, _), name in names.items() if lines is None or lineno in lines}
    for name in [n for n in book.entries if n in judged and n not in still_due]:
        book.clear(name)
    for outcome in outcomes:
        job = outcome.job
        name = names[(job.line.lineno, job.key_type)]
        if outcome.failure is None:
            book.clear(name)
        elif outcome.failure.message != UNFINISHED:
            book.record(name, outcome.failure, now)
    try:
        book.save(names.values())
    except StoreError as exc:
        return f"{exc}; the certificates that failed may be tried again at the next run"
    return None
