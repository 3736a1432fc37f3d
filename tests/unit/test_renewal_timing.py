"""Renewal timing (lematt.plan): the CA's window (ARI), the fallback rule, the explicit
upstream settings, and which wins (README "Renewal timing")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from lematt import crypto
from lematt.config import Settings
from lematt.model import CertLine, CertState, Found, RenewalWindow
from lematt.plan import due_reason, plan, timing_warnings
from lematt.testing.certs import LocalCA

NOW = datetime(2026, 6, 1, tzinfo=UTC)
T = NOW.timestamp()
DAY = 86400.0
LINE = CertLine(1, ("a.example.com",))
_CA = LocalCA()
_KEY = crypto.load_private_key(crypto.generate_private_pem("ec"))


def found(age_days: float, lifetime_days: float = 90) -> Found:
    pem = _CA.issue_days(_KEY, LINE.names, NOW, age_days, lifetime_days)
    return Found(crypto.read_certificate(pem), None, key_present=True)


def settings(**kw: object) -> Settings:
    return Settings(conf_dir=Path("c"), account_key=Path("a"), **kw)  # type: ignore[arg-type]


def window(start_days: float, end_days: float, chosen_days: float,
           url: str | None = None) -> RenewalWindow:
    """A window in days from NOW (negative: in the past)."""
    return RenewalWindow(T + start_days * DAY, T + end_days * DAY, T + chosen_days * DAY, url)


def state(f: Found, **kw: object) -> CertState:
    assert f.cert is not None and f.cert.cert_id
    return CertState(f.cert.cert_id, **kw)  # type: ignore[arg-type]


def test_fallback_is_a_third_of_the_lifetime_left_whatever_the_lifetime() -> None:
    s = settings()
    # 90 days: due with 30 days left, not with 31.
    assert due_reason(s, LINE, found(59), NOW) is None
    assert due_reason(s, LINE, found(60), NOW) == "a third of its lifetime left (30 d of 90 d)"
    # 45 days (Let's Encrypt's coming default): due with 15 days left.
    assert due_reason(s, LINE, found(29.9, 45), NOW) is None
    assert due_reason(s, LINE, found(30, 45), NOW).startswith("a third of its lifetime left")
    # 5 years (Pebble's default): not renewed every run as a fixed 15 days would not be either,
    # but also not after 4.9 years: with a third left.
    assert due_reason(s, LINE, found(1200, 1826), NOW) is None
    assert due_reason(s, LINE, found(1218, 1826), NOW) is not None


def test_fallback_for_short_lifetimes_is_half() -> None:
    s = settings()
    # A 6-day certificate (Let's Encrypt's shortlived profile): due with 3 days left, so a
    # failed run or two still leave time; a fixed 15 days would renew it at every run.
    assert due_reason(s, LINE, found(2.9, 6), NOW) is None
    assert due_reason(s, LINE, found(3, 6), NOW) == "half of its lifetime left (3.0 d of 6.0 d)"
    assert due_reason(s, LINE, found(0.1, 6), NOW) is None


def test_a_renewal_window_decides_at_the_moment_picked_in_it() -> None:
    s = settings()
    f = found(10)  # 80 days left: the fallback would not renew
    inside_not_yet = state(f, window=window(-1, 5, 2))
    assert due_reason(s, LINE, f, NOW, inside_not_yet) is None
    passed = state(f, window=window(-1, 5, -0.5))
    assert due_reason(s, LINE, f, NOW, passed).startswith(
        "inside the CA's renewal window (until 2026-06-06")
    # A window later than the fallback's moment is followed too: the CA decides.
    late = found(70)  # 20 days left, the fallback says due
    assert due_reason(s, LINE, late, NOW, state(late, window=window(5, 15, 8))) is None


def test_a_window_that_has_ended_means_renew_now_whatever_is_set() -> None:
    f = found(10)
    ended = state(f, window=window(-3, -1, -2, "https://ca.example/incident"))
    for s in (settings(), settings(reauthorize_days=5), settings(generate_new_certs_after_days=60)):
        reason = due_reason(s, LINE, f, NOW, ended)
        assert reason is not None and reason.startswith("past the CA's renewal window")
        assert reason.endswith("the CA explains: https://ca.example/incident")


def test_explicit_upstream_settings_win_over_an_open_window() -> None:
    f = found(10)
    open_window = state(f, window=window(-1, 5, -0.5))
    assert due_reason(settings(reauthorize_days=15), LINE, f, NOW, open_window) is None
    assert due_reason(settings(generate_new_certs_after_days=30), LINE, f, NOW,
                      open_window) is None
    assert due_reason(settings(reauthorize_days=85), LINE, f, NOW, None) == "expires in 80 d"


def test_an_age_the_certificate_never_reaches_falls_back_instead_of_expiring() -> None:
    s = settings(generate_new_certs_after_days=60)
    # 45-day certificates never get 60 days old: renewed when a third is left, not at expiry.
    assert due_reason(s, LINE, found(20, 45), NOW) is None
    assert due_reason(s, LINE, found(31, 45), NOW).startswith("a third of its lifetime left")


def test_revoked_and_changed_profile_are_due_and_unknown_profile_is_not() -> None:
    f = found(1)
    s = settings()
    assert due_reason(s, LINE, f, NOW, state(f, revoked="keyCompromise")) == (
        "revoked (keyCompromise)")
    shortlived = CertLine(1, LINE.names, profile="shortlived")
    assert due_reason(s, shortlived, f, NOW, state(f, profile="")) == (
        "profile changed (the CA default -> shortlived)")
    assert due_reason(s, LINE, f, NOW, state(f, profile="shortlived")) == (
        "profile changed (shortlived -> the CA default)")
    assert due_reason(s, shortlived, f, NOW, state(f, profile="shortlived")) is None
    # Issued before lematt recorded profiles: not renewed just for that.
    assert due_reason(s, shortlived, f, NOW, state(f, profile=None)) is None


def test_a_window_reaching_past_expiry_is_not_trusted() -> None:
    f = found(80)  # 10 days left
    beyond = state(f, window=window(5, 20, 12))
    # The moment picked lies after notAfter: the fallback (a third left) decides instead.
    assert due_reason(settings(), LINE, f, NOW, beyond).startswith("a third of its lifetime")


def test_plan_passes_replaces_and_forces_a_new_key_for_revoked_pairs() -> None:
    f = found(70)
    lines = (LINE, CertLine(2, ("b.example.com",)))
    pem_b = _CA.issue_days(_KEY, ("b.example.com",), NOW, 1)
    fb = Found(crypto.read_certificate(pem_b), None, key_present=True)
    states = {(2, "ec"): state(fb, revoked="superseded")}
    s = settings(key_types=("ec",))
    jobs = plan(s, lines, {(1, "ec"): f, (2, "ec"): fb}, NOW, states)
    assert [(j.line.lineno, j.replaces, j.new_key) for j in jobs] == [
        (1, f.cert.cert_id, False), (2, fb.cert.cert_id, True)]
    missing = plan(s, (LINE,), {(1, "ec"): Found(None, "missing")}, NOW)
    assert missing[0].replaces is None


def test_timing_warnings_name_the_setting_and_the_first_certificate() -> None:
    s = Settings(conf_dir=Path("c"), account_key=Path("a"), reauthorize_days=36500,
                 key_types=("ec",), source=Path("conf/lematt.conf"),
                 key_lines=(("reauthorizeDays", 7),))
    lines = (LINE, CertLine(2, ("b.example.com",)))
    state_ = {(1, "ec"): found(1), (2, "ec"): Found(None, "missing")}
    (warning,) = timing_warnings(s, lines, state_)
    assert warning.startswith("conf/lematt.conf:7: reauthorizeDays 36500 is at least the "
                              "lifetime of 1 certificate(s) (first a.example.com (EC), 90 d)")
    assert "renewed at every run" in warning
    assert timing_warnings(settings(reauthorize_days=30, key_types=("ec",)), lines,
                           state_) == []
    assert timing_warnings(settings(key_types=("ec",)), lines, state_) == []
    short = settings(generate_new_certs_after_days=60)
    assert "never that old" in timing_warnings(short, (LINE,), {(1, "rsa"): found(1, 45),
                                                               (1, "ec"): found(1, 45)})[0]


def test_expiry_and_names_come_before_any_window() -> None:
    f = found(91)
    assert due_reason(settings(), LINE, f, NOW, None) == "expired 1.0 d ago"
    assert timedelta(days=1) > timedelta(0)
