"""Test helper: a tree's every entry, to prove that something wrote nothing."""

from __future__ import annotations

import os
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[bytes | str, int, int]]:
    """Every entry under ``root``: content (or link target), mode and mtime."""
    out: dict[str, tuple[bytes | str, int, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        body: bytes | str = (os.readlink(path) if path.is_symlink() else
                             path.read_bytes() if path.is_file() else "dir")
        out[str(path.relative_to(root))] = (body, st.st_mode, st.st_mtime_ns)
    return out
