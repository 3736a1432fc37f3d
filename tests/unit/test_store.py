"""store: the original's file names, atomic commit with journal, recovery, lock, symlinks."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lematt import crypto
from lematt.config import Settings
from lematt.errors import ConfigError, LockError, StoreError
from lematt.model import CertLine
from lematt.store.inventory import scan_one
from lematt.store.journal import Journal
from lematt.store.layout import CertPaths, Layout, main_target
from lematt.store.tree import NewPair, Store
from lematt.testing.certs import LocalCA

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(conf_dir=tmp_path, account_key=tmp_path / "account.key",
                    challenge_drop_dir=tmp_path / "drop", **kw)  # type: ignore[arg-type]


def test_file_names_follow_the_original_layout(tmp_path: Path) -> None:
    line = CertLine(1, ("corp.example.com", "internal.corp.example.com", "hr.corp.example.com"))
    prod = Layout(settings(tmp_path), test=False).paths(line, "rsa")
    stem = "corp.example.com_hr.corp.example.com_internal.corp.example.com"
    assert prod.key == tmp_path / "prod/key" / f"{stem}-key.rsa2048.pem"
    assert prod.cert == tmp_path / "prod/cert" / f"{stem}-cert-combined.rsa2048.pem"
    assert prod.csr == tmp_path / "prod/csr" / f"{stem}-csr.rsa2048.csr"
    test = Layout(settings(tmp_path, curve_tag="p256"), test=True).paths(line, "ec")
    assert test.cert == tmp_path / "test/cert" / f"{stem}-cert-combined.p256.test.pem"
    links = dict(test.links)
    assert links[tmp_path / "test/key/hr.corp.example.com-key.p256.test.pem"] == test.key.name
    assert len(test.links) == 6


def test_single_name_line_has_no_links(tmp_path: Path) -> None:
    paths = Layout(settings(tmp_path), test=False).paths(CertLine(1, ("a.example.com",)), "ec")
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
    assert store.journal.read() is None and store.journal.path.stat().st_size == 0
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
    assert store.journal.read() is None


def test_commit_leaves_nothing_in_staging_and_staging_is_private(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    line = CertLine(1, ("a.example.com",))
    _, key_pem, csr, chain = _material(line.names)
    store.commit(line, "ec", key_pem=key_pem, csr_pem=csr, chain_pem=chain)
    assert list(store.staging_dir.iterdir()) == []
    assert stat.S_IMODE(store.staging_dir.stat().st_mode) == 0o700


def test_link_never_replaces_another_lines_upstream_name(tmp_path: Path) -> None:
    """A name that is also a single-name line: the SAN line's per-name link never takes the
    single line's upstream name - neither its link into .pairs nor an old regular file."""
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    single = CertLine(1, ("mail.example.com",))
    _, k1, c1, ch1 = _material(single.names)
    single_paths = store.commit(single, "ec", key_pem=k1, csr_pem=c1, chain_pem=ch1)
    legacy = CertLine(3, ("old.example.com",))
    _, k3, _c3, ch3 = _material(legacy.names)
    legacy_paths = store.layout.paths(legacy, "ec")
    legacy_paths.key.write_bytes(k3)
    legacy_paths.cert.write_bytes(ch3)
    san = CertLine(2, ("example.com", "mail.example.com", "old.example.com"))
    _, k2, c2, ch2 = _material(san.names)
    store.commit(san, "ec", key_pem=k2, csr_pem=c2, chain_pem=ch2)
    assert os.readlink(single_paths.cert) == main_target(single_paths.slot,
                                                         single_paths.cert.name)
    assert single_paths.cert.read_bytes() == ch1 and single_paths.key.read_bytes() == k1
    assert not legacy_paths.cert.is_symlink() and legacy_paths.cert.read_bytes() == ch3


def test_second_lock_fails_clearly(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    with store.lock(), pytest.raises(LockError, match=f"pid {os.getpid()}"), store.lock():
        pass


def test_scan_reports_missing_and_unreadable(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    line = CertLine(1, ("a.example.com",))
    assert scan_one(store, line, "rsa").problem == "missing"
    store.layout.paths(line, "rsa").cert.write_bytes(b"not a cert")
    assert scan_one(store, line, "rsa").problem.startswith("unreadable certificate")


def test_inventory_index_is_used_but_never_hides_a_changed_file(tmp_path: Path) -> None:
    from datetime import timedelta

    from lematt.store.inventory import INDEX_NAME, scan

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


def _pairs(n: int) -> list[NewPair]:
    pairs = []
    for i in range(n):
        line = CertLine(i + 1, (f"site{i}.example.com", f"www.site{i}.example.com"))
        _, key_pem, csr, chain = _material(line.names)
        pairs.append(NewPair(line, "ec", key_pem, csr, chain))
    return pairs


def _journal_by_hand(store: Store, pairs: list[NewPair]) -> None:
    """What ``commit_many`` leaves when it crashes after writing the journal: the pairs'
    key and certificate staged, the journal naming their renames and links."""
    renames, links = [], []
    for pair in pairs:
        paths = store.layout.paths(pair.line, "ec")
        for data, final in ((pair.key_pem, paths.key), (pair.chain_pem, paths.cert)):
            tmp = store.staging_dir / f"{final.name}.feedbeef"
            tmp.write_bytes(data)  # type: ignore[arg-type]
            renames.append([str(tmp.relative_to(store.root)),
                            str(final.relative_to(store.root))])
        links += [[str(link.relative_to(store.root)), target] for link, target in paths.links]
    store.journal.write({"renames": renames, "links": links,
                         "certs": [store.layout.paths(p.line, "ec").cert.name for p in pairs]})


def test_group_commit_makes_every_pair_live_with_its_links(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    pairs = _pairs(3)
    results = store.commit_many(pairs)
    for pair, paths in zip(pairs, results, strict=True):
        assert isinstance(paths, CertPaths)
        assert paths.key.read_bytes() == pair.key_pem and paths.cert.read_bytes() == (
            pair.chain_pem)
        assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
        assert all(os.readlink(link) == target for link, target in paths.links)
        assert scan_one(store, pair.line, "ec").problem is None
    assert list(store.staging_dir.iterdir()) == [] and store.journal.read() is None


def test_recover_rolls_a_group_commit_forward_from_the_journal(tmp_path: Path) -> None:
    """A crash after the journal was written: every pair of the batch goes live at the
    next start, and the journal is cleared."""
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    pairs = _pairs(2)
    _journal_by_hand(store, pairs)
    (done,) = store.recover()
    assert done.startswith("completed an interrupted store of site0.example.com_")
    for pair in pairs:
        assert scan_one(store, pair.line, "ec").problem is None
        assert os.readlink(store.layout.paths(pair.line, "ec").links[0][0]) == (
            store.layout.paths(pair.line, "ec").key.name)
    assert store.journal.read() is None and list(store.staging_dir.iterdir()) == []


def test_journal_cut_short_by_a_crash_reads_as_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "pending")
    journal.create()
    assert journal.read() is None
    record = {"renames": [["a", "b"]], "links": [], "certs": ["x"]}
    journal.write(record)
    assert journal.read() == record
    whole = journal.path.read_bytes()
    for cut in (1, len(whole) // 2, len(whole) - 1):
        journal.path.write_bytes(whole[:cut])
        assert journal.read() is None
    journal.path.write_bytes(whole.replace(b'"a"', b'"c"'))  # same length, other bytes
    assert journal.read() is None
    journal.write(record)
    journal.clear()
    assert journal.read() is None and journal.path.stat().st_size == 0


def test_a_commit_that_cannot_finish_keeps_its_journal_and_stops_later_commits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename that fails after the journal was written (an I/O error: no real disk here
    produces one on demand, hence the patched os.replace): the journal keeps the batch for
    the next run, and no later commit of this run may overwrite it."""
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    first, second = _pairs(2)

    def failing_replace(src: object, dst: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", failing_replace)
        (result,) = store.commit_many([first])
    assert isinstance(result, StoreError) and "the next run completes it" in str(result)
    assert store.journal.read() is not None
    (later,) = store.commit_many([second])
    assert isinstance(later, StoreError) and str(later).startswith("not stored: an earlier")
    assert scan_one(store, second.line, "ec").problem == "missing"
    # The next run (a new Store) finishes the first batch.
    again = Store(settings(tmp_path), test=False)
    assert len(again.recover()) == 1
    assert scan_one(again, first.line, "ec").problem is None


@pytest.mark.anyio
async def test_group_committer_batches_concurrent_commits(tmp_path: Path) -> None:
    import anyio

    from lematt.store.committer import group_commits

    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    pairs = _pairs(12)
    got: dict[int, CertPaths] = {}
    async with group_commits(store) as committer:
        async def one(pair: NewPair) -> None:
            got[pair.line.lineno] = await committer.commit(pair)

        async with anyio.create_task_group() as tg:
            for pair in pairs:
                tg.start_soon(one, pair)
    # All twelve arrived before the first batch was written; none waited for a batch of
    # its own.
    assert committer.batches < len(pairs)
    for pair in pairs:
        assert got[pair.line.lineno].cert.read_bytes() == pair.chain_pem
        assert scan_one(store, pair.line, "ec").problem is None


def test_recover_finishes_the_journal_of_an_order_process(tmp_path: Path) -> None:
    """An order process of a sharded run (--processes) commits through its own journal;
    the next run's recovery finds it there."""
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    (pair,) = _pairs(1)
    shard = Store(settings(tmp_path), test=False)
    shard.use_journal("pending-1")
    _journal_by_hand(shard, [pair])
    paths = shard.layout.paths(pair.line, "ec")
    assert store.recover() == [f"completed an interrupted store of {paths.cert.name}"]
    assert scan_one(store, pair.line, "ec").problem is None
    assert shard.journal.read() is None and store.journal.path.name == "pending"


def test_new_tree_directories_get_exact_modes_whatever_the_umask(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    old = os.umask(0)
    try:
        assert store.ensure_dirs() == []
    finally:
        os.umask(old)
    modes = {sub: stat.S_IMODE((store.root / sub).stat().st_mode)
             for sub in ("key", "csr", "cert")}
    assert modes == {"key": 0o700, "csr": 0o755, "cert": 0o755}


@pytest.mark.parametrize(("before", "after", "said"), [
    (0o700, 0o700, False), (0o750, 0o750, False),  # an operator's group access stays
    (0o755, 0o750, True), (0o705, 0o700, True)])  # other users lose theirs
def test_an_existing_key_directory_keeps_its_group_access(
        tmp_path: Path, before: int, after: int, said: bool) -> None:
    store = Store(settings(tmp_path), test=False)
    key_dir = store.root / "key"
    key_dir.mkdir(parents=True)
    key_dir.chmod(before)
    messages = store.ensure_dirs()
    assert stat.S_IMODE(key_dir.stat().st_mode) == after
    assert bool(messages) == said
    assert store.ensure_dirs() == []  # said once


def test_a_key_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    store = Store(settings(tmp_path), test=False)
    key_dir = store.root / "key"
    key_dir.mkdir(parents=True, mode=0o700)
    if os.geteuid() != 0:
        pytest.fail("this test chowns a directory: run the suite as root, as CI does")
    os.chown(key_dir, 65534, 65534)
    # Refused as every directory of the tree another user owns is (StrictModes, exit 2).
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        store.ensure_dirs()
