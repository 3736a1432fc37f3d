"""One certificate tree (prod or test): its lock, directories, commit protocol and recovery.

File names are ``lematt.store.layout``'s; besides them the tree holds ``.pairs/`` (the
versions of each pair, ``lematt.store.pairs``), ``.staging/`` and ``.journal/`` (new files
before they go live) and the owed deploys (``lematt.store.pending``).

Contract:
- ``check_conf(files)`` refuses a conf dir or config file that another user owns or can
  write (``ConfigError``, one line naming the path; see ``lematt.store.safe``), before the
  lock is taken; ``ensure_dirs`` opens (or creates) the tree's directories and checks them
  the same way (``lematt.store.dirs``), and returns what it repaired (other users' access to
  ``key/`` taken away), for the user, once; ``dirs()`` is the open ``TreeDirs``.
- ``commit`` makes key, CSR and certificate live together: the pair's new version directory
  and CSR are written to ``.staging`` first (fsynced, keys 0600 from the first byte), then
  the journal (``.journal/pending``, see ``lematt.store.journal``) naming the steps is
  written (fsynced), then the steps run (``lematt.store.record.apply``): the versions go
  into ``.pairs``, and each pair's pointer is switched with one rename, so the upstream names
  show the old pair or the new one at every instant, never a new key beside an old
  certificate. The same journal names the lines whose deploys the pairs now owe; they are
  written to the pending file before the journal is cleared. ``commit_many`` does this for
  several pairs with one journal write and one fsync per directory and phase (a group
  commit; ``lematt.store.committer`` feeds it). A crash at any point leaves either the old
  pair or (after ``recover`` at the next start) the new one and its owed deploys.
- ``lock`` takes a non-blocking exclusive lock on the conf dir; a second run fails at once.
- Nothing here talks to the network; errors are ``StoreError`` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from lematt import failpoint
from lematt.config import Settings
from lematt.errors import LockError, StoreError
from lematt.model import CertLine, KeyType
from lematt.store import record
from lematt.store.dirs import JOURNAL, STAGING, TreeDirs, open_tree
from lematt.store.journal import Journal
from lematt.store.layout import KEY_MODE, CertPaths, Layout
from lematt.store.pairs import NewPair, read_current, stage
from lematt.store.pending import PendingDeploys
from lematt.store.safe import check_safe, read_file, remove_tree

__all__ = ["NewPair", "Store"]


class Store:
    """One tree (prod or test) under a conf dir."""

    def __init__(self, settings: Settings, *, test: bool) -> None:
        self.settings = settings
        self.test = test
        self.layout = Layout(settings, test=test)
        self.root = self.layout.root
        self.journal_dir = self.root / JOURNAL
        self.pending = PendingDeploys(self.root, self.journal_dir)
        self.journal = Journal(self.journal_dir / "pending")
        # Set when a journaled commit could not be finished: the journal then holds it for
        # the next run, so no later commit of this run may overwrite it.
        self._unfinished: StoreError | None = None
        # New files are written here first and renamed into the tree (one file system, so
        # the rename is atomic); a crash before the journal leaves debris only here.
        self.staging_dir = self.root / STAGING
        self._dirs: TreeDirs | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def allow_group(self) -> bool:
        return self.settings.allow_group_writable

    def check_conf(self, files: Iterable[Path | None] = ()) -> None:
        """Refuse a conf dir or config file others can change (see the module docstring)."""
        check_safe(self.settings.conf_dir, allow_group=self.allow_group, what="conf dir")
        for path in files:
            if path is not None:
                check_safe(path, allow_group=self.allow_group, what="config file")

    def ensure_dirs(self) -> list[str]:
        """Open (or create) the tree's directories; what was repaired, said once."""
        dirs = self.dirs()
        changes, dirs.changes = dirs.changes, []
        return changes

    def dirs(self) -> TreeDirs:
        if self._dirs is None:
            self._dirs = open_tree(self.root, allow_group=self.allow_group)
            try:
                self.journal.create()
            except OSError as exc:
                raise StoreError(f"cannot create the journal {self.journal.path}: "
                                 f"{exc.strerror or exc}") from exc
        return self._dirs

    def close(self) -> None:
        if self._dirs is not None:
            self._dirs.close()
            self._dirs = None

    @contextlib.contextmanager
    def lock(self) -> Iterator[int]:
        """Exclusive, non-blocking lock on the conf dir, held for the whole run; yields the
        lock's file descriptor (order processes inherit it, so the lock outlives this
        process while they still store)."""
        path = self.settings.conf_dir / ".lematt.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, KEY_MODE)
        except OSError as exc:
            hint = (" (a symlink: lematt never follows one in its place)"
                    if exc.errno == errno.ELOOP else "")
            raise StoreError(f"cannot open the lock file {path}: {exc.strerror}{hint}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"the lock file {path} is not a regular file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise LockError(
                    f"another lematt run (pid {holder}) is working on "
                    f"{self.settings.conf_dir}; this run did nothing. Try again when it ends."
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield fd
        finally:
            os.close(fd)

    def use_journal(self, name: str) -> None:
        """Commit through ``.journal/<name>`` (an order process of a sharded run has its
        own; ``recover`` reads them all)."""
        self.journal = Journal(self.journal_dir / name)
        self.dirs()
        try:
            self.journal.create()
        except OSError as exc:
            raise StoreError(f"cannot create the journal {self.journal.path}: {exc}") from exc

    def read_key(self, line: CertLine, key_type: KeyType) -> bytes | None:
        """The pair's live key as stored (its own file only; see ``pairs.current``)."""
        return read_current(self.dirs(), self.layout.paths(line, key_type), "key")

    # -- committing ---------------------------------------------------------------------
    def commit(self, line: CertLine, key_type: KeyType, *, key_pem: bytes | None,
               csr_pem: bytes, chain_pem: bytes, owes_deploy: bool = False) -> CertPaths:
        """Make (new key,) CSR and chain live together; ``key_pem`` None keeps the key."""
        (result,) = self.commit_many([NewPair(line, key_type, key_pem, csr_pem, chain_pem,
                                              owes_deploy)])
        if isinstance(result, StoreError):
            raise result
        return result

    def commit_many(self, pairs: Sequence[NewPair]) -> list[CertPaths | StoreError]:
        """Make several new pairs live with one journal: a group commit.

        Per pair the guarantee is ``commit``'s; what the batch shares is the cost: one
        journal (written and fsynced once), one fsync of staging and of each directory per
        phase, instead of one of each per pair. A pair whose staging files cannot be written
        fails alone (its ``StoreError`` is in its place in the result); a journal that
        cannot be written fails them all, with the old files kept.
        """
        try:
            dirs = self.dirs()
        except StoreError as exc:
            return [exc] * len(pairs)
        token = secrets.token_hex(4)
        results: list[CertPaths | StoreError] = []
        steps = record.Steps()
        staged: list[str] = []
        for pair in pairs:
            paths = self.layout.paths(pair.line, pair.key_type)
            try:
                staged += stage(dirs, paths, pair, token, steps)
            except StoreError as exc:
                results.append(exc)
                continue
            results.append(paths)
        if not steps.switch:
            return results
        try:
            if self._unfinished is not None:
                raise self._unfinished
            # The staged names must be durable before the journal that refers to them.
            os.fsync(dirs.fd(STAGING))
            failpoint.hit("store.staged")
            self.journal.write(steps.to_json())
        except (OSError, StoreError) as exc:
            for name in staged:
                with contextlib.suppress(OSError):
                    remove_tree(name, dirs.fd(STAGING))
            error = exc if isinstance(exc, StoreError) else StoreError(
                f"cannot write the journal {self.journal.path}: {exc}; old files kept")
            return [error if isinstance(r, CertPaths) else r for r in results]
        failpoint.hit("store.journaled")
        # From here on the journal guarantees the new pairs go live, now or at the next start.
        try:
            self._roll_forward(steps, self.journal)
        except StoreError as exc:
            self._unfinished = StoreError(
                f"not stored: an earlier store of this run could not be finished ({exc}); "
                "the next run orders this certificate again")
            return [exc if isinstance(r, CertPaths) else r for r in results]
        return results

    def _roll_forward(self, steps: record.Steps, journal: Journal | Path) -> None:
        """Carry out a journaled commit, record its owed deploys, then clear its journal
        (a ``Path``: a per-commit journal file of an earlier lematt, removed instead)."""
        dirs = self.dirs()

        def owed() -> None:
            self.pending.add(steps.owed)
            failpoint.hit("store.owed")

        try:
            record.apply(dirs, steps, owed)
            if isinstance(journal, Journal):
                journal.clear()
            else:
                os.unlink(journal.name, dir_fd=dirs.fd(JOURNAL))
        except OSError as exc:
            raise StoreError(
                f"cannot finish storing {self._journal_subject(steps, journal)}: {exc}; "
                "the next run completes it"
            ) from exc

    @staticmethod
    def _journal_subject(steps: record.Steps, journal: Journal | Path) -> str:
        certs = steps.certs
        if len(certs) > 3:
            return f"{', '.join(certs[:3])} and {len(certs) - 3} more"
        if certs:
            return ", ".join(certs)
        return journal.stem if isinstance(journal, Path) else "a certificate"

    def recover(self) -> list[str]:
        """Finish commits a crash interrupted and drop orphaned staged files; say what was
        done. A journal naming anything but lematt's own paths is refused (``StoreError``)."""
        done: list[str] = []
        dirs = self.dirs()
        journal_fd = dirs.fd(JOURNAL)
        names = sorted(os.listdir(journal_fd))
        # Per-commit journal files (*.json) come from an earlier lematt; they hold the same
        # kind of record, without a checksum: parse() is all that stands between them and
        # the file system.
        for name in (n for n in names if n.endswith(".json")):
            legacy = self.journal_dir / name
            data = read_file(name, journal_fd)
            try:
                raw = json.loads(data or b"")
            except ValueError as exc:
                raise StoreError(f"unreadable journal {legacy}: {exc}; inspect it") from exc
            steps = record.parse(raw, str(legacy))
            self._roll_forward(steps, legacy)
            done.append(
                f"completed an interrupted store of {self._journal_subject(steps, legacy)}")
        # "pending", and "pending-N" of the order processes of a sharded run.
        for name in (n for n in names if n.startswith("pending")):
            journal = Journal(self.journal_dir / name)
            raw = journal.read()
            if raw is not None:
                steps = record.parse(raw, str(journal.path))
                self._roll_forward(steps, journal)
                done.append("completed an interrupted store of "
                            f"{self._journal_subject(steps, journal)}")
        # Whatever is left in staging belongs to a commit that crashed before its journal
        # was written: it never went live. (Staging is small; the key and cert directories,
        # which can hold 100,000 entries, are never listed.)
        staging = dirs.fd(STAGING)
        for name in os.listdir(staging):
            with contextlib.suppress(OSError):
                remove_tree(name, staging)
        return done
