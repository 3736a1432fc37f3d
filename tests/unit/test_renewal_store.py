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
    cert_names,
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
    cached = scan(store, (line,), ("ec",))  # from the index this time
    assert first[(1, "ec")].cert.cert_id == cached[(1, "ec")].cert.cert_id == cert_id
    names = cert_names(store.layout, (line,), ("ec",))
    book = RenewalBook(store.root)
    book.put(names[(1, "ec")], CertState(cert_id, "classic"))
    assert states_for(book, names, cached) == {(1, "ec"): CertState(cert_id, "classic")}
    assert states_for(book, names, {(1, "ec"): Found(None, "missing")}) == {}
