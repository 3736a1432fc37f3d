"""store.renewal: the renewal state kept beside the tree (round trip, identity by certID,
bounded, damaged or hostile content ignored, atomic write) and the certID in the index."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lematt import crypto
from lematt.config import Settings
from lematt.errors import StoreError
from lematt.model import CertLine, CertState, Found, RenewalWindow
from lematt.store.inventory import scan
from lematt.store.renewal import (
    MAX_STATE_BYTES,
    STATE_NAME,
    CaFacts,
    RenewalBook,
    complete,
    index_identity,
    states_for,
)
from lematt.store.tree import Store
from lematt.testing.certs import LocalCA

NOW = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = RenewalWindow(1.5e9, 1.6e9, 1.55e9, "https://ca.example/why")


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    book = RenewalBook(tmp_path)
    full = CertState("aaa.AQ", "shortlived", WINDOW, 1.7e9, "keyCompromise")
    bare = CertState("bbb.Ag", None)
    none = CertState("ccc.Aw", "")
    book.put("a.pem", full)
    book.put("b.pem", bare)
    book.put("c.pem", none)
    facts = CaFacts("https://ca/dir", 1.7e9, True, ("classic", "shortlived"), True, "https://tos")
    book.set_ca(facts)
    book.save()
    assert stat.S_IMODE((tmp_path / STATE_NAME).stat().st_mode) == 0o644
    again = RenewalBook(tmp_path)
    assert again.state("a.pem", "aaa.AQ") == full
    assert again.state("b.pem", "bbb.Ag") == bare
    assert again.state("c.pem", "ccc.Aw") == none
    assert again.ca("https://ca/dir") == facts
    # Another certificate under the same file name is not judged by this state.
    assert again.state("a.pem", "other.AQ") is None
    assert again.state("a.pem", "") is None


def test_save_drops_what_is_no_longer_configured_and_skips_unchanged(tmp_path: Path) -> None:
    book = RenewalBook(tmp_path)
    for n in range(3):
        book.put(f"{n}.pem", CertState(f"id{n}", ""))
    book.set_ca(CaFacts("https://old/dir", 1.0))
    book.set_ca(CaFacts("https://new/dir", 1.0))
    book.save()
    again = RenewalBook(tmp_path)
    again.save(["1.pem"], ["https://new/dir"])
    third = RenewalBook(tmp_path)
    assert len(third) == 1 and third.state("1.pem", "id1") is not None
    assert third.ca("https://old/dir") is None and third.ca("https://new/dir") is not None
    before = (tmp_path / STATE_NAME).stat().st_ino
    third.save(["1.pem"], ["https://new/dir"])  # nothing changed: not rewritten
    assert (tmp_path / STATE_NAME).stat().st_ino == before


@pytest.mark.parametrize("content", [
    b"", b"not ours\n", b"lematt-renewal 999\nx\n", b"\xff\xfe binary",
])
def test_foreign_or_damaged_files_read_as_empty(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_NAME).write_bytes(content)
    book = RenewalBook(tmp_path)
    assert len(book) == 0 and book.state("a.pem", "x") is None


def test_damaged_rows_are_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    good = "\t".join(["good.pem", "id", "", "", "1.0", "", "", "", ""])
    bad_number = "\t".join(["bad.pem", "id", "", "", "nan", "", "", "", ""])
    rows = ["lematt-renewal 1", "short\trow", good, bad_number, "@ca\t{not json",
            '@ca\t{"directory": 5}']
    (tmp_path / STATE_NAME).write_text("\n".join(rows) + "\n")
    book = RenewalBook(tmp_path)
    assert book.state("good.pem", "id") == CertState("id", "", None, 1.0, None)
    assert book.state("bad.pem", "id") is None
    assert book.ca("https://x") is None


def test_all_states_reads_what_state_reads_row_by_row(tmp_path: Path) -> None:
    """The one-pass decoder (lematt status) answers as ``state`` does for every row, skips
    damaged rows, lets the last row of a name count, and sees rows changed by ``put``."""
    good = "\t".join(["good.pem", "id", "", "", "1.0", "", "", "", ""])
    windowed = "\t".join(["w.pem", "wid", "?", "superseded", "", "1.5", "2.5", "2.0",
                          "https://ca.example/why"])
    bad_number = "\t".join(["bad.pem", "id", "", "", "nan", "", "", "", ""])
    later_bad = "\t".join(["good2.pem", "id", "", "", "inf", "", "", "", ""])
    rows = ["lematt-renewal 1", "short\trow", good, windowed, bad_number,
            "\t".join(["good2.pem", "id", "", "", "2.0", "", "", "", ""]), later_bad,
            "\t".join(["half.pem", "id", "", "", "", "1.0", "", "", ""]), "@ca\t{not json"]
    (tmp_path / STATE_NAME).write_bytes(("\n".join(rows) + "\n").encode()
                                        + b"odd\xff.pem\tid\t\t\t\t\t\t\t\n")
    states = RenewalBook(tmp_path).all_states()
    book = RenewalBook(tmp_path)
    assert states == {"good.pem": book.state("good.pem", "id"),
                      "w.pem": book.state("w.pem", "wid"),
                      "half.pem": book.state("half.pem", "id")}
    assert states["w.pem"] == CertState("wid", None, RenewalWindow(1.5, 2.5, 2.0,
                                                                   "https://ca.example/why"),
                                        0.0, "superseded")
    assert book.state("good2.pem", "id") is None and book.state("bad.pem", "id") is None
    book.put("new.pem", CertState("nid", "", WINDOW, 3.0))
    assert book.all_states() == {**states, "new.pem": CertState("nid", "", WINDOW, 3.0)}


def test_a_file_over_the_bound_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    with open(path, "wb") as fh:
        fh.write(b"lematt-renewal 1\n")
        fh.truncate(MAX_STATE_BYTES + 1)
    assert len(RenewalBook(tmp_path)) == 0


def test_values_that_would_break_a_row_are_refused(tmp_path: Path) -> None:
    book = RenewalBook(tmp_path)
    with pytest.raises(ValueError):
        book.put("a.pem", CertState("id", "bad\tprofile"))
    with pytest.raises(ValueError):
        book.put("a.pem", CertState("id", "", RenewalWindow(1, 2, 1.5, "https://x\nInjected")))
    with pytest.raises(ValueError):
        book.set_ca(CaFacts("https://ca/dir", 1.0, profiles=("a\nb",)))


def test_a_file_that_cannot_be_replaced_is_a_store_error_and_leaves_no_temp(
        tmp_path: Path) -> None:
    book = RenewalBook(tmp_path)
    book.put("a.pem", CertState("id", ""))
    (tmp_path / STATE_NAME).mkdir()  # (a mode would not stop root, who runs the suite)
    with pytest.raises(StoreError, match="cannot write"):
        book.save()
    assert sorted(os.listdir(tmp_path)) == [STATE_NAME]


def test_the_index_keeps_the_cert_id_and_states_follow_it(tmp_path: Path) -> None:
    settings = Settings(conf_dir=tmp_path, account_key=tmp_path / "a.key",
                        challenge_drop_dir=tmp_path, key_types=("ec",))
    store = Store(settings, test=False)
    store.ensure_dirs()
    line = CertLine(1, ("a.example.com",))
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    chain = LocalCA().issue_days(key, line.names, NOW, 1)
    store.commit(line, "ec", key_pem=crypto.private_key_pem(key),
                 csr_pem=crypto.csr_pem(crypto.make_csr(key, line.names)), chain_pem=chain)
    cert_id = crypto.read_certificate(chain).cert_id
    assert cert_id and "." in cert_id
    first = scan(store, (line,), ("ec",))
    names: dict = {}
    cached = scan(store, (line,), ("ec",), names)  # from the index this time
    assert first[(1, "ec")].cert.cert_id == cached[(1, "ec")].cert.cert_id == cert_id
    assert names == {(1, "ec"): "a.example.com-cert-combined.prime256v1.pem"}
    book = RenewalBook(store.root)
    book.put(names[(1, "ec")], CertState(cert_id, "classic"))
    now, index = NOW.timestamp(), index_identity(store.root)
    assert states_for(book, names, cached, now, {"classic"}, index) == (
        {(1, "ec"): CertState(cert_id, "classic")}, None)
    assert states_for(book, names, {(1, "ec"): Found(None, "missing")}, now, {""},
                      index) == ({}, None)


def test_the_shortcut_decides_as_the_rows_would(tmp_path: Path) -> None:
    """While nothing kept is due, one shared state stands for the rows; planning must come
    to the same decisions as with each row's own state, at any moment before the earliest
    one the summary names, and the shortcut must switch itself off for anything else."""
    from datetime import timedelta

    from lematt.plan import plan

    settings = Settings(conf_dir=tmp_path, account_key=tmp_path / "a.key",
                        challenge_drop_dir=tmp_path, key_types=("ec",))
    ca, key = LocalCA(), crypto.load_private_key(crypto.generate_private_pem("ec"))
    lines = tuple(CertLine(n, (f"q{n}.example.com",)) for n in range(1, 7))
    found = {}
    for line in lines:
        # Ages 10..85 days of 90: the fallback would renew the older ones.
        pem = ca.issue_days(key, line.names, NOW, 10 + 15 * (line.lineno - 1))
        found[(line.lineno, "ec")] = Found(crypto.read_certificate(pem), None, True)
    names = {(line.lineno, "ec"): f"q{line.lineno}.pem" for line in lines}
    book = RenewalBook(tmp_path)
    t, day = NOW.timestamp(), 86400.0
    for n, (key_, name) in enumerate(names.items()):
        if n == 5:
            continue  # one certificate without a row: the fallback decides for it
        window = RenewalWindow(t + (2 + n) * day, t + (3 + n) * day, t + (2.5 + n) * day)
        book.put(name, CertState(found[key_].cert.cert_id, "", window, t + 0.5 * day))
    assert not complete(book, names, found, t)
    book.save(index="inventory-1", complete=False)

    def decisions(states: dict, default: CertState | None, now: object) -> list:
        return [(j.line.lineno, j.reason)
                for j in plan(settings, lines, found, now, states, default)]

    for hours in (0, 1, 11):
        now = NOW + timedelta(hours=hours)
        loaded = RenewalBook(tmp_path)
        fast, default = states_for(loaded, names, found, now.timestamp(), {""}, "inventory-1")
        assert default is None and set(fast) == set(names) - {(6, "ec")}
        slow = {k: st for k, n in names.items()
                if (st := RenewalBook(tmp_path).state(n, found[k].cert.cert_id))}
        decided = decisions(fast, None, now)
        assert decided == decisions(slow, None, now)
        assert [n for n, _ in decided] == [6] and "a third of its lifetime" in decided[0][1]

    # A row for every certificate, matched against this index: not a row is read.
    book.put(names[(6, "ec")], CertState(found[(6, "ec")].cert.cert_id, "",
                                         RenewalWindow(t + 9 * day, t + 10 * day, t + 9 * day),
                                         t + day))
    assert complete(book, names, found, t)
    book.save(index="inventory-1", complete=True)
    loaded = RenewalBook(tmp_path)
    states, default = states_for(loaded, names, found, t, {""}, "inventory-1")
    assert states == {} and default is not None and loaded._rows is None
    assert decisions(states, default, NOW) == []
    # Another index, past the earliest moment, other profiles, a revocation: no shortcut.
    assert states_for(RenewalBook(tmp_path), names, found, t, {""}, "inventory-2")[1] is None
    assert states_for(RenewalBook(tmp_path), names, found, t + day, {""}, "inventory-1")[
        0][(1, "ec")].cert_id
    assert RenewalBook(tmp_path).shortcut(t, {"classic"}, "inventory-1") is None
    assert RenewalBook(tmp_path).shortcut(t, {"", "x"}, "inventory-1") is None
    loaded.put("q1.pem", loaded.state("q1.pem", found[(1, "ec")].cert.cert_id)._replace(
        revoked="superseded"))
    loaded.save(index="inventory-1", complete=True)
    assert RenewalBook(tmp_path).shortcut(t, {""}, "inventory-1") is None


def test_rows_without_windows_are_as_good_as_none(tmp_path: Path) -> None:
    """Against a CA without ARI the rows hold profiles only: while they agree with the
    lines, nothing needs reading, whatever the index."""
    book = RenewalBook(tmp_path)
    book.put("a.pem", CertState("id-a", ""))
    book.put("b.pem", CertState("id-b", None))
    book.save()
    shortcut = RenewalBook(tmp_path).shortcut(NOW.timestamp(), {""}, "")
    assert shortcut is not None and shortcut.everyone and shortcut.state is None
    assert RenewalBook(tmp_path).shortcut(NOW.timestamp(), {"shortlived"}, "") is None
