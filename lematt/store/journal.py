"""The store's commit journal: one file, rewritten in place.

Contract: ``Journal(path)`` is the file ``path`` (created empty by ``create``).
``write(record)`` makes ``record`` (a JSON-able mapping) durable: after it returns, a crash
leaves ``read()`` returning exactly that record. ``clear()`` makes ``read()`` return None again,
also durably. A write that a crash cut short is detected (length and SHA-256 in a header line)
and reads as None: the caller writes the journal before it changes anything, so an
incomplete journal means nothing was changed.

The journal is lematt's own file: opened with ``O_NOFOLLOW``, so a symlink planted in its place
is an error, never a way to write elsewhere. Its record is untrusted on the way back in:
``lematt.store.record.parse`` admits only the paths lematt writes.

Why one file rewritten in place and not a new file per commit: creating and deleting a file
per commit allocates and frees an inode each time, and on ext4 without a journal every inode
allocation scans past the inodes freed in the last half minute (``recently_deleted`` in the
kernel, seen with ``perf`` in ``benchmarks/bulk.py``); a burst of commits then slows itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lematt.store.atomic import fsync_dir, write_all
from lematt.store.layout import KEY_MODE
from lematt.store.safe import read_file

MAGIC = b"lematt-journal-1"
_OPEN = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        """Make the (empty) journal file exist durably; nothing if it already does."""
        try:
            fd = os.open(self.path, _OPEN | os.O_CREAT | os.O_EXCL, KEY_MODE)
        except FileExistsError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.path.parent)

    def write(self, record: dict[str, Any]) -> None:
        body = json.dumps(record).encode()
        header = b"%s %s %d\n" % (MAGIC, hashlib.sha256(body).hexdigest().encode(), len(body))
        fd = os.open(self.path, _OPEN)
        try:
            # Truncate first: a longer old content must not survive behind the new one.
            os.ftruncate(fd, 0)
            write_all(fd, header + body)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def clear(self) -> None:
        fd = os.open(self.path, _OPEN)
        try:
            os.ftruncate(fd, 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def read(self) -> dict[str, Any] | None:
        """The record last written and not cleared; None if empty, missing or incomplete."""
        data = read_file(str(self.path))
        if data is None:
            return None
        header, sep, body = data.partition(b"\n")
        fields = header.split(b" ")
        if not sep or len(fields) != 3 or fields[0] != MAGIC:
            return None
        with contextlib.suppress(ValueError):
            if int(fields[2]) == len(body) and \
                    hashlib.sha256(body).hexdigest().encode() == fields[1]:
                record = json.loads(body)
                if isinstance(record, dict):
                    return record
        return None
