"""The tree is not a way into root: safe directory handles, explicit modes, ownership checks.

Contract:
- ``open_dir(path)`` / ``open_dir(name, parent_fd)`` opens a directory without following a
  symlink at its last component (``O_NOFOLLOW``): a symlink where lematt expects its own
  directory is a ``StoreError`` naming it, never a way to somewhere else.
- ``ensure_dir(name, parent_fd, mode)`` creates a directory with exactly ``mode`` (set with
  ``fchmod`` after ``mkdir``, so the umask never decides; until then the umask can only have
  made it stricter), or opens the existing one, untouched.
- ``read_file(name, dir_fd)`` reads one of lematt's own files without following a symlink.
- ``remove_tree(name, dir_fd)`` removes a file or directory tree below ``dir_fd`` without
  following any symlink in it (``shutil.rmtree``'s fd-based walk).
- ``check_safe(path, allow_group=...)`` refuses, as OpenSSH's StrictModes does, a path owned
  by another user (root excepted) or writable by others: world-writable always,
  group-writable unless ``allow_group`` (``allowGroupWritable`` in lematt.conf). The error is
  a ``ConfigError`` whose one line names the path, why, and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from lematt.errors import ConfigError, StoreError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _refusal(path: str, exc: OSError) -> StoreError:
    if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return StoreError(f"{path} is a symlink; lematt keeps its own files there and "
                                  "never follows a link in their place: remove it")
        return StoreError(f"{path} is not a directory; remove it or move it away")
    return StoreError(f"cannot open {path}: {exc.strerror or exc}")


def open_dir(path: str | os.PathLike[str], parent_fd: int | None = None,
             shown: str | None = None, *, missing_ok: bool = True) -> int:
    """A descriptor of the directory ``path`` (relative to ``parent_fd`` if given);
    ``missing_ok`` False lets ``FileNotFoundError`` through for the caller to create it."""
    try:
        return os.open(path, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not missing_ok:
            raise
        raise _refusal(shown or os.fspath(path), FileNotFoundError(2, "not found")) from None
    except OSError as exc:
        raise _refusal(shown or os.fspath(path), exc) from exc


def ensure_dir(name: str, parent_fd: int, mode: int, shown: str) -> tuple[int, bool]:
    """(descriptor, created) of directory ``name`` in ``parent_fd``; a new one gets ``mode``
    exactly. An existing one is opened as it is (an operator may have given it a group)."""
    created = False
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create {shown}: {exc.strerror or exc}") from exc
    fd = open_dir(name, parent_fd, shown)
    if created:
        try:
            os.fchmod(fd, mode)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot set the mode of {shown}: {exc.strerror}") from exc
    return fd, created


def read_file(name: str, dir_fd: int | None = None) -> bytes | None:
    """The bytes of one of lematt's own files, None if absent; a symlink is an error."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {name}: {exc.strerror or exc}"
                         + (" (a symlink where lematt keeps its own file)"
                            if exc.errno == errno.ELOOP else "")) from exc
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_tree(name: str, dir_fd: int) -> None:
    """Remove the entry ``name`` of ``dir_fd`` (a directory: with all it holds), following
    no symlink; an entry that is already gone is fine."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # rmtree's fd-based walk (Linux) opens every level with O_NOFOLLOW and unlinks
        # symlinks instead of entering them.
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def check_safe(path: Path, *, allow_group: bool, what: str) -> None:
    """Refuse ``path`` (a ``what``: "conf dir", "config file", ...) if another user owns it
    or can write to it; see the module docstring. A missing path is fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot check the {what}: {exc.strerror}", path=path) from exc
    check_stat(st, path, allow_group=allow_group, what=what)


def check_stat(st: os.stat_result, path: Path, *, allow_group: bool, what: str) -> None:
    """``check_safe`` for a stat result already in hand (``fstat`` of an open directory:
    what is checked is what is used)."""
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise ConfigError(
            f"the {what} is owned by uid {st.st_uid}, not by the user lematt runs as "
            f"(uid {me}) or root; another user could change what lematt does: "
            f"chown it to uid {me}", path=path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        raise ConfigError(
            f"the {what} is writable by every user (mode {mode:04o}); lematt refuses it, "
            f"since anyone could change what lematt does: chmod o-w '{path}'", path=path)
    if mode & stat.S_IWGRP and not allow_group:
        raise ConfigError(
            f"the {what} is writable by its group (mode {mode:04o}); chmod g-w '{path}', or "
            "set allowGroupWritable: yes in lematt.conf if every member of the group may "
            "change what lematt does", path=path)
