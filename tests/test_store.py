"""store: the original's file names, atomic commit with journal, recovery, lock, symlinks."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lematt import crypto
from lematt.config import CertLine, Settings
from lematt.errors import LockError
from lematt.inventory import scan_one
from lematt.store import Store
from tests.certs import LocalCA

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(conf_dir=tmp_path, account_key=tmp_path / "account.key",
                    challenge_drop_dir=tmp_path / "drop", **kw)  # type: ignore[arg-type]


def test_file_names_follow_the_original_layout(tmp_path: Path) -> None:
    line = CertLine(1, ("corp.example.com", "internal.corp.example.com", "hr.corp.example.com"))
    prod = Store(settings(tmp_path), test=False).paths(line, "rsa")
    stem = "corp.example.com_hr.corp.example.com_internal.corp.example.com"
    assert prod.key == tmp_path / "prod/key" / f"{stem}-key.rsa2048.pem"
    assert prod.cert == tmp_path / "prod/cert" / f"{stem}-cert-combined.rsa2048.pem"
    assert prod.csr == tmp_path / "prod/csr" / f"{stem}-csr.rsa2048.csr"
    test = Store(settings(tmp_path, curve_tag="p256"), test=True).paths(line, "ec")
    assert test.cert == tmp_path / "test/cert" / f"{stem}-cert-combined.p256.test.pem"
    links = dict(test.links)
    assert links[tmp_path / "test/key/hr.corp.example.com-key.p256.test.pem"] == test.key.name
    assert len(test.links) == 6


def test_single_name_line_has_no_links(tmp_path: Path) -> None:
    paths = Store(settings(tmp_path), test=False).paths(CertLine(1, ("a.example.com",)), "ec")
    assert paths.links == ()
    assert paths.key.name == "a.example.com-key.prime256v1.pem"


def _material(names: tuple[str, ...]) -> tuple[crypto.PrivateKey, bytes, bytes, bytes]:
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    key_pem = crypto.private_key_pem(key)
    csr = crypto.csr_pem(crypto.make_csr(key, names))
    chain = LocalCA().issue_days(key, names, NOW, 1)
    return key, key_pem, csr, chain


def test_commit_writes_pair_with_modes_and_links(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    line = CertLine(3, ("a.example.com", "b.example.com"))
    _, key_pem, csr, chain = _material(line.names)
    paths = store.commit(line, "ec", key_pem=key_pem, csr_pem=csr, chain_pem=chain)
    assert paths.key.read_bytes() == key_pem
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.cert.stat().st_mode) == 0o644
    assert paths.cert.read_bytes() == chain
    for link, target in paths.links:
        assert link.is_symlink() and os.readlink(link) == target
    assert list(store.journal_dir.iterdir()) == []
    found = scan_one(store, line, "ec")
    assert found.problem is None and found.key_present


def test_commit_without_key_keeps_the_old_key(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    line = CertLine(1, ("a.example.com",))
    key, key_pem, csr, chain = _material(line.names)
    store.commit(line, "ec", key_pem=key_pem, csr_pem=csr, chain_pem=chain)
    chain2 = LocalCA().issue_days(key, line.names, NOW, 0)
    paths = store.commit(line, "ec", key_pem=None, csr_pem=csr, chain_pem=chain2)
    assert paths.key.read_bytes() == key_pem
    assert paths.cert.read_bytes() == chain2


def test_recover_rolls_an_interrupted_commit_forward(tmp_path: Path) -> None:
    """A crash after the journal but before all renames: the next start completes it."""
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    line = CertLine(1, ("a.example.com",))
    _, old_key, csr, old_chain = _material(line.names)
    paths = store.commit(line, "ec", key_pem=old_key, csr_pem=csr, chain_pem=old_chain)
    _, new_key, _new_csr, new_chain = _material(line.names)
    # Stage the new files and journal as commit does, then "crash" after the key's rename.
    tmp_key = paths.key.with_name(".k.lematt-tmp-1")
    tmp_cert = paths.cert.with_name(".c.lematt-tmp-1")
    tmp_key.write_bytes(new_key)
    tmp_cert.write_bytes(new_chain)
    record = {"renames": [[str(tmp_key.relative_to(store.root)), str(paths.key.relative_to(
        store.root))], [str(tmp_cert.relative_to(store.root)), str(paths.cert.relative_to(
            store.root))]], "links": []}
    (store.journal_dir / "x.json").write_text(json.dumps(record))
    os.replace(tmp_key, paths.key)
    assert scan_one(store, line, "ec").problem == "key does not match the certificate"
    assert store.recover() == ["completed an interrupted store of x"]
    assert paths.key.read_bytes() == new_key and paths.cert.read_bytes() == new_chain
    assert scan_one(store, line, "ec").problem is None


def test_recover_drops_temp_files_of_a_commit_that_crashed_before_its_journal(
        tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    orphan = store.staging_dir / "x-key.pem.abcd1234"
    orphan.write_bytes(b"half")
    assert store.recover() == []
    assert not orphan.exists()
    assert list(store.journal_dir.iterdir()) == []


def test_commit_leaves_nothing_in_staging_and_staging_is_private(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    line = CertLine(1, ("a.example.com",))
    _, key_pem, csr, chain = _material(line.names)
    store.commit(line, "ec", key_pem=key_pem, csr_pem=csr, chain_pem=chain)
    assert list(store.staging_dir.iterdir()) == []
    assert stat.S_IMODE(store.staging_dir.stat().st_mode) == 0o700


def test_link_never_replaces_a_real_file(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    single = CertLine(1, ("mail.example.com",))
    _, k1, c1, ch1 = _material(single.names)
    single_paths = store.commit(single, "ec", key_pem=k1, csr_pem=c1, chain_pem=ch1)
    san = CertLine(2, ("example.com", "mail.example.com"))
    _, k2, c2, ch2 = _material(san.names)
    store.commit(san, "ec", key_pem=k2, csr_pem=c2, chain_pem=ch2)
    assert not single_paths.cert.is_symlink()
    assert single_paths.cert.read_bytes() == ch1


def test_second_lock_fails_clearly(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    with store.lock(), pytest.raises(LockError, match=f"pid {os.getpid()}"), store.lock():
        pass


def test_scan_reports_missing_and_unreadable(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    line = CertLine(1, ("a.example.com",))
    assert scan_one(store, line, "rsa").problem == "missing"
    store.paths(line, "rsa").cert.write_bytes(b"not a cert")
    assert scan_one(store, line, "rsa").problem.startswith("unreadable certificate")


def test_inventory_index_is_used_but_never_hides_a_changed_file(tmp_path: Path) -> None:
    from datetime import timedelta

    from lematt.inventory import INDEX_NAME, scan

    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    line = CertLine(1, ("a.example.com",))
    key, key_pem, csr, chain = _material(line.names)
    paths = store.commit(line, "ec", key_pem=key_pem, csr_pem=csr, chain_pem=chain)
    first = scan(store, (line,), ("ec",))[(1, "ec")]
    assert first.problem is None and (store.root / INDEX_NAME).exists()
    assert scan(store, (line,), ("ec",))[(1, "ec")] == first  # served from the index

    # Rewrite the certificate in place with an expired one and put the old mtime back:
    # size may match, mtime matches, but ctime and content changed.
    before = paths.cert.stat()
    expired = LocalCA().issue(key, line.names, NOW - timedelta(days=100),
                              NOW - timedelta(days=10))
    with open(paths.cert, "r+b") as fh:
        fh.write(expired)
        fh.truncate()
    os.utime(paths.cert, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = scan(store, (line,), ("ec",))[(1, "ec")]
    assert again.cert is not None and again.cert.not_after < NOW

    # A key swapped in place for another one: the pair no longer matches.
    other = crypto.private_key_pem(crypto.load_private_key(crypto.generate_private_pem("ec")))
    paths.key.write_bytes(other)
    assert scan(store, (line,), ("ec",))[(1, "ec")].problem == (
        "key does not match the certificate")

    # A damaged index is rebuilt, not trusted.
    (store.root / INDEX_NAME).write_text("garbage\n\x00")
    assert scan(store, (line,), ("ec",))[(1, "ec")].problem == (
        "key does not match the certificate")
