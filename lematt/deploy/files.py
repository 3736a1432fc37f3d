"""The files an upload carries: what ``CERTS`` / ``KEYS`` stand for, read from the tree.

Contract: ``upload_files(layout, key_types, lines, kind, mode)`` lists, for each line and key
type, the stored key (``uploadKeys``) or certificate (``uploadCerts``) and the line's
per-name symlinks (kept as symlinks: each points at the upstream name in the same
directory), each with the mode it gets on the host (default: 0600 for keys, 0644 for
certificates) and its pair (so a key and its certificate are renamed into place together).
The key or certificate is given as the regular file the upstream name shows now
(``pairs.live_file``: in ``.pairs/<slot>+<hex>/`` for a pair lematt stored, the upstream name
itself for an old-layout file); its basename is the upstream name, so whatever copies it -
SFTP, or ``rsync -a`` in a shell action - delivers a regular file under the name services
are configured with, never lematt's link into ``.pairs``. Files that do not exist are left
out.
"""

from __future__ import annotations

from collections.abc import Sequence

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
                if link.parent == main.parent and link.is_symlink():
                    files.setdefault(link.name, UploadFile(link, link.name, mode, target,
                                                           pair=paths.slot))
    return tuple(files.values())
