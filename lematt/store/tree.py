"""One certificate tree (prod or test): its lock, directories, commit protocol and recovery.

File names are ``lematt.store.layout``'s; besides them the tree holds ``.staging/`` and
``.journal/`` (new files before they go live) and the owed deploys (``lematt.store.pending``).

Contract:
- ``commit`` makes key, CSR and certificate live together: all three are written to
  ``.staging`` first (fsynced, keys 0600 from the first byte), then the journal
  (``.journal/pending``, see ``lematt.store.journal``) naming the pending renames is written
  (fsynced), then the renames run. ``commit_many`` does this for several pairs with one
  journal write and one fsync per directory (a group commit; ``lematt.store.committer`` feeds it).
  A crash at any point leaves either the old pair or (after ``recover`` at the next start)
  the new one - never a new key beside an old certificate.
- ``lock`` takes a non-blocking exclusive lock on the conf dir; a second run fails at once.
- Nothing here talks to the network; errors are ``StoreError`` naming the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lematt.config import Settings
from lematt.errors import LockError, StoreError
from lematt.model import CertLine, KeyType
from lematt.store.atomic import fsync_dir, symlink_atomic, write_temp
from lematt.store.journal import Journal
from lematt.store.layout import (
    KEY_MODE,
    PRIVATE_DIR_MODE,
    PUBLIC_DIR_MODE,
    PUBLIC_MODE,
    CertPaths,
    Layout,
)
from lematt.store.pending import PendingDeploys


@dataclass(frozen=True)
class NewPair:
    """What one finished order stores: ``key_pem`` None keeps the stored key."""

    line: CertLine
    key_type: KeyType
    key_pem: bytes | None
    csr_pem: bytes
    chain_pem: bytes


class Store:
    """One tree (prod or test) under a conf dir."""

    def __init__(self, settings: Settings, *, test: bool) -> None:
        self.settings = settings
        self.test = test
        self.layout = Layout(settings, test=test)
        self.root = self.layout.root
        self.pending = PendingDeploys(self.root)
        self.journal_dir = self.root / ".journal"
        self.journal = Journal(self.journal_dir / "pending")
        # Set when a journaled commit could not be finished: the journal then holds it for
        # the next run, so no later commit of this run may overwrite it.
        self._unfinished: StoreError | None = None
        # New files are written here first and renamed into key/, csr/, cert/ (one file
        # system, so the rename is atomic); a crash leaves debris only here.
        self.staging_dir = self.root / ".staging"

    # -- lifecycle ----------------------------------------------------------------------
    def ensure_dirs(self) -> list[str]:
        """Create the tree's directories that are missing, each with its exact mode (never
        the umask's). An existing ``key/`` keeps the mode its operator gave it (group access
        for a service's group, say) unless every user can reach it: then only the bits for
        other users are taken away. Returns what it changed, for the user; ``StoreError``
        when ``key/`` is not this user's directory."""
        changed: list[str] = []
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub, mode in (("key", PRIVATE_DIR_MODE), ("csr", PUBLIC_DIR_MODE),
                              ("cert", PUBLIC_DIR_MODE)):
                path = self.root / sub
                try:
                    path.mkdir(mode=mode)
                except FileExistsError:
                    if sub == "key":
                        changed += self._keep_key_dir_private(path)
                    continue
                os.chmod(path, mode)  # mkdir's mode passed through the umask
            self.journal_dir.mkdir(exist_ok=True)
            self.journal.create()
            self.staging_dir.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the certificate tree {self.root}: {exc}") from exc
        return changed

    @staticmethod
    def _keep_key_dir_private(path: Path) -> list[str]:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{path} is not a directory; move it away so lematt can make its "
                             "key directory there")
        if st.st_uid != os.geteuid():
            raise StoreError(f"{path} belongs to user id {st.st_uid}, not to the user running "
                             "lematt; chown it to that user (keys must be theirs alone)")
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o007:
            return []  # private, or shared with a group on purpose: leave it as it is
        os.chmod(path, mode & ~0o007)
        return [f"{path}: removed other users' access (mode {mode:04o} -> "
                f"{mode & ~0o007:04o}); group access, if any, is kept"]

    @contextlib.contextmanager
    def lock(self) -> Iterator[int]:
        """Exclusive, non-blocking lock on the conf dir, held for the whole run; yields the
        lock's file descriptor (order processes inherit it, so the lock outlives this
        process while they still store)."""
        path = self.settings.conf_dir / ".lematt.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, KEY_MODE)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {path}: {exc}") from exc
        try:
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
        try:
            self.journal.create()
        except OSError as exc:
            raise StoreError(f"cannot create the journal {self.journal.path}: {exc}") from exc

    # -- committing ---------------------------------------------------------------------
    def commit(
        self,
        line: CertLine,
        key_type: KeyType,
        *,
        key_pem: bytes | None,
        csr_pem: bytes,
        chain_pem: bytes,
    ) -> CertPaths:
        """Make (new key,) CSR and chain live together; ``key_pem`` None keeps the old key."""
        (result,) = self.commit_many([NewPair(line, key_type, key_pem, csr_pem, chain_pem)])
        if isinstance(result, StoreError):
            raise result
        return result

    def commit_many(self, pairs: Sequence[NewPair]) -> list[CertPaths | StoreError]:
        """Make several new pairs live with one journal: a group commit.

        Per pair the guarantee is ``commit``'s; what the batch shares is the cost: one
        journal (written and fsynced once), one fsync of staging and of each target
        directory, instead of one of each per pair. A pair whose staging files cannot be
        written fails alone (its ``StoreError`` is in its place in the result); a journal
        that cannot be written fails them all, with the old files kept.
        """
        token = secrets.token_hex(4)
        results: list[CertPaths | StoreError] = []
        renames: list[list[str]] = []
        links: list[list[str]] = []
        staged: list[Path] = []
        certs: list[str] = []
        for pair in pairs:
            try:
                paths, pending = self._stage(pair, token)
            except StoreError as exc:
                results.append(exc)
                continue
            results.append(paths)
            staged.extend(tmp for tmp, _ in pending)
            certs.append(paths.cert.name)
            renames.extend([str(tmp.relative_to(self.root)), str(final.relative_to(self.root))]
                           for tmp, final in pending)
            links.extend([str(link.relative_to(self.root)), target]
                         for link, target in paths.links)
        if not renames:
            return results
        record = {"renames": renames, "links": links, "certs": certs}
        try:
            if self._unfinished is not None:
                raise self._unfinished
            # The staged names must be durable before the journal that refers to them.
            fsync_dir(self.staging_dir)
            self.journal.write(record)
        except (OSError, StoreError) as exc:
            for tmp in staged:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            error = exc if isinstance(exc, StoreError) else StoreError(
                f"cannot write the journal {self.journal.path}: {exc}; old files kept")
            return [error if isinstance(r, CertPaths) else r for r in results]
        # From here on the journal guarantees the new pairs go live, now or at the next start.
        try:
            self._roll_forward(record, self.journal)
        except StoreError as exc:
            self._unfinished = StoreError(
                f"not stored: an earlier store of this run could not be finished ({exc}); "
                "the next run orders this certificate again")
            return [exc if isinstance(r, CertPaths) else r for r in results]
        return results

    def _stage(self, pair: NewPair, token: str) -> tuple[CertPaths, list[tuple[Path, Path]]]:
        """Write a pair's files to staging (fsynced, final modes); (paths, [(temp, final)])."""
        paths = self.layout.paths(pair.line, pair.key_type)
        targets = ([(paths.key, pair.key_pem, KEY_MODE)] if pair.key_pem is not None else []
                   ) + [(paths.csr, pair.csr_pem, PUBLIC_MODE),
                        (paths.cert, pair.chain_pem, PUBLIC_MODE)]
        pending = [(self.staging_dir / f"{target.name}.{token}", target)
                   for target, _, _ in targets]
        try:
            for (tmp, target), (_, data, mode) in zip(pending, targets, strict=True):
                write_temp(target, data, mode, tmp)
        except OSError as exc:
            for tmp, _ in pending:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise StoreError(f"cannot write {paths.cert.parent}: {exc}; old files kept"
                             ) from exc
        return paths, pending

    def _roll_forward(self, record: dict[str, list[list[str]]], journal: Journal | Path,
                      ) -> None:
        """Finish the renames and links of a journaled commit, then clear its journal
        (a ``Path``: a per-commit journal file of an earlier lematt, removed instead)."""
        try:
            dirs: set[Path] = set()
            for tmp_rel, final_rel in record.get("renames", []):
                tmp, final = self.root / tmp_rel, self.root / final_rel
                # A missing temp file was renamed before a crash; its directory is still
                # fsynced below, since that rename may not have reached the disk.
                with contextlib.suppress(FileNotFoundError):
                    os.replace(tmp, final)
                dirs.add(final.parent)
            for link_rel, target in record.get("links", []):
                link = self.root / link_rel
                if self._link(link, target):
                    dirs.add(link.parent)
            # One fsync per directory makes the renames and the links durable together;
            # only then may the journal go.
            for d in dirs:
                fsync_dir(d)
            if isinstance(journal, Journal):
                journal.clear()
            else:
                journal.unlink()
        except OSError as exc:
            raise StoreError(
                f"cannot finish storing {self._journal_subject(record, journal)}: {exc}; "
                "the next run completes it"
            ) from exc

    @staticmethod
    def _journal_subject(record: dict[str, list[list[str]]], journal: Journal | Path) -> str:
        certs = [str(c) for c in record.get("certs", [])]
        if len(certs) > 3:
            return f"{', '.join(certs[:3])} and {len(certs) - 3} more"
        if certs:
            return ", ".join(certs)
        return journal.stem if isinstance(journal, Path) else "a certificate"

    @staticmethod
    def _link(link: Path, target: str) -> bool:
        """Point the per-name symlink ``link`` at ``target``; True if it had to change."""
        try:
            if os.readlink(link) == target:
                return False  # already right: renewals keep the combined file's name
        except FileNotFoundError:
            # A new name: creating the link is atomic by itself (no temp name, no rename).
            with contextlib.suppress(FileExistsError):
                os.symlink(target, link)
                return True
        except OSError:
            # Not a symlink: a name that is also a single-name line has a real file here.
            return False
        symlink_atomic(link, target)
        return True

    def recover(self) -> list[str]:
        """Finish commits a crash interrupted and drop orphaned temp files; say what was done."""
        done: list[str] = []
        if not self.journal_dir.is_dir():
            return done
        # Per-commit journal files (*.json) come from an earlier lematt; they hold the same
        # kind of record.
        for legacy in sorted(self.journal_dir.glob("*.json")):
            try:
                record = json.loads(legacy.read_bytes())
            except (OSError, ValueError) as exc:
                raise StoreError(f"unreadable journal {legacy}: {exc}; inspect it") from exc
            self._roll_forward(record, legacy)
            done.append(
                f"completed an interrupted store of {self._journal_subject(record, legacy)}")
        # "pending", and "pending-N" of the order processes of a sharded run.
        for path in sorted(self.journal_dir.glob("pending*")):
            journal = Journal(path)
            try:
                record = journal.read()
            except OSError as exc:
                raise StoreError(f"cannot read the journal {path}: {exc}") from exc
            if record is not None:
                self._roll_forward(record, journal)
                done.append("completed an interrupted store of "
                            f"{self._journal_subject(record, journal)}")
        # Whatever is left in staging belongs to a commit that crashed before its journal
        # was written: it never went live. (Staging is small; the key and cert directories,
        # which can hold 100,000 entries, are never listed.)
        with contextlib.suppress(FileNotFoundError), os.scandir(self.staging_dir) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return done

