"""Reading and writing lematt's small per-certificate record files ("books": the back-off
file, the record of what endpoints served).

Contract: ``read_book(path, max_bytes)`` gives the file's bytes, ``None`` when there is
none, or raises ``BookUnreadable`` with the reason; it never follows a symlink (the files
are lematt's, written by rename, never links). ``certificates_of(data, schema, version,
max_bytes)`` gives the book's ``certificates`` object, or raises ``ForeignBook`` saying why
the bytes are not such a book. ``write_book(path, body, compact)`` writes it atomically, or
removes the file when ``body`` is None, and first deletes the temporary files a killed
write of ``path`` left beside it (``remove_leftovers``). The callers turn the exceptions into a
warning and an empty book: a damaged record never blocks a run.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from lematt.errors import printable
from lematt.store.atomic import TEMP_MARK, write_atomic
from lematt.store.layout import PUBLIC_MODE


class BookUnreadable(Exception):
    """The file exists but cannot be read (the message says why)."""


class ForeignBook(Exception):
    """The bytes are not a book of this schema and version (the message says why)."""


def read_book(path: Path, max_bytes: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BookUnreadable(exc.strerror or str(exc)) from exc
    try:
        with os.fdopen(fd, "rb") as fh:
            return fh.read(max_bytes + 1)
    except OSError as exc:
        raise BookUnreadable(exc.strerror or str(exc)) from exc


def certificates_of(data: bytes, schema: str, version: int, max_bytes: int) -> dict[str, Any]:
    if len(data) > max_bytes:
        raise ForeignBook(f"larger than {max_bytes >> 20} MiB")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        raise ForeignBook("not JSON") from None
    if not isinstance(raw, dict) or raw.get("schema") != schema:
        raise ForeignBook(f"no \"schema\": \"{schema}\"")
    if raw.get("version") != version:
        raise ForeignBook(f"version {printable(str(raw.get('version')), 20)}, not {version}")
    certs = raw.get("certificates")
    if not isinstance(certs, dict):
        raise ForeignBook("no \"certificates\" object")
    return certs


def write_book(path: Path, body: dict[str, Any] | None, *, compact: bool = False) -> None:
    """Raises ``OSError``; the caller names the file in its error."""
    if body is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    remove_leftovers(path)
    text = (json.dumps(body, separators=(",", ":")) if compact
            else json.dumps(body, indent=1))
    write_atomic(path, (text + "\n").encode(), PUBLIC_MODE)


def remove_leftovers(path: Path) -> None:
    """Temporary files of a write of ``path`` that a kill interrupted; nothing else in its
    directory is touched."""
    prefix = f".{path.name}{TEMP_MARK}"
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
