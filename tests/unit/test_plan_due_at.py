"""plan.due_at (due_rule's moment) agrees with due_reason: before the moment it names, the
pair is not due; from a second after it, it is (whatever the rule that decides). The
quiet-run memo and ``lematt status`` trust it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from lematt.config import Settings
from lematt.model import CertInfo, CertLine, CertState, Found, RenewalWindow
from lematt.plan import due_at, due_reason, due_rule, next_due

LINE = CertLine(1, ("a.example.com",))
BASE = 1_800_000_000.0  # 2027-01-15
DAY = 86400.0


def _settings(after: float | None, reauth: float | None) -> Settings:
    return Settings(conf_dir=Path("c"), account_key=Path("a"),  # type: ignore[arg-type]
                    generate_new_certs_after_days=after, reauthorize_days=reauth)


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


windows = st.one_of(st.none(), st.tuples(st.floats(-100, 200), st.floats(0, 50),
                                         st.floats(0, 1)))


@hsettings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(lifetime=st.floats(1, 200), after=st.one_of(st.none(), st.floats(1, 250)),
       reauth=st.one_of(st.none(), st.floats(0, 250)), window=windows,
       probe=st.floats(-10, 300))
def test_due_at_is_where_due_reason_starts_to_answer(
        lifetime: float, after: float | None, reauth: float | None,
        window: tuple[float, float, float] | None, probe: float) -> None:
    cert = CertInfo(_at(BASE), _at(BASE + lifetime * DAY), frozenset(LINE.names), cert_id="x")
    found = Found(cert, None, key_present=True)
    state = None
    if window is not None:
        start = BASE + window[0] * DAY
        end = start + window[1] * DAY
        state = CertState("x", "", RenewalWindow(start, end, start + window[2] * (end - start)))
    settings = _settings(after, reauth)
    moment = due_at(settings, LINE, found, state)
    now = BASE + probe * DAY
    if abs(now - moment) < 2:
        return  # the second around the moment itself: rounding, either answer is fine
    reason = due_reason(settings, LINE, found, _at(now), state)
    tie = window is not None and state is not None and state.window is not None \
        and abs(state.window.chosen - cert.not_after.timestamp()) < 2
    if tie or (after is not None and abs(after - lifetime) * DAY < 2):
        # A limit at the limit (an age equal to the lifetime, a window moment at notAfter):
        # rounding picks due_reason's rule, due_at answers the earlier moment of the two.
        # Only the safe direction holds.
        assert now > moment or reason is None
        return
    assert (reason is not None) == (now > moment), (moment - BASE, reason)


def test_what_is_due_whatever_the_time_is_due_at_zero() -> None:
    cert = CertInfo(_at(BASE), _at(BASE + 90 * DAY), frozenset(LINE.names), cert_id="x")
    settings = _settings(None, None)
    assert due_at(settings, LINE, Found(None, "missing")) == 0.0
    assert due_at(settings, LINE, Found(cert, "key does not match the certificate")) == 0.0
    assert due_at(settings, CertLine(1, ("b.example.com",)), Found(cert, None)) == 0.0
    assert due_at(settings, LINE, Found(cert, None), CertState("x", revoked="superseded")) == 0
    assert due_at(settings, LINE, Found(cert, None), CertState("x", profile="tlsserver")) == 0


def test_next_due_is_the_earliest_and_infinity_without_pairs() -> None:
    settings = _settings(None, None)
    early = CertInfo(_at(BASE), _at(BASE + 30 * DAY), frozenset(LINE.names), cert_id="e")
    late = CertInfo(_at(BASE), _at(BASE + 90 * DAY), frozenset(LINE.names), cert_id="l")
    other = CertLine(2, LINE.names)
    found = {(1, "rsa"): Found(late, None), (1, "ec"): Found(late, None),
             (2, "rsa"): Found(early, None), (2, "ec"): Found(late, None)}
    assert next_due(settings, (LINE, other), found) == BASE + 20 * DAY
    assert next_due(settings, (), {}) == float("inf")


def test_due_rule_names_the_rule_of_the_moment() -> None:
    """The rule ``lematt status`` shows comes with the moment: the earliest rule wins, a
    window's end before the rule it cuts short, the explanation URL with rule 5."""
    cert = CertInfo(_at(BASE), _at(BASE + 90 * DAY), frozenset(LINE.names), cert_id="x")
    short = CertInfo(_at(BASE), _at(BASE + 6 * DAY), frozenset(LINE.names), cert_id="x")
    found = Found(cert, None)
    late = RenewalWindow(BASE + 70 * DAY, BASE + 80 * DAY, BASE + 75 * DAY,
                         "https://ca.example/why")
    early = RenewalWindow(BASE + 5 * DAY, BASE + 10 * DAY, BASE + 7 * DAY)
    plain = _settings(None, None)
    assert due_rule(plain, LINE, Found(None, "missing")) == (0.0, "")
    assert due_rule(plain, LINE, found) == (BASE + 60 * DAY, "a third of its lifetime left")
    assert due_rule(plain, LINE, Found(short, None)) == (BASE + 3 * DAY,
                                                         "half of its lifetime left")
    assert due_rule(plain, LINE, found, CertState("x", "", late)) == (
        BASE + 75 * DAY, "the CA's renewal window (ARI); the CA explains: "
                         "https://ca.example/why")
    assert due_rule(_settings(45, None), LINE, found) == (BASE + 45 * DAY,
                                                          "generateNewCertsAfterDays 45")
    assert due_rule(_settings(45, None), LINE, found, CertState("x", "", early)) == (
        BASE + 10 * DAY, "the end of the CA's renewal window (ARI)")
    assert due_rule(_settings(None, 20), LINE, found) == (BASE + 70 * DAY, "reauthorizeDays 20")
    assert due_rule(_settings(200, None), LINE, found) == (BASE + 60 * DAY,
                                                           "a third of its lifetime left")
    # The span the caller already has is used as given.
    assert due_rule(plain, LINE, found, None, (BASE, BASE + 30 * DAY))[0] == BASE + 20 * DAY
