"""store: a key and its certificate never disagree on disk, and what a stored pair owes is
written down with it - proven at every step of a commit.

Two ways to stop a commit at every step, in process (the SIGKILL versions run lematt as a
process: tests/e2e/faults/test_store_crash.py):
- after every single rename or symlink the commit makes, the upstream names are read back
  and must show a matching pair (or none);
- at every failpoint the commit passes (``lematt.failpoint``: the names a SIGKILL test arms)
  the commit is abandoned by an exception (a crash as far as the disk is concerned: nothing
  lematt does afterwards runs), the names must show a matching pair, and the next start's
  recovery must make the new pair live and have its deploy recorded as owed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lematt import crypto, failpoint
from lematt.config import Settings
from lematt.model import CertLine
from lematt.store import record
from lematt.store.layout import PAIRS_DIR, CertPaths
from lematt.store.tree import NewPair, Store
from lematt.testing.certs import LocalCA

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LINES = (CertLine(1, ("one.example.com",)),
         CertLine(2, ("two.example.com", "www.two.example.com")))


class Crash(BaseException):
    """Stands for SIGKILL: no ``except Exception`` of lematt's catches it."""


def settings(tmp_path: Path) -> Settings:
    return Settings(conf_dir=tmp_path, account_key=tmp_path / "account.key",
                    challenge_drop_dir=tmp_path / "drop")


def material(line: CertLine) -> tuple[bytes, bytes, bytes]:
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    csr = crypto.csr_pem(crypto.make_csr(key, line.names))
    return crypto.private_key_pem(key), csr, LocalCA().issue_days(key, line.names, NOW, 1)


def shown(paths: CertPaths) -> tuple[bytes, bytes] | None:
    """The (key, cert) the upstream names show now; None if neither resolves. A key beside a
    certificate it does not belong to fails the test, as does one without the other."""
    try:
        key = paths.key.read_bytes()
    except FileNotFoundError:
        key = None
    try:
        cert = paths.cert.read_bytes()
    except FileNotFoundError:
        cert = None
    if key is None and cert is None:
        return None
    assert key is not None and cert is not None, f"half a pair: key {key is not None}"
    assert crypto.public_key_der(crypto.load_private_key(key)) == (
        crypto.read_certificate(cert).public_key_der), f"{paths.cert.name}: key != cert"
    for link, target in paths.links:
        if link.is_symlink():
            assert os.readlink(link) == target
    return key, cert


def make_legacy(store: Store, line: CertLine) -> tuple[bytes, bytes]:
    """A pair as the original lematt (and lematt before .pairs) left it: regular files."""
    key, csr, chain = material(line)
    paths = store.layout.paths(line, "ec")
    paths.key.write_bytes(key)
    os.chmod(paths.key, 0o600)
    paths.cert.write_bytes(chain)
    paths.csr.write_bytes(csr)
    for link, target in paths.links:
        os.symlink(target, link)
    return key, chain


Start = Callable[[Store], dict[int, tuple[bytes, bytes] | None]]


def start_empty(store: Store) -> dict[int, tuple[bytes, bytes] | None]:
    return {line.lineno: None for line in LINES}


def start_legacy(store: Store) -> dict[int, tuple[bytes, bytes] | None]:
    return {line.lineno: make_legacy(store, line) for line in LINES}


def start_versioned(store: Store) -> dict[int, tuple[bytes, bytes] | None]:
    olds: dict[int, tuple[bytes, bytes] | None] = {}
    for line in LINES:
        key, csr, chain = material(line)
        store.commit(line, "ec", key_pem=key, csr_pem=csr, chain_pem=chain)
        olds[line.lineno] = (key, chain)
    return olds


STARTS = {"empty": start_empty, "legacy": start_legacy, "versioned": start_versioned}


def new_pairs() -> list[NewPair]:
    return [NewPair(line, "ec", *material(line), owes_deploy=True) for line in LINES]


@pytest.fixture
def failpoints(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every failpoint the code passes, in order (``hit`` records instead of killing)."""
    seen: list[str] = []
    monkeypatch.setattr(failpoint, "hit", seen.append)
    yield seen


def crash_at(monkeypatch: pytest.MonkeyPatch, name: str, count: int) -> None:
    calls = {"n": 0}

    def hit(point: str) -> None:
        if point == name:
            calls["n"] += 1
            if calls["n"] == count:
                raise Crash(f"{name}:{count}")

    monkeypatch.setattr(failpoint, "hit", hit)


@pytest.mark.parametrize("start", STARTS)
def test_every_rename_and_link_of_a_commit_leaves_matching_pairs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    olds = STARTS[start](store)
    pairs = new_pairs()
    all_paths = [store.layout.paths(p.line, "ec") for p in pairs]
    checks = {"n": 0}

    def checked(original: Callable[..., None]) -> Callable[..., None]:
        def call(*args: object, **kwargs: object) -> None:
            original(*args, **kwargs)
            checks["n"] += 1
            for pair, paths in zip(pairs, all_paths, strict=True):
                now = shown(paths)
                assert now in (olds[pair.line.lineno], (pair.key_pem, pair.chain_pem))
        return call

    monkeypatch.setattr(record.os, "replace", checked(os.replace))
    monkeypatch.setattr(record.os, "symlink", checked(os.symlink))
    results = store.commit_many(pairs)
    monkeypatch.undo()
    assert all(isinstance(r, CertPaths) for r in results), results
    for pair, paths in zip(pairs, all_paths, strict=True):
        assert shown(paths) == (pair.key_pem, pair.chain_pem)
        assert os.readlink(paths.key).startswith(f"../{PAIRS_DIR}/")
    # Each pair keeps exactly one version; staging and journal are empty.
    assert sorted(p.name for p in (tmp_path / "prod" / PAIRS_DIR).iterdir()) == sorted(
        [paths.slot for paths in all_paths]
        + [os.readlink(tmp_path / "prod" / PAIRS_DIR / paths.slot) for paths in all_paths])
    assert list(store.staging_dir.iterdir()) == [] and store.journal.read() is None
    assert checks["n"] >= 4


def test_the_steps_of_a_commit(tmp_path: Path, failpoints: list[str]) -> None:
    """The failpoints a legacy tree's first commit passes (the crash tests arm each)."""
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    start_legacy(store)
    failpoints.clear()
    store.commit_many(new_pairs())
    assert failpoints == ["store.staged", "store.journaled", *["store.rename"] * 6,
                          "store.migrated", "store.switched", "store.switched", "store.owed"]


def _points() -> list[tuple[str, str, int]]:
    """(start, failpoint, count): every step a commit of two pairs passes from that start
    (an old-layout tree has a third rename per pair, and the move over)."""
    points = []
    for start in STARTS:
        renames = 6 if start == "legacy" else 4
        points += [(start, "store.staged", 1), (start, "store.journaled", 1),
                   *[(start, "store.rename", n) for n in range(1, renames + 1)],
                   *([(start, "store.migrated", 1)] if start == "legacy" else []),
                   (start, "store.switched", 1), (start, "store.switched", 2),
                   (start, "store.owed", 1)]
    return points


@pytest.mark.parametrize(("start", "point", "count"), _points())
def test_a_crash_at_any_step_leaves_matching_pairs_and_the_next_start_converges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str, point: str,
        count: int) -> None:
    store = Store(settings(tmp_path), test=False)
    store.ensure_dirs()
    olds = STARTS[start](store)
    pairs = new_pairs()
    crash_at(monkeypatch, point, count)
    with pytest.raises(Crash):
        store.commit_many(pairs)
    monkeypatch.undo()
    store.close()
    for pair in pairs:
        now = shown(store.layout.paths(pair.line, "ec"))
        assert now in (olds[pair.line.lineno], (pair.key_pem, pair.chain_pem))
    # The next run: recovery completes the commit, or (crash before the journal) drops it.
    again = Store(settings(tmp_path), test=False)
    done = again.recover()
    journaled = point != "store.staged"
    assert bool(done) == journaled
    for pair in pairs:
        expect = (pair.key_pem, pair.chain_pem) if journaled else olds[pair.line.lineno]
        assert shown(again.layout.paths(pair.line, "ec")) == expect
    owed = again.pending.load()
    assert owed == ({line.names: None for line in LINES} if journaled else {})
    assert list(again.staging_dir.iterdir()) == [] and again.journal.read() is None
    versions = [p.name for p in (tmp_path / "prod" / PAIRS_DIR).iterdir() if "+" in p.name]
    live = {os.readlink(p) for p in (tmp_path / "prod" / PAIRS_DIR).iterdir()
            if p.is_symlink()}
    assert set(versions) == live  # no version left behind that no pointer names
