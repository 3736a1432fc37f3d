"""The certificate tree, compatible with the original lematt's layout.

Layout (``<tree>`` is ``<confdir>/prod`` or ``<confdir>/test``; ``.test`` only in the test tree)::

    <tree>/key/<stem>-key.<tag>[.test].pem             private key, mode 0600
    <tree>/csr/<stem>-csr.<tag>[.test].csr             the CSR last used (PEM)
    <tree>/cert/<stem>-cert-combined.<tag>[.test].pem  leaf + chain as the CA sent it
    <tree>/{key,cert}/<name>-...                        per-name symlinks, SAN lines only
    <tree>/.staging/, <tree>/.journal/                  new files before they go live

``<stem>`` is ``names.file_stem`` of the line; ``<tag>`` is rsaTag or curveTag.

Contract:
- ``commit`` makes key, CSR and certificate live together: all three are written to
  ``.staging`` first (fsynced, keys 0600 from the first byte), then a journal naming the
  pending renames is written (fsynced), then the renames run.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lematt.atomic import fsync_dir, symlink_atomic, write_atomic, write_temp
from lematt.config import CertLine, KeyType, Settings
from lematt.errors import LockError, StoreError

KEY_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class CertPaths:
    key: Path
    csr: Path
    cert: Path
    # (link path, relative target) pairs for the per-name symlinks of a SAN line.
    links: tuple[tuple[Path, str], ...]


class Store:
    """One tree (prod or test) under a conf dir."""

    def __init__(self, settings: Settings, *, test: bool) -> None:
        self.settings = settings
        self.test = test
        self.root = settings.conf_dir / ("test" if test else "prod")
        self.journal_dir = self.root / ".journal"
        # New files are written here first and renamed into key/, csr/, cert/ (one file
        # system, so the rename is atomic); a crash leaves debris only here.
        self.staging_dir = self.root / ".staging"
        self._root_str = str(self.root)
        suffix = ".test" if test else ""
        self._pem_end: dict[str, str] = {kt: f".{settings.tag(kt)}{suffix}.pem"
                                         for kt in ("rsa", "ec")}

    # -- naming -------------------------------------------------------------------------
    def _file(self, kind: str, stem: str, key_type: KeyType) -> Path:
        suffix = ".test" if self.test else ""
        tag = self.settings.tag(key_type)
        if kind == "csr":
            return self.root / "csr" / f"{stem}-csr.{tag}{suffix}.csr"
        middle = "key" if kind == "key" else "cert-combined"
        return self.root / kind / f"{stem}-{middle}.{tag}{suffix}.pem"

    def paths(self, line: CertLine, key_type: KeyType) -> CertPaths:
        stem = line.file_stem
        key = self._file("key", stem, key_type)
        cert = self._file("cert", stem, key_type)
        links: list[tuple[Path, str]] = []
        if len(line.names) > 1:
            for name in line.names:
                links.append((self._file("key", name, key_type), key.name))
                links.append((self._file("cert", name, key_type), cert.name))
        return CertPaths(key, self._file("csr", stem, key_type), cert, tuple(links))

    def pair_names(self, line: CertLine, key_type: KeyType) -> tuple[str, str]:
        """(key, certificate) file names in key/ and cert/: the hot path of a no-op run,
        without the Path objects and link names of ``paths``."""
        stem = line.file_stem
        end = self._pem_end[key_type]
        return f"{stem}-key{end}", f"{stem}-cert-combined{end}"

    def pair_files(self, line: CertLine, key_type: KeyType) -> tuple[str, str]:
        """(key, certificate) paths as strings."""
        key, cert = self.pair_names(line, key_type)
        return f"{self._root_str}/key/{key}", f"{self._root_str}/cert/{cert}"

    def cert_dir(self) -> Path:
        return self.root / "cert"

    def key_dir(self) -> Path:
        return self.root / "key"

    # -- lifecycle ----------------------------------------------------------------------
    def ensure_dirs(self) -> None:
        try:
            for sub in ("key", "csr", "cert"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            # Keys live here: keep the directory itself private too.
            os.chmod(self.root / "key", 0o700)
            self.journal_dir.mkdir(exist_ok=True)
            self.staging_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the certificate tree {self.root}: {exc}") from exc

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive, non-blocking lock on the conf dir, held for the whole run."""
        path = self.settings.conf_dir / ".lematt.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
            yield
        finally:
            os.close(fd)

    # -- reading ------------------------------------------------------------------------
    @staticmethod
    def read_bytes(path: Path) -> bytes | None:
        return Store.read_bytes_at(str(path))

    @staticmethod
    def read_bytes_at(path: str) -> bytes | None:
        """The file's bytes, None if it does not exist; ``StoreError`` if it cannot be read."""
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc

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
        paths = self.paths(line, key_type)
        journal = self.journal_dir / f"{paths.cert.name}.json"
        targets = ([(paths.key, key_pem, KEY_MODE)] if key_pem is not None else []) + [
            (paths.csr, csr_pem, PUBLIC_MODE), (paths.cert, chain_pem, PUBLIC_MODE)]
        token = secrets.token_hex(4)
        pending = [(self.staging_dir / f"{target.name}.{token}", target)
                   for target, _, _ in targets]
        try:
            for (tmp, target), (_, data, mode) in zip(pending, targets, strict=True):
                write_temp(target, data, mode, tmp)
            record = {
                "renames": [[str(t.relative_to(self.root)), str(f.relative_to(self.root))]
                            for t, f in pending],
                "links": [[str(p.relative_to(self.root)), target] for p, target in paths.links],
            }
            write_atomic(journal, json.dumps(record).encode(), PUBLIC_MODE)
        except OSError as exc:
            for tmp, _ in pending:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise StoreError(f"cannot write {paths.cert.parent}: {exc}; old files kept") from exc
        # From here on the journal guarantees the new pair goes live, now or at the next start.
        self._roll_forward(journal, record)
        return paths

    def _roll_forward(self, journal: Path, record: dict[str, list[list[str]]]) -> None:
        try:
            dirs: set[Path] = set()
            for tmp_rel, final_rel in record["renames"]:
                tmp, final = self.root / tmp_rel, self.root / final_rel
                if tmp.exists():
                    os.replace(tmp, final)
                    dirs.add(final.parent)
            for d in dirs:
                fsync_dir(d)
            for link_rel, target in record["links"]:
                self._link(self.root / link_rel, target)
            journal.unlink()
        except OSError as exc:
            raise StoreError(
                f"cannot finish storing {journal.stem}: {exc}; the next run completes it"
            ) from exc

    @staticmethod
    def _link(link: Path, target: str) -> None:
        try:
            if os.readlink(link) == target:
                return  # already right: renewals keep the combined file's name
        except FileNotFoundError:
            pass
        except OSError:
            # Not a symlink: a name that is also a single-name line has a real file here.
            return
        symlink_atomic(link, target)

    # -- pending deploys ------------------------------------------------------------------
    @property
    def pending_path(self) -> Path:
        return self.root / ".deploy-pending.json"

    def load_pending(self) -> dict[str, list[tuple[str, ...]]]:
        """Host -> names of the lines whose deploy to it has not succeeded yet."""
        data = self.read_bytes(self.pending_path)
        if data is None:
            return {}
        try:
            raw = json.loads(data)
            return {str(host): [tuple(map(str, names)) for names in lines]
                    for host, lines in raw.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"unreadable {self.pending_path} ({exc}); remove it and run "
                             "lematt again (pending deploys are then forgotten)") from exc

    def save_pending(self, pending: dict[str, list[tuple[str, ...]]]) -> None:
        if not pending:
            with contextlib.suppress(FileNotFoundError):
                self.pending_path.unlink()
            return
        data = {host: [list(names) for names in lines] for host, lines in pending.items()}
        try:
            write_atomic(self.pending_path, json.dumps(data, indent=1).encode(), PUBLIC_MODE)
        except OSError as exc:
            raise StoreError(f"cannot write {self.pending_path}: {exc}") from exc

    def recover(self) -> list[str]:
        """Finish commits a crash interrupted and drop orphaned temp files; say what was done."""
        done: list[str] = []
        if not self.journal_dir.is_dir():
            return done
        for journal in sorted(self.journal_dir.glob("*.json")):
            try:
                record = json.loads(journal.read_bytes())
            except (OSError, ValueError) as exc:
                raise StoreError(f"unreadable journal {journal}: {exc}; inspect it") from exc
            self._roll_forward(journal, record)
            done.append(f"completed an interrupted store of {journal.stem}")
        # Whatever is left in staging belongs to a commit that crashed before its journal
        # was written: it never went live. (Staging is small; the key and cert directories,
        # which can hold 100,000 entries, are never listed.)
        with contextlib.suppress(FileNotFoundError), os.scandir(self.staging_dir) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return done

