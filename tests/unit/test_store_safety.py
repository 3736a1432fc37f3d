"""store: the tree is not a way into root.

Forged journals (this lematt's and the legacy ``*.json``) may name only lematt's own paths;
symlinks planted where lematt keeps its files are refused or replaced, never followed;
directories get explicit modes under any umask; a conf dir or tree that another user owns or
can write is refused (StrictModes), group-writable only with ``allowGroupWritable``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lematt import crypto
from lematt.config import Settings
from lematt.errors import ConfigError, StoreError
from lematt.model import CertLine
from lematt.store.layout import PAIRS_DIR
from lematt.store.tree import Store
from lematt.testing.certs import LocalCA

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LINE = CertLine(1, ("a.example.com", "www.a.example.com"))


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(conf_dir=tmp_path, account_key=tmp_path / "account.key",
                    challenge_drop_dir=tmp_path / "drop", **kw)  # type: ignore[arg-type]


def material() -> tuple[bytes, bytes, bytes]:
    key = crypto.load_private_key(crypto.generate_private_pem("ec"))
    csr = crypto.csr_pem(crypto.make_csr(key, LINE.names))
    return crypto.private_key_pem(key), csr, LocalCA().issue_days(key, LINE.names, NOW, 1)


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A file outside the tree that no journal may touch."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "shadow"
    target.write_text("precious\n")
    yield target
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in outside.iterdir()) == ["shadow"]


def _store(tmp_path: Path) -> Store:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    store = Store(settings(conf), test=False)
    store.ensure_dirs()
    return store


FORGED = [
    {"version": 2, "renames": [["/etc/passwd", ".pairs/x+0123abcd"]]},
    {"version": 2, "renames": [[".staging/x+0123abcd", "../../outside/shadow"]]},
    {"version": 2, "renames": [[".staging/../../outside/shadow", "csr/x"]]},
    {"version": 2, "renames": [[".staging/evil", "key/a-key.pem"]]},  # keys go via .pairs
    {"version": 2, "switch": [[".pairs/x", "../../outside"]]},
    {"version": 2, "switch": [[".pairs/x", "y+0123abcd"]]},  # another slot's version
    {"version": 2, "mains": [["key/a", "../../outside/shadow"]]},
    {"version": 2, "mains": [["key/a-key.pem", "../.pairs/x/a-cert.pem"]]},  # key -> cert
    {"version": 2, "mains": [["key/a", "../.pairs/x/.."]]},
    {"version": 2, "mains": [["key/a", "../.pairs/x/../../../outside"]]},
    {"version": 2, "links": [["key/a", "/etc/shadow"]]},
    {"version": 2, "links": [["cert/../../outside/shadow", "b"]]},
    {"version": 2, "remove": ["../outside"]},
    {"version": 2, "remove": [".pairs/.."]},
    {"version": 2, "remove": [".pairs/x"]},  # a pointer, not a version
    {"version": 2, "renames": "nonsense"},
]
LEGACY = [
    {"renames": [["/tmp/evil", "key/a-key.pem"]]},
    {"renames": [["key/.a.lematt-tmp-1", "/etc/cron.d/evil"]]},
    {"renames": [["key/.a.lematt-tmp-1", "key/../../outside/shadow"]]},
    {"renames": [["../outside/shadow", "cert/a"]]},
    {"links": [["../outside/shadow", "x"]]},
    {"links": [["cert/a", "../../outside/shadow"]]},
]


@pytest.mark.parametrize("forged", FORGED)
def test_a_forged_journal_touches_nothing_outside_the_tree(
        tmp_path: Path, victim: Path, forged: dict[str, object]) -> None:
    store = _store(tmp_path)
    store.journal.write(forged)
    with pytest.raises(StoreError, match=r"refusing .* not a path lematt writes"):
        Store(store.settings, test=False).recover()


@pytest.mark.parametrize("forged", LEGACY)
def test_a_forged_legacy_journal_file_touches_nothing_outside_the_tree(
        tmp_path: Path, victim: Path, forged: dict[str, object]) -> None:
    """The legacy per-commit files have no checksum: only their shapes protect the tree."""
    store = _store(tmp_path)
    (store.journal_dir / "0001.json").write_text(json.dumps(forged))
    with pytest.raises(StoreError, match="refusing"):
        Store(store.settings, test=False).recover()


def test_symlinked_staging_journal_or_key_dir_is_refused_not_followed(
        tmp_path: Path, victim: Path) -> None:
    for name in (".staging", ".journal", "key", PAIRS_DIR):
        conf = tmp_path / f"conf-{name}"
        (conf / "prod").mkdir(parents=True)
        (conf / "prod" / name).symlink_to(victim.parent)
        with pytest.raises(StoreError, match=f"{name} is a symlink"):
            Store(settings(conf), test=False).ensure_dirs()


def test_symlinked_journal_and_lock_file_are_refused(tmp_path: Path, victim: Path) -> None:
    store = _store(tmp_path)
    store.journal.path.unlink()
    store.journal.path.symlink_to(victim)
    with pytest.raises(StoreError, match="symlink"):
        Store(store.settings, test=False).recover()
    lock = store.settings.conf_dir / ".lematt.lock"
    lock.symlink_to(victim)
    with pytest.raises(StoreError, match="symlink"), store.lock():
        pass


def test_a_planted_key_symlink_is_neither_read_nor_written_through(
        tmp_path: Path, victim: Path) -> None:
    """key/<name> pointing at another file: not used as the pair's key (a new one is made),
    and storing the pair replaces the link instead of writing through it."""
    store = _store(tmp_path)
    paths = store.layout.paths(LINE, "ec")
    paths.key.symlink_to(victim)
    assert store.read_key(LINE, "ec") is None
    key, csr, chain = material()
    store.commit(LINE, "ec", key_pem=key, csr_pem=csr, chain_pem=chain)
    assert paths.key.read_bytes() == key
    assert os.readlink(paths.key) == f"../{PAIRS_DIR}/{paths.slot}/{paths.key.name}"


def test_recovery_never_follows_a_symlink_in_staging(tmp_path: Path, victim: Path) -> None:
    store = _store(tmp_path)
    (store.staging_dir / "evil").symlink_to(victim.parent)
    (store.staging_dir / "evil-file").symlink_to(victim)
    Store(store.settings, test=False).recover()
    assert list(store.staging_dir.iterdir()) == []


def test_directories_get_their_modes_under_umask_000(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        store = _store(tmp_path)
        key, csr, chain = material()
        paths = store.commit(LINE, "ec", key_pem=key, csr_pem=csr, chain_pem=chain)
    finally:
        os.umask(previous)
    root = store.root
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in root.iterdir() if p.is_dir()}
    assert modes == {"key": 0o700, "cert": 0o755, "csr": 0o755, PAIRS_DIR: 0o755,
                     ".staging": 0o700, ".journal": 0o700}
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    version = root / PAIRS_DIR / os.readlink(root / PAIRS_DIR / paths.slot)
    assert stat.S_IMODE(version.stat().st_mode) == 0o755
    # The files of a version carry the upstream names (what copies of them deliver).
    assert sorted(os.listdir(version)) == sorted([paths.key.name, paths.cert.name])
    assert stat.S_IMODE((version / paths.key.name).stat().st_mode) == 0o600
    assert stat.S_IMODE((version / paths.cert.name).stat().st_mode) == 0o644
    assert stat.S_IMODE(paths.csr.stat().st_mode) == 0o644
    for name in os.listdir(root / ".journal"):
        assert stat.S_IMODE((root / ".journal" / name).stat().st_mode) & 0o077 == 0


def test_an_operators_group_access_to_key_is_kept_but_world_access_is_closed(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.close()
    os.chmod(store.root / "key", 0o750)
    Store(store.settings, test=False).ensure_dirs()
    assert stat.S_IMODE((store.root / "key").stat().st_mode) == 0o750
    os.chmod(store.root / "key", 0o755)
    assert Store(store.settings, test=False).ensure_dirs() == [
        f"{store.root / 'key'}: removed other users' access (mode 0755 -> 0750); group "
        "access, if any, is kept"]
    # Other users lose their access; the group keeps what the operator gave it.
    assert stat.S_IMODE((store.root / "key").stat().st_mode) == 0o750


@pytest.mark.parametrize("where", ["conf", "conf/prod", "conf/prod/cert", "conf/domains"])
def test_writable_by_others_is_refused_group_only_with_the_flag(
        tmp_path: Path, where: str) -> None:
    store = _store(tmp_path)
    store.close()
    domains = tmp_path / "conf" / "domains"
    domains.write_text("a.example.com\n")
    path = tmp_path / where
    mode = stat.S_IMODE(path.stat().st_mode)

    def start(**kw: object) -> None:
        again = Store(settings(tmp_path / "conf", **kw), test=False)
        again.check_conf([domains])
        again.ensure_dirs()
        again.close()

    where = re.escape(str(path))
    os.chmod(path, mode | 0o020)
    with pytest.raises(ConfigError, match=rf"^{where}: the .* is writable by its group") as err:
        start()
    assert "\n" not in str(err.value) and "allowGroupWritable" in str(err.value)
    start(allow_group_writable=True)
    os.chmod(path, mode | 0o002)
    for flag in (False, True):
        with pytest.raises(ConfigError, match=rf"^{where}: the .* writable by every user"):
            start(allow_group_writable=flag)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("where", ["conf", "conf/prod", "conf/prod/key"])
def test_owned_by_another_user_is_refused(tmp_path: Path, where: str) -> None:
    store = _store(tmp_path)
    store.close()
    os.chown(tmp_path / where, 65534, -1)
    again = Store(settings(tmp_path / "conf"), test=False)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        again.check_conf()
        again.ensure_dirs()
