"""store.backoff and monitor.retries: the persistent back-off of certificates whose orders
failed (delays, Retry-After, round trip, hostile files, atomic write, the plan filter)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lematt.model import CertLine, Failure, FailureKind, Found, Job, Outcome
from lematt.monitor.retries import settle
from lematt.orders import UNFINISHED
from lematt.store.backoff import (
    FILE_NAME,
    MAX_DELAY,
    MAX_FILE_BYTES,
    MAX_RETRY_AFTER,
    BackoffBook,
    delay_for,
    hold_back,
)

NOW = 1_800_000_000.0
FAIL = Failure(FailureKind.VALIDATION, "a.test: the CA could not validate the challenge")


def job(lineno: int, kt: str = "ec") -> Job:
    line = CertLine(lineno, (f"n{lineno}.test",))
    return Job(line, kt, "missing", Found(None, "missing"))  # type: ignore[arg-type]


def names_for(*jobs: Job) -> dict[tuple[int, str], str]:
    return {(j.line.lineno, j.key_type): f"n{j.line.lineno}.{j.key_type}.pem" for j in jobs}


def test_delay_starts_at_a_minute_doubles_and_stops_at_a_day() -> None:
    assert [delay_for(n) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert delay_for(11) == 61440 and delay_for(12) == MAX_DELAY == 86400
    assert delay_for(10**6) == MAX_DELAY  # no overflow after years of failures


def test_a_longer_retry_after_wins_up_to_a_week_a_shorter_one_does_not() -> None:
    assert delay_for(1, retry_after=3600) == 3600
    assert delay_for(5, retry_after=30) == 960
    assert delay_for(1, retry_after=10**9) == MAX_RETRY_AFTER
    assert delay_for(1, retry_after=float("inf")) == 60


def test_failures_count_up_and_round_trip_through_the_file(tmp_path: Path) -> None:
    book = BackoffBook.load(tmp_path)
    assert book.entries == {} and book.warning is None
    first = book.record("a.pem", FAIL, NOW)
    assert (first.failures, first.until, first.kind) == (1, NOW + 60, "validation")
    second = book.record("a.pem", FAIL, NOW + 100)
    assert (second.failures, second.until) == (2, NOW + 100 + 120)
    limited = Failure(FailureKind.RATE_LIMITED, "too many", retry_after=7200.0)
    book.record("b.pem", limited, NOW)
    book.save(["a.pem", "b.pem"])
    path = tmp_path / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    again = BackoffBook.load(tmp_path)
    assert again.warning is None
    assert again.get("a.pem") == second
    assert again.get("b.pem").until == NOW + 7200  # type: ignore[union-attr]
    assert "in back-off until" in second.describe() and "2 failures" in second.describe()


def test_save_drops_lines_no_longer_configured_and_removes_an_empty_file(
        tmp_path: Path) -> None:
    book = BackoffBook.load(tmp_path)
    book.record("kept.pem", FAIL, NOW)
    book.record("gone.pem", FAIL, NOW)
    book.save(["kept.pem"])
    assert set(BackoffBook.load(tmp_path).entries) == {"kept.pem"}
    book.clear("kept.pem")
    book.save(["kept.pem"])
    assert not (tmp_path / FILE_NAME).exists()


def test_unchanged_book_is_not_written(tmp_path: Path) -> None:
    book = BackoffBook.load(tmp_path)
    book.record("a.pem", FAIL, NOW)
    book.save(["a.pem"])
    before = os.stat(tmp_path / FILE_NAME).st_mtime_ns, os.stat(tmp_path / FILE_NAME).st_ino
    BackoffBook.load(tmp_path).save(["a.pem"])
    after = os.stat(tmp_path / FILE_NAME).st_mtime_ns, os.stat(tmp_path / FILE_NAME).st_ino
    assert before == after


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"schema": "other", "version": 1, "certificates": {}}',
    b'{"schema": "lematt-backoff", "version": 99, "certificates": {}}',
    b'{"schema": "lematt-backoff", "version": 1, "certificates": []}',
    b"[" * 100000 + b"]" * 100000,
])
def test_a_foreign_or_corrupt_file_is_a_warning_an_empty_book_and_rewritten(
        tmp_path: Path, content: bytes) -> None:
    (tmp_path / FILE_NAME).write_bytes(content)
    book = BackoffBook.load(tmp_path)
    assert book.entries == {}
    assert book.warning is not None and FILE_NAME in book.warning
    assert "\n" not in book.warning
    book.save([])  # nothing to keep: the foreign file goes
    assert not (tmp_path / FILE_NAME).exists()


def test_an_oversized_file_is_not_read_whole(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b" " * (MAX_FILE_BYTES + 10))
    book = BackoffBook.load(tmp_path)
    assert book.entries == {} and "larger than" in (book.warning or "")


def test_damaged_entries_are_dropped_the_rest_kept(tmp_path: Path) -> None:
    good = {"failures": 2, "last": NOW, "until": NOW + 120, "kind": "validation",
            "message": "x"}
    doc = {"schema": "lematt-backoff", "version": 1, "certificates": {
        "good.pem": good,
        "neg.pem": {**good, "failures": 0},
        "nan.pem": {**good, "until": "soon"},
        "bool.pem": {**good, "failures": True},
        "../escape.pem": good,
        # A hand-edited entry cannot hold a certificate longer than lematt ever would.
        "forever.pem": {**good, "until": NOW + 10**12},
        "text.pem": {**good, "message": "line\n\x1b[31mred"},
    }}
    (tmp_path / FILE_NAME).write_text(json.dumps(doc))
    book = BackoffBook.load(tmp_path)
    assert set(book.entries) == {"good.pem", "forever.pem", "text.pem"}
    assert "4 damaged entries" in (book.warning or "")
    assert book.entries["forever.pem"].until == NOW + MAX_RETRY_AFTER
    assert "\n" not in book.entries["text.pem"].message
    assert "\x1b" not in book.entries["text.pem"].message


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text('{"schema": "lematt-backoff", "version": 1, "certificates": {}}')
    (tmp_path / FILE_NAME).symlink_to(target)
    book = BackoffBook.load(tmp_path)
    assert book.entries == {} and book.warning is not None


def test_a_write_cut_short_keeps_the_old_file_and_leaves_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename is the commit point (store.atomic): a kill or an error before it leaves
    the old file as it was."""
    from lematt.errors import StoreError

    book = BackoffBook.load(tmp_path)
    book.record("a.pem", FAIL, NOW)
    book.save(["a.pem"])
    old = (tmp_path / FILE_NAME).read_bytes()
    book.record("a.pem", FAIL, NOW + 1)

    def killed(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(StoreError, match=FILE_NAME):
        book.save(["a.pem"])
    monkeypatch.undo()
    assert (tmp_path / FILE_NAME).read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]


def test_hold_back_holds_only_jobs_still_in_back_off_and_force_ignores_it(
        tmp_path: Path) -> None:
    a, b, c = job(1), job(2), job(3, "rsa")
    names = names_for(a, b, c)
    book = BackoffBook.load(tmp_path)
    book.record(names[(1, "ec")], FAIL, NOW)  # until NOW + 60
    book.record(names[(2, "ec")], FAIL, NOW - 3600)  # over
    ready, held = hold_back([a, b, c], book, names, NOW + 30)
    assert ready == [b, c] and [j for j, _ in held] == [a]
    ready, held = hold_back([a, b, c], book, names, NOW + 60)
    assert ready == [a, b, c] and held == []
    ready, held = hold_back([a, b, c], book, names, NOW + 30, ignore_backoff=True)
    assert ready == [a, b, c] and held == []


def test_settle_records_failures_clears_successes_and_what_is_no_longer_due(
        tmp_path: Path) -> None:
    a, b, c, d, e = job(1), job(2), job(3), job(4), job(5)
    names = names_for(a, b, c, d, e)
    book = BackoffBook.load(tmp_path)
    for j in (b, c, d):
        book.record(names[(j.line.lineno, "ec")], FAIL, NOW - 10**5)
    outcomes = [
        Outcome(a, failure=FAIL),  # first failure
        Outcome(b, changed=True),  # renewed: cleared
        Outcome(c, failure=Failure(FailureKind.TIMEOUT, UNFINISHED)),  # the run's deadline
    ]
    # d is not due any more (fixed by hand): cleared; e is due, not ordered (held): kept.
    assert settle(book, [a, b, c, e], outcomes, names, NOW) is None
    again = BackoffBook.load(tmp_path)
    assert set(again.entries) == {names[(1, "ec")], names[(3, "ec")]}
    assert again.entries[names[(1, "ec")]].failures == 1
    assert again.entries[names[(3, "ec")]].failures == 1  # unchanged by the deadline
    assert again.entries[names[(3, "ec")]].last == NOW - 10**5


def test_failure_keeps_retry_after_through_its_json_codec() -> None:
    failure = Failure(FailureKind.RATE_LIMITED, "slow down", "urn:x", retry_after=3600.0)
    assert Failure.from_json(json.loads(json.dumps(failure.to_json()))) == failure
    assert Failure.from_json({"kind": "ca", "message": "m", "retry_after": True}).retry_after \
        is None


def test_failure_of_an_acme_problem_carries_its_retry_after() -> None:
    from lematt.errors import AcmeError, AcmeProblem

    problem = AcmeProblem("urn:ietf:params:acme:error:rateLimited", "slow", 429,
                          retry_after=120.0)
    failure = Failure.of(problem)
    assert (failure.kind, failure.retry_after) == (FailureKind.RATE_LIMITED, 120.0)
    wrapped = AcmeError("busy")
    wrapped.retry_after = 30.0
    assert Failure.of(wrapped).retry_after == 30.0
    assert Failure.of(AcmeError("plain")).retry_after is None
