"""plan: which jobs are due and why (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from lematt import crypto
from lematt.config import Settings
from lematt.model import CertLine, Found
from lematt.plan import due_reason, plan
from lematt.testing.certs import LocalCA

NOW = datetime(2026, 6, 1, tzinfo=UTC)
LINE = CertLine(1, ("a.example.com", "b.example.com"))


def found(age_days: float, lifetime_days: float = 90, names: tuple[str, ...] = LINE.names
          ) -> Found:
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    pem = LocalCA().issue_days(key, names, NOW, age_days, lifetime_days)
    return Found(crypto.read_certificate(pem), None, key_present=True)


def settings(**kw: object) -> Settings:
    return Settings(conf_dir=Path("c"), account_key=Path("a"), **kw)  # type: ignore[arg-type]


def test_current_cert_is_not_due() -> None:
    assert due_reason(settings(), LINE, found(10), NOW) is None


def test_missing_unreadable_and_key_problems_are_due() -> None:
    assert due_reason(settings(), LINE, Found(None, "missing"), NOW) == "missing"
    bad = Found(found(1).cert, "key does not match the certificate")
    assert due_reason(settings(), LINE, bad, NOW) == "key does not match the certificate"


def test_reauthorize_days_window() -> None:
    # 90-day cert aged 80 days: 10 days left.
    assert due_reason(settings(reauthorize_days=15), LINE, found(80), NOW) == "expires in 10 d"
    assert due_reason(settings(reauthorize_days=9.5), LINE, found(80), NOW) is None


def test_expired() -> None:
    assert due_reason(settings(), LINE, found(100), NOW) == "expired 10 d ago"


def test_age_rule_uses_the_certificates_own_lifetime() -> None:
    s = settings(generate_new_certs_after_days=7)
    # A 10-day certificate aged 3 days is not due by age (an assumed 90-day lifetime would
    # say 87 days left < 83 -> not due either; the point is the age itself decides).
    assert due_reason(s, LINE, found(3, lifetime_days=10), NOW) is None
    assert due_reason(s, LINE, found(7.5, lifetime_days=45), NOW).startswith("age 7.5 d")
    # 5-year certificate aged 8 days: due by age although expiry is years away.
    assert due_reason(s, LINE, found(8, lifetime_days=1825), NOW).startswith("age 8.0 d")


def test_names_changed() -> None:
    reason = due_reason(settings(), LINE, found(1, names=("a.example.com", "c.example.com")), NOW)
    assert reason == "names changed (+b.example.com -c.example.com)"


def test_plan_orders_jobs_by_line_then_key_type() -> None:
    lines = (LINE, CertLine(2, ("z.example.com",)))
    state = {(1, "rsa"): Found(None, "missing"), (1, "ec"): found(1),
             (2, "rsa"): Found(None, "missing"), (2, "ec"): Found(None, "missing")}
    jobs = plan(settings(), lines, state, NOW)
    assert [(j.line.lineno, j.key_type) for j in jobs] == [(1, "rsa"), (2, "rsa"), (2, "ec")]
    assert plan(settings(key_types=("ec",)), lines, state, NOW)[0].key_type == "ec"
