"""A pair's versions: staging a new one, and finding the key and certificate a pair shows now.

A pair (one line, one key type) lives in ``.pairs/<slot>+<hex>/`` (the key, 0600, and the
certificate, each under its upstream name); ``.pairs/<slot>`` is a symlink naming the live
version, and the upstream names ``key/...-key...pem`` and ``cert/...-cert-combined...pem`` are
symlinks through it to the file of the same name (see ``lematt.store.layout``). Switching the
pointer is one rename, so the upstream names show the old pair or the new one, never a mix.

Contract:
- ``stage(dirs, paths, pair, token, steps)`` writes the pair's new version directory and its
  CSR into ``.staging`` (every file fsynced, the key 0600 from its first byte, the version
  directory fsynced), adds the steps that make it live to ``steps`` (``lematt.store.record``),
  and returns the names it staged. When the upstream names are not yet both the pair's own
  links (a tree of the original lematt: regular files), it also stages a version holding
  hard links of exactly the files they show now, so that the move into the versioned layout
  changes nothing a reader sees before the switch. ``StoreError`` on failure, with nothing
  of this pair left in staging.
- ``current(dirs, paths, kind)`` is where a pair's live key (``kind`` "key") or certificate
  ("cert") is: an upstream regular file, or the file of that name in the version its pointer
  names. A symlink there that is not the pair's own link (another line's per-name link,
  anything else) is neither followed nor used: the pair counts as having no such file.
  ``read_current`` reads it.
- ``live_file(paths, kind)`` is the same answer as a path, without the tree's descriptors
  (for deploys, which copy the real file: its basename is the upstream name).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from lematt.errors import StoreError
from lematt.model import CertLine, KeyType
from lematt.store.atomic import write_all
from lematt.store.dirs import STAGING, TreeDirs
from lematt.store.layout import (
    KEY_MODE,
    PAIRS_DIR,
    PUBLIC_DIR_MODE,
    PUBLIC_MODE,
    VERSION_MARK,
    CertPaths,
    main_target,
)
from lematt.store.record import Steps, version_slot
from lematt.store.safe import read_file, remove_tree


@dataclass(frozen=True)
class NewPair:
    """What one finished order stores: ``key_pem`` None keeps the pair's live key.
    ``owes_deploy``: the line has actions to deploy it, so storing it records the deploy
    it owes in the same journal commit (``lematt.store.pending``)."""

    line: CertLine
    key_type: KeyType
    key_pem: bytes | None
    csr_pem: bytes
    chain_pem: bytes
    owes_deploy: bool = False


def pointer(dirs: TreeDirs, slot: str) -> str | None:
    """The version ``.pairs/<slot>`` names, if it is one of this slot's version dirs."""
    pairs = dirs.fd(PAIRS_DIR)
    try:
        target = os.readlink(slot, dir_fd=pairs)
        if version_slot(target) == slot and stat.S_ISDIR(
                os.lstat(target, dir_fd=pairs).st_mode):
            return target
    except OSError:
        pass
    return None


def _where(paths: CertPaths, kind: str) -> tuple[str, str]:
    """(tree directory, upstream name) of the pair's key (``kind`` "key") or certificate."""
    return ("key", paths.key.name) if kind == "key" else ("cert", paths.cert.name)


def current(dirs: TreeDirs, paths: CertPaths, kind: str) -> tuple[int, str] | None:
    where, name = _where(paths, kind)
    fd = dirs.fd(where)
    try:
        st = os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        return fd, name
    if stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=fd) == main_target(paths.slot,
                                                                                   name):
        version = pointer(dirs, paths.slot)
        if version is not None:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(f"{version}/{name}",
                                         dir_fd=dirs.fd(PAIRS_DIR)).st_mode):
                    return dirs.fd(PAIRS_DIR), f"{version}/{name}"
    return None


def live_file(paths: CertPaths, kind: str) -> Path | None:
    """The regular file the pair's upstream key or certificate name shows now: the name
    itself (an old-layout file) or, through the pair's own link and pointer, the file of the
    same name in the live version. Two ``readlink`` calls at most; anything else there (a
    link that is not the pair's own, a missing file) is None."""
    _, name = _where(paths, kind)
    upstream = paths.key if kind == "key" else paths.cert
    try:
        st = os.lstat(upstream)
        if stat.S_ISREG(st.st_mode):
            return upstream
        if not stat.S_ISLNK(st.st_mode) or os.readlink(upstream) != main_target(paths.slot,
                                                                                 name):
            return None
        pairs = upstream.parent.parent / PAIRS_DIR
        version = os.readlink(pairs / paths.slot)
        if version_slot(version) != paths.slot:
            return None
        real = pairs / version / name
        return real if stat.S_ISREG(os.lstat(real).st_mode) else None
    except OSError:
        return None


def read_current(dirs: TreeDirs, paths: CertPaths, kind: str) -> bytes | None:
    found = current(dirs, paths, kind)
    return None if found is None else read_file(found[1], found[0])


def _is_own_link(dirs: TreeDirs, paths: CertPaths, kind: str) -> bool:
    where, name = _where(paths, kind)
    try:
        return os.readlink(name, dir_fd=dirs.fd(where)) == main_target(paths.slot, name)
    except OSError:
        return False


def _write(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the umask may have cleared bits we asked for
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(src_fd: int, src: str, dst_fd: int, name: str, mode: int) -> None:
    """``name`` in ``dst_fd`` as the very file ``src`` is (a hard link: same inode, so a
    service sees no change when its name moves over), or a copy where no link is allowed
    (another file system is impossible here, but ``fs.protected_hardlinks`` may refuse)."""
    try:
        os.link(src, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    except PermissionError:
        data = read_file(src, src_fd) or b""
        _write(dst_fd, name, data, mode)


def _new_version_dir(staging: int, name: str) -> int:
    os.mkdir(name, PUBLIC_DIR_MODE, dir_fd=staging)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=staging)
    os.fchmod(fd, PUBLIC_DIR_MODE)
    return fd


def stage(dirs: TreeDirs, paths: CertPaths, pair: NewPair, token: str, into: Steps
          ) -> list[str]:
    staging = dirs.fd(STAGING)
    slot = paths.slot
    staged: list[str] = []
    steps = Steps()  # this pair's, added to ``into`` once all is staged
    try:
        key_pem = pair.key_pem
        if key_pem is None:
            key_pem = read_current(dirs, paths, "key")
            if key_pem is None:
                raise StoreError(f"no stored key for {paths.cert.name} to keep; not stored")
        version = f"{slot}{VERSION_MARK}{secrets.token_hex(8)}"
        fd = _new_version_dir(staging, version)
        staged.append(version)
        try:
            _write(fd, paths.key.name, key_pem, KEY_MODE)
            _write(fd, paths.cert.name, pair.chain_pem, PUBLIC_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        csr_temp = f"{paths.csr.name}.{token}"
        _write(staging, csr_temp, pair.csr_pem, PUBLIC_MODE)
        staged.append(csr_temp)
        renames = [((STAGING, version), (PAIRS_DIR, version)),
                   ((STAGING, csr_temp), ("csr", paths.csr.name))]
        old = pointer(dirs, slot)
        own = _is_own_link(dirs, paths, "key") and _is_own_link(dirs, paths, "cert")
        if not own:
            shown = [current(dirs, paths, kind) for kind in ("key", "cert")]
            if shown[0] is not None and shown[1] is not None:
                # Both names show a file now: keep showing exactly those until the switch.
                before = f"{slot}{VERSION_MARK}{secrets.token_hex(8)}"
                fd = _new_version_dir(staging, before)
                staged.append(before)
                try:
                    for (name, mode), (src_fd, src) in zip(
                            ((paths.key.name, KEY_MODE), (paths.cert.name, PUBLIC_MODE)),
                            shown, strict=True):
                        _same_file(src_fd, src, fd, name, mode)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                renames.append(((STAGING, before), (PAIRS_DIR, before)))
                steps.migrate.append((slot, before, version))
                steps.remove.append(before)
            steps.mains += [(("key", paths.key.name), main_target(slot, paths.key.name)),
                            (("cert", paths.cert.name), main_target(slot, paths.cert.name))]
        steps.renames += renames
        steps.switch.append((slot, version))
        if old is not None:
            steps.remove.append(old)
        steps.links += [((link.parent.name, link.name), target) for link, target in paths.links]
        steps.certs.append(paths.cert.name)
        if pair.owes_deploy:
            steps.owed.append(pair.line.names)
    except (OSError, StoreError) as exc:
        for name in staged:
            with contextlib.suppress(OSError):
                remove_tree(name, staging)
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot stage {paths.cert.name} in {dirs.root / STAGING}: "
                         f"{exc.strerror or exc}; old files kept") from exc
    into.extend(steps)
    return staged

