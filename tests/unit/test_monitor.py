"""lematt.monitor: the per-certificate rows (next renewal agrees with planning), status
flags and exit status, the metricsFile setting (no network, no processes)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lematt.config import Settings, load
from lematt.errors import ConfigError
from lematt.model import CertInfo, CertLine, CertState, Found, RenewalWindow
from lematt.monitor.rows import certificate_rows, next_renewal
from lematt.monitor.status import flags
from lematt.plan import due_reason
from lematt.store.backoff import Backoff

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TS = NOW.timestamp()
LINE = CertLine(1, ("a.example.com", "www.a.example.com"))


def settings(**kw: object) -> Settings:
    return Settings(conf_dir=Path("c"), account_key=Path("a"), **kw)  # type: ignore[arg-type]


def found(age_days: float, lifetime_days: float = 90) -> Found:
    start = NOW - timedelta(days=age_days)
    return Found(CertInfo(start, start + timedelta(days=lifetime_days), frozenset(LINE.names),
                          cert_id="x.AQ"), key_present=True)


@pytest.mark.parametrize("kw", [{}, {"reauthorize_days": 20},
                                {"generate_new_certs_after_days": 45},
                                {"generate_new_certs_after_days": 200}])
@pytest.mark.parametrize("window", [None, RenewalWindow(TS + 5 * 86400, TS + 9 * 86400,
                                                        TS + 7 * 86400)])
def test_next_renewal_is_when_planning_makes_it_due(kw: dict[str, object],
                                                    window: RenewalWindow | None) -> None:
    """For ages across a lifetime: due exactly when plan.due_reason says so, and the moment
    given while not due is the first moment at which due_reason says so."""
    s = settings(**kw)
    state = CertState("x.AQ", "", window) if window else None
    for age in range(0, 95, 3):
        f = found(age)
        due, at, why = next_renewal(s, LINE, f, NOW, state, TS)
        reason = due_reason(s, LINE, f, NOW, state, TS)
        assert due == (reason is not None), (age, why)
        if due:
            assert at == TS and why == reason
            continue
        assert at > TS
        before = datetime.fromtimestamp(at - 60, UTC)
        after = datetime.fromtimestamp(at + 60, UTC)
        assert due_reason(s, LINE, f, before, state, before.timestamp()) is None, (age, why)
        assert due_reason(s, LINE, f, after, state, after.timestamp()) is not None, (age, why)


def test_rows_flags_and_what_needs_attention() -> None:
    s = settings(key_types=("ec",))
    lines = (LINE, CertLine(2, ("b.example.com",)), CertLine(3, ("c.example.com",)),
             CertLine(4, ("d.example.com",)))
    fresh = found(1)
    old = Found(CertInfo(NOW - timedelta(days=85), NOW + timedelta(days=5),
                         frozenset({"c.example.com"})), key_present=True)
    got = {(1, "ec"): fresh, (2, "ec"): Found(None, "missing"), (3, "ec"): old,
           (4, "ec"): Found(CertInfo(NOW - timedelta(days=1), NOW + timedelta(days=89),
                                     frozenset({"d.example.com"})), key_present=True)}
    names = {key: f"{key[0]}.pem" for key in got}
    backoff = {"2.pem": Backoff(2, TS - 10, TS + 110, "validation", "no answer")}

    class Book:
        entries = backoff

    rows = certificate_rows(s, lines, got, names, None, Book(),  # type: ignore[arg-type]
                            {("d.example.com",): ("web1",)}, TS)
    assert [flags(r, TS, 14) for r in rows] == [
        ("ok",), ("missing", "failed"), ("expiring", "due"), ("owed",)]
    assert rows[1].due and rows[1].renew_at == TS and rows[1].backoff is backoff["2.pem"]
    assert rows[2].why.startswith("a third of its lifetime left")
    assert rows[0].why == "a third of its lifetime left"
    assert fresh.cert is not None
    assert rows[0].renew_at == pytest.approx(fresh.cert.not_after.timestamp() - 30 * 86400)


def test_metrics_file_is_checked_when_the_config_is_loaded(tmp_path: Path) -> None:
    base = "[config]\naccountKey: account.key\nchallengeDropDir: challenges\n"
    (tmp_path / "domains").write_text("example.com\n")
    conf = tmp_path / "lematt.conf"
    conf.write_text(base + "metricsFile: missing/lematt.prom\n")
    with pytest.raises(ConfigError, match=r"lematt.conf:4: metricsFile: directory .* does not"):
        load(conf)
    conf.write_text(base + "metricsFile: .\n")
    with pytest.raises(ConfigError, match="is a directory"):
        load(conf)
    conf.write_text(base + "metricsFile: lematt.txt\n")
    config = load(conf)
    assert config.settings.metrics_file == tmp_path / "lematt.txt"
    assert any("does not end in .prom" in w for w in config.warnings)
    conf.write_text("accountKey: account.key\nchallengeDropDir: c\nmetricsFile: m.prom\n")
    assert load(conf).settings.metrics_file == tmp_path / "m.prom"


def test_status_of_a_tree_that_does_not_exist_is_one_line_and_1(tmp_path: Path) -> None:
    from lematt.monitor.status import status
    from lematt.store.tree import Store

    (tmp_path / "domains").write_text("example.com\n")
    conf = tmp_path / "lematt.conf"
    conf.write_text("[config]\naccountKey: a.key\nchallengeDropDir: c\n")
    config = load(conf)
    out = io.StringIO()
    assert status(config, Store(config.settings, test=True), TS, 14, False, out, "test") == 1
    assert out.getvalue().count("\n") == 1 and "every certificate is missing" in out.getvalue()
    assert not (tmp_path / "test").exists()


def test_json_is_written_as_json_dumps_would_write_the_document(tmp_path: Path) -> None:
    """status --json writes its document row by row without building it: the text is
    exactly json.dumps of the document, for every kind of row (missing, failed, owed, a
    window with and without its URL, a profile, names beyond ASCII, odd seconds, verify
    checks that match and that do not)."""
    import json

    from lematt.monitor.status import _document, _json_text
    from lematt.store.tree import Store

    (tmp_path / "domains").write_text("example.com\n")
    conf = tmp_path / "lematt.conf"
    conf.write_text("[config]\naccountKey: a.key\nchallengeDropDir: c\n")
    store = Store(load(conf).settings, test=True)
    s = settings()
    lines = (LINE, CertLine(2, ("b.example.com",), profile="shortlived"),
             CertLine(3, ("xn--bcher-kva.example",)), CertLine(4, ("d.example.com",)),
             CertLine(5, ("e.example.com",)))
    odd = NOW + timedelta(seconds=37.75)
    gone = NOW - timedelta(seconds=3)  # -0.0 days left, as json.dumps writes it
    got = {
        (1, "rsa"): found(1), (1, "ec"): found(70),
        (2, "rsa"): Found(None, "missing"), (2, "ec"): Found(None, "unreadable: \"bad\"\tx"),
        (3, "rsa"): Found(CertInfo(odd - timedelta(days=3), odd + timedelta(days=3),
                                   frozenset({"xn--bcher-kva.example"})), "key is missing"),
        (3, "ec"): Found(CertInfo(NOW - timedelta(days=100), gone,
                                  frozenset({"xn--bcher-kva.example"})), key_present=True),
        (4, "rsa"): Found(CertInfo(NOW, NOW + timedelta(days=90), frozenset({"d.example.com"}),
                                   cert_id="d.rsa"), key_present=True),
        (4, "ec"): Found(CertInfo(NOW, NOW + timedelta(days=90), frozenset({"d.example.com"}),
                                  cert_id="d.ec"), key_present=True),
        # 0.0 days left next to -0.0 (the memo of days left must keep them apart)
        (5, "rsa"): Found(CertInfo(NOW, NOW + timedelta(seconds=3), frozenset({"e.example.com"})),
                          key_present=True),
        (5, "ec"): Found(CertInfo(NOW, NOW + timedelta(seconds=1), frozenset({"e.example.com"})),
                         key_present=True),
    }
    names = {key: f"{key[0]}-{key[1]}ü.pem" for key in got}

    failed = {"2-rsaü.pem": Backoff(3, TS - 10.5, TS + 110, "validation", "ä \"no\"")}

    class Book:
        entries = failed

    class Kept:
        def all_states(self) -> dict[str, CertState]:
            return {"4-rsaü.pem": CertState("d.rsa", "", RenewalWindow(
                        TS + 5.25 * 86400, TS + 9 * 86400, TS + 7 * 86400 + 0.5,
                        "https://ca.example/é")),
                    "4-ecü.pem": CertState("d.ec", "", RenewalWindow(
                        TS + 5 * 86400, TS + 9 * 86400, TS + 7 * 86400))}

    rows = certificate_rows(s, lines, got, names, Kept(), Book(),  # type: ignore[arg-type]
                            {("b.example.com",): ("web1", "wëb2")}, TS)
    from lematt.model import Served
    from lematt.store.served import ServedCheck

    stored = Served("0a1b", NOW + timedelta(days=90))
    rows[6] = rows[6]._replace(served=(
        ("https://web1:443", ServedCheck(TS - 60.5, "d.example.com", True, stored, stored, None)),
        ("smtp://mx:25", ServedCheck(TS - 30, "d.example.com", False, stored,
                                     Served("ff", NOW), "served an older one: ä"))))
    rows[7] = rows[7]._replace(served=(("https://web1:443", ServedCheck(
        TS, "d.example.com", False, stored, None, "connection refused")),))
    all_flags = [flags(r, TS, 14) for r in rows]
    assert rows[6].window is not None and rows[6].window.explanation_url
    for warn_days, code, warnings in ((14.0, 1, ["owed deploys unknown: \"x\""]), (3.5, 0, [])):
        args = (rows, all_flags, warnings, TS + 0.999, warn_days, "test", store, True, code)
        assert _json_text(*args) == json.dumps(_document(*args))
