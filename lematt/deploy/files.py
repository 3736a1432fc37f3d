"""The files an upload carries: what ``CERTS`` / ``KEYS`` stand for, read from the tree.

Contract: ``upload_files(layout, key_types, lines, kind, mode)`` lists, for each line and key
type, the stored key (``uploadKeys``) or certificate (``uploadCerts``) and the line's own
per-name symlinks (kept as symlinks: each points at the upstream name in the same
directory; a name that is another line's upstream name stays that line's), each with the
mode it gets on the host (default: 0600 for keys, 0644 for certificates) and its pair (so
a key and its certificate are renamed into place together).
The key or certificate is given as the regular file the upstream name shows now
(``pairs.live_file``: in ``.pairs/<slot>+<hex>/`` for a pair lematt stored, the upstream name
itself for an old-layout file); its basename is the upstream name, so whatever copies it -
SFTP, or ``rsync -a`` in a shell action - delivers a regular file under the name services
are configured with, never lematt's link into ``.pairs``. Files that do not exist are left
out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lematt.execution import UploadFile
from lematt.model import CertLine, KeyType
from lematt.store.layout import KEY_MODE, PUBLIC_MODE, Layout
from lematt.store.pairs import live_file


def upload_files(layout: Layout, key_types: Sequence[KeyType], lines: Sequence[CertLine],
                 kind: str, mode: int | None) -> tuple[UploadFile, ...]:
    """The stored files of ``lines`` that CERTS / KEYS stand for: each key type's file and
    the per-name symlinks (kept as symlinks). Files that do not exist are left out."""
    want_keys = kind == "uploadKeys"
    mode = mode if mode is not None else (KEY_MODE if want_keys else PUBLIC_MODE)
    files: dict[str, UploadFile] = {}
    for line in lines:
        for key_type in key_types:
            paths = layout.paths(line, key_type)
            main = paths.key if want_keys else paths.cert
            real = live_file(paths, "key" if want_keys else "cert")
            if real is not None:
                files[main.name] = UploadFile(real, main.name, mode, pair=paths.slot)
            for link, target in paths.links:
                # Only the line's own link: a name that is also another line's upstream
                # name (a link into .pairs, or a file) is that line's, never sent as ours.
                if link.parent == main.parent and _points_at(link, target):
                    files.setdefault(link.name, UploadFile(link, link.name, mode, target,
                                                           pair=paths.slot))
    return tuple(files.values())


def _points_at(link: Path, target: str) -> bool:
    try:
        return os.readlink(link) == target
    except OSError:  # missing, or not a symlink
        return False
