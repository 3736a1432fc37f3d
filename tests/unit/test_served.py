"""``<tree>/.verify/served.json`` (lematt.store.served) and how status and the rows read it: round
trip, damage, bounds, what the config no longer checks, stale checks (no network)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lematt.config import Settings, load
from lematt.errors import StoreError
from lematt.model import CertInfo, CertLine, Found, Served, VerifyResult
from lematt.monitor.rows import certificate_rows
from lematt.monitor.status import _table_lines, flags, served_text
from lematt.store import served as served_mod
from lematt.store.layout import Layout
from lematt.store.served import ServedBook, check_of, served_keep

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TS = NOW.timestamp()
EXPECTED = Served("1a2b", NOW + timedelta(days=60))
OLD = Served("99", NOW + timedelta(days=2))
E1, E2 = "https://web.example.net:443", "smtp://mx.example.net:25"


def result(matched: bool, endpoint: str = E1, error: str | None = None) -> VerifyResult:
    return VerifyResult(endpoint, "a.example.com", "ec", matched, EXPECTED,
                        EXPECTED if matched else (None if error else OLD), error)


def test_round_trip_and_save_once(tmp_path: Path) -> None:
    book = ServedBook.load(tmp_path)
    assert book.entries == {} and book.warning is None
    book.record("a.pem", E1, check_of(result(True), TS))
    book.record("a.pem", E2, check_of(result(False, E2, "cannot connect"), TS))
    keep = {"a.pem": {E1, E2}}
    book.save(keep)
    again = ServedBook.load(tmp_path)
    assert again.warning is None and again.entries == book.entries
    check = again.entries["a.pem"][E2]
    assert not check.matched and check.served is None and check.error == "cannot connect"
    assert again.entries["a.pem"][E1].served == EXPECTED
    # Unchanged: not written again (the file's inode and time stay).
    before = os.stat(tmp_path / ".verify" / "served.json")
    again.save(keep)
    after = os.stat(tmp_path / ".verify" / "served.json")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_what_the_config_no_longer_checks_is_dropped(tmp_path: Path) -> None:
    book = ServedBook(tmp_path / ".verify" / "served.json")
    book.record("a.pem", E1, check_of(result(True), TS))
    book.record("a.pem", E2, check_of(result(True, E2), TS))
    book.record("gone.pem", E1, check_of(result(True), TS))
    book.save({"a.pem": {E1}})
    assert {n: set(e) for n, e in ServedBook.load(tmp_path).entries.items()} == {
        "a.pem": {E1}}
    book.save({})  # no section verifies any more: the file goes
    assert not (tmp_path / ".verify" / "served.json").exists()


def test_damage_is_a_warning_and_an_empty_or_smaller_book(tmp_path: Path) -> None:
    path = tmp_path / ".verify" / "served.json"
    path.parent.mkdir()
    for text in ("{not json", '{"schema": "other"}', "[]",
                 '{"schema": "lematt-served", "version": 9, "certificates": {}}'):
        path.write_text(text)
        book = ServedBook.load(tmp_path)
        assert book.entries == {} and "is not lematt's record" in str(book.warning)
    good = check_of(result(True), TS).to_json()
    path.write_text(json.dumps({"schema": "lematt-served", "version": 1, "certificates": {
        "a.pem": {E1: good, E2: {**good, "at": "soon"}},
        "b.pem": {E1: {**good, "expected": {"serial": "../x", "not_after": "no"}}},
        "../c.pem": {E1: good}}}))
    book = ServedBook.load(tmp_path)
    assert set(book.entries) == {"a.pem"} and set(book.entries["a.pem"]) == {E1}
    assert "3 damaged entries" in str(book.warning)
    # A symlink is not followed; a file over the bound is not read whole.
    path.unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps({"schema": "lematt-served"}))
    path.symlink_to(tmp_path / "elsewhere.json")
    assert "cannot read" in str(ServedBook.load(tmp_path).warning)
    path.unlink()
    path.write_bytes(b" " * (served_mod.MAX_FILE_BYTES + 1))
    assert "larger than" in str(ServedBook.load(tmp_path).warning)


def test_endpoints_per_certificate_are_bounded(tmp_path: Path) -> None:
    book = ServedBook(tmp_path / ".verify" / "served.json")
    for i in range(served_mod.MAX_ENDPOINTS + 5):
        book.record("a.pem", f"tls://h{i}.example.net:993", check_of(result(True), TS + i))
    kept = book.entries["a.pem"]
    assert len(kept) == served_mod.MAX_ENDPOINTS
    assert "tls://h0.example.net:993" not in kept  # the oldest went first
    assert f"tls://h{served_mod.MAX_ENDPOINTS + 4}.example.net:993" in kept


def test_served_keep_follows_the_sections_and_named_entries(tmp_path: Path) -> None:
    (tmp_path / "lematt.conf").write_text(
        "[config]\naccountKey: account.key\nchallengeDropDir: challenges\n")
    (tmp_path / "domains").write_text("www.example.com\nmail.example.com\nplain.example.org\n")
    (tmp_path / "actions.conf").write_text(
        '[default]\nupdate: ["true"]\nverify: ["https://web.example.net", '
        '{"connect": "10.0.0.5:993", "name": "mail.example.com"}]\n'
        '[other]\ndomains: plain.example.org\nupdate: ["true"]\n')
    config = load(tmp_path / "lematt.conf")
    layout = Layout(config.settings, test=True)
    keep = served_keep(config.actions, config.lines, ("ec",), layout)
    www, mail, plain = (layout.pair_names(line, "ec")[1] for line in config.lines)
    assert keep == {www: {"https://web.example.net:443"},
                    mail: {"https://web.example.net:443",
                           "tls://10.0.0.5:993 (mail.example.com)"}}
    assert plain not in keep


def test_rows_flag_a_mismatch_and_ignore_stale_checks() -> None:
    s = Settings(conf_dir=Path("c"), account_key=Path("a"),  # type: ignore[arg-type]
                 key_types=("ec",))
    lines = (CertLine(1, ("a.example.com",)), CertLine(2, ("b.example.com",)),
             CertLine(3, ("c.example.com",)), CertLine(4, ("d.example.com",)))

    def stored(lineno: int, not_after: datetime) -> Found:
        return Found(CertInfo(NOW - timedelta(days=1), not_after,
                              frozenset(lines[lineno - 1].names)), key_present=True)

    got = {(1, "ec"): stored(1, EXPECTED.not_after), (2, "ec"): stored(2, EXPECTED.not_after),
           (3, "ec"): stored(3, EXPECTED.not_after + timedelta(days=1)),
           (4, "ec"): stored(4, EXPECTED.not_after)}
    names = {key: f"{key[0]}.pem" for key in got}
    book = ServedBook(Path("unused"))
    book.record("1.pem", E1, check_of(result(True), TS))
    book.record("2.pem", E1, check_of(result(True), TS))
    book.record("2.pem", E2, check_of(result(False, E2), TS))
    book.record("3.pem", E1, check_of(result(False), TS))  # of the certificate before
    keep = {n: {E1, E2} for n in names.values()}
    rows = certificate_rows(s, lines, got, names, None, None, {}, TS, book, keep)
    assert [served_text(r) for r in rows] == ["matches", f"MISMATCH at {E2}", "-", "-"]
    assert [flags(r, TS, 14) for r in rows] == [("ok",), ("mismatch",), ("ok",), ("ok",)]
    table = _table_lines(rows, [flags(r, TS, 14) for r in rows], TS)
    assert "SERVED" in table[0] and f"mismatch  MISMATCH at {E2}" in table[2]
    # An endpoint the config no longer lists is not shown.
    rows = certificate_rows(s, lines, got, names, None, None, {}, TS, book,
                            {n: {E1} for n in names.values()})
    assert served_text(rows[1]) == "matches"


def test_writing_it_again_leaves_the_tree_mtime_alone(tmp_path: Path) -> None:
    """The quiet-run memo watches the tree's mtime: only the first write (which makes the
    record's directory) may change it, so a `lematt verify` from cron does not end it."""
    book = ServedBook.load(tmp_path)
    book.record("a.pem", E1, check_of(result(True), TS))
    book.save({"a.pem": {E1}})
    before = os.stat(tmp_path).st_mtime_ns
    again = ServedBook.load(tmp_path)
    again.record("a.pem", E1, check_of(result(False), TS + 60))
    again.save({"a.pem": {E1}})
    assert not ServedBook.load(tmp_path).entries["a.pem"][E1].matched
    assert os.stat(tmp_path).st_mtime_ns == before
    # A symlinked directory is not lematt's: not read, not written through.
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / ".verify").symlink_to(other)
    book = ServedBook.load(tmp_path / "linked")
    assert "symlink" in str(book.warning)
    book.record("a.pem", E1, check_of(result(True), TS))
    try:
        book.save({"a.pem": {E1}})
    except StoreError as exc:
        assert "not a directory of lematt's" in str(exc)
    else:
        raise AssertionError("wrote through a symlinked directory")
    assert list(other.iterdir()) == []


def test_a_write_cut_short_leaves_no_temporary_file_behind_the_next(tmp_path: Path) -> None:
    book = ServedBook.load(tmp_path)
    book.record("a.pem", E1, check_of(result(True), TS))
    book.save({"a.pem": {E1}})
    directory = tmp_path / ".verify"
    # What a SIGKILL between the temp file's write and its rename leaves.
    (directory / ".served.json.lematt-tmp-0badcafe").write_text("{half")
    (directory / "notes.txt").write_text("not ours to remove")
    again = ServedBook.load(tmp_path)
    assert again.warning is None and set(again.entries) == {"a.pem"}
    again.record("a.pem", E1, check_of(result(False), TS + 1))
    again.save({"a.pem": {E1}})
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt", "served.json"]
