"""Owed deploys: which hosts still need which renewed certificates.

Contract: ``PendingDeploys(tree_root)`` reads and writes ``<tree>/.deploy-pending.json``:
host -> the names of each line whose deploy to that host has not succeeded yet. ``load``
returns {} when there is no file; an unreadable file is a ``StoreError`` that says what to
do. ``save`` writes atomically (an empty mapping removes the file).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from lematt.errors import StoreError
from lematt.store.atomic import read_bytes, write_atomic
from lematt.store.layout import PUBLIC_MODE


class PendingDeploys:
    def __init__(self, tree_root: Path) -> None:
        self.path = tree_root / ".deploy-pending.json"

    def load(self) -> dict[str, list[tuple[str, ...]]]:
        """Host -> names of the lines whose deploy to it has not succeeded yet."""
        data = read_bytes(self.path)
        if data is None:
            return {}
        try:
            raw = json.loads(data)
            return {str(host): [tuple(map(str, names)) for names in lines]
                    for host, lines in raw.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"unreadable {self.path} ({exc}); remove it and run "
                             "lematt again (pending deploys are then forgotten)") from exc

    def save(self, pending: dict[str, list[tuple[str, ...]]]) -> None:
        if not pending:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        data = {host: [list(names) for names in lines] for host, lines in pending.items()}
        try:
            write_atomic(self.path, json.dumps(data, indent=1).encode(), PUBLIC_MODE)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from exc
