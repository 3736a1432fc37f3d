"""File primitives shared by the store and the drop-dir challenge solver.

Contract: ``read_bytes(path)`` is the file's bytes or None when it does not exist (any other
error is a ``StoreError`` naming the path). A file written with ``write_atomic`` is either
absent/old or complete/new for every reader, also after a crash: the bytes go to a temp file in
the same directory (so the rename cannot cross file systems), created with its final mode from
the first byte (a private key is never world-readable, not even for a moment), fsynced, then
renamed over the target, and the directory is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from lematt.errors import StoreError

TEMP_MARK = ".lematt-tmp-"


def read_bytes(path: str | os.PathLike[str]) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {os.fspath(path)}: {exc}") from exc


def temp_name(target: Path) -> Path:
    """A fresh hidden name next to ``target`` that recovery can recognise as ours."""
    return target.with_name(f".{target.name}{TEMP_MARK}{secrets.token_hex(4)}")


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_temp(target: Path, data: bytes, mode: int, tmp: Path | None = None) -> Path:
    """Write ``data`` to a new temp file beside ``target`` (mode set at creation), fsync it.
    ``tmp`` is the temp name to use (from ``temp_name``) when the caller recorded it first."""
    tmp = tmp or temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        # The umask may have cleared bits we asked for (0644 under umask 027): set them exactly.
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes, mode: int) -> None:
    tmp = write_temp(target, data, mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def symlink_atomic(target: Path, points_to: str) -> None:
    """Make ``target`` a symlink to ``points_to`` (relative), replacing an old link atomically."""
    tmp = temp_name(target)
    os.symlink(points_to, tmp)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
