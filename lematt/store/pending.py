"""Owed deploys: which stored certificates still have to reach which hosts.

Contract: ``PendingDeploys(tree_root, lock_dir)`` keeps ``<tree>/.deploy-pending.json``: for each
line (by its names) the deploys it still owes - ``None`` for "every host its actions
deploy to" (what storing a new pair records), or the set of hosts still owed after a deploy
that reached only some of them. Hosts are resolved from the config when deploying, not when
storing: the store knows nothing of actions, and a host changed in the config meanwhile is
then simply the host that gets the pair.

- ``load()`` -> ``Owed`` ({} without a file); an earlier lematt's form (host -> lines) is read
  too. An unreadable file is a ``StoreError`` that says what to do.
- ``add(lines)`` records that each of ``lines`` owes all its deploys (replacing a partial
  debt: a new pair must reach every host). The store calls it while it rolls a journaled
  commit forward, before the journal is cleared, so a crash at any instant leaves the debt
  recorded or the commit still journaled (whose roll-forward records it).
- ``settle(before, after)`` replaces, line by line, the debts a deploy started from
  (``before``) with what is still owed (``after``); a debt recorded meanwhile is kept.
- Every read-modify-write holds an exclusive ``flock`` on ``<lock_dir>/deploy-pending.lock``:
  order processes of a sharded run (``--processes``) store concurrently. Writes are atomic;
  the file and the lock file are opened without following symlinks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from lematt.errors import StoreError
from lematt.store.atomic import write_atomic
from lematt.store.layout import KEY_MODE, PUBLIC_MODE
from lematt.store.safe import read_file

FILE_NAME = ".deploy-pending.json"
LOCK_NAME = "deploy-pending.lock"
FORMAT = 2

Names = tuple[str, ...]
Owed = dict[Names, frozenset[str] | None]  # line names -> hosts still owed (None: all)


class PendingDeploys:
    def __init__(self, tree_root: Path, lock_dir: Path | None = None) -> None:
        self.path = tree_root / FILE_NAME
        self._lock_path = (lock_dir or tree_root) / LOCK_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         KEY_MODE)
        except OSError as exc:
            raise StoreError(f"cannot open {self._lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self) -> Owed:
        data = read_file(str(self.path))
        if data is None:
            return {}
        try:
            raw = json.loads(data)
            if isinstance(raw, dict) and raw.get("format") == FORMAT:
                return {tuple(map(str, item["names"])): (
                    None if item["hosts"] is None else frozenset(map(str, item["hosts"])))
                    for item in raw["owed"]}
            # An earlier lematt's form: host -> [names of each line it is owed].
            owed: dict[Names, set[str]] = {}
            for host, lines in raw.items():
                for names in lines:
                    owed.setdefault(tuple(map(str, names)), set()).add(str(host))
            return {names: frozenset(hosts) for names, hosts in owed.items()}
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise StoreError(f"unreadable {self.path} ({exc}); remove it and run "
                             "lematt again (pending deploys are then forgotten)") from exc

    def _save(self, owed: Mapping[Names, frozenset[str] | None]) -> None:
        try:
            if not owed:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                return
            items = [{"names": list(names), "hosts": None if hosts is None else sorted(hosts)}
                     for names, hosts in owed.items()]
            write_atomic(self.path, json.dumps({"format": FORMAT, "owed": items},
                                               indent=1).encode(), PUBLIC_MODE)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def add(self, lines: Iterable[Names]) -> None:
        lines = list(lines)
        if not lines:
            return
        with self._locked():
            owed = self.load()
            for names in lines:
                owed[tuple(names)] = None
            self._save(owed)

    def settle(self, before: Mapping[Names, frozenset[str] | None],
               after: Mapping[Names, frozenset[str]]) -> None:
        with self._locked():
            owed = self.load()
            for names, hosts in before.items():
                if names in owed and owed[names] == hosts:
                    del owed[names]
            for names, hosts in after.items():
                if hosts and names not in owed:
                    owed[names] = hosts
            self._save(owed)
