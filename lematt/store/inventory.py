"""Inventory: what the certificate tree holds for each (domains line, key type).

Contract: ``scan`` returns a ``Found`` per job; a file that cannot be read or parsed is
reported, never raised, so that planning renews it. A key that does not match its
certificate's public key is not a working pair and is reported so.

Parsing 20,000 certificates and keys costs seconds; a cron run that finds nothing due must
cost well under one. So ``scan`` keeps an index (``<tree>/.inventory``) of what it read,
keyed by each file's identity: device, inode, size, mtime and ctime in nanoseconds (ctime
cannot be set back by any tool, so a rewritten file is always noticed). An entry is used only
when both the certificate's and the key's identities are unchanged; anything else is read
again. The index holds only facts derived from the files (dates, names, match), never a
decision, so it can make lematt re-read a file but never skip a certificate that is due.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime

from lematt.errors import CryptoError, StoreError
from lematt.model import CertInfo, CertLine, Found, KeyType
from lematt.store.atomic import read_bytes, write_atomic
from lematt.store.layout import PUBLIC_MODE
from lematt.store.safe import DIR_FLAGS, read_file
from lematt.store.tree import Store

INDEX_NAME = ".inventory"
# Version 2 added each certificate's ARI certID; an index of another version is rebuilt.
INDEX_VERSION = 2


def read_pair(key_path: str, cert_path: str) -> Found:
    """Parse a certificate and its key (the slow path)."""
    from lematt.crypto import load_private_key, public_key_der, read_certificate

    try:
        key_pem = read_bytes(key_path)
        cert_pem = read_bytes(cert_path)
    except StoreError as exc:
        return Found(None, f"unreadable: {exc}")
    if cert_pem is None:
        return Found(None, "missing", key_present=key_pem is not None)
    try:
        info = read_certificate(cert_pem, source=cert_path)
    except CryptoError as exc:
        return Found(None, f"unreadable certificate: {exc}", key_present=key_pem is not None)
    if key_pem is None:
        return Found(info, "key missing")
    try:
        key = load_private_key(key_pem, source=key_path, validate=False)
    except CryptoError as exc:
        return Found(info, f"key unreadable: {exc}", key_present=False)
    if public_key_der(key) != info.public_key_der:
        return Found(info, "key does not match the certificate", key_present=True)
    return Found(info, None, key_present=True)


def scan_one(store: Store, line: CertLine, key_type: KeyType) -> Found:
    key_path, cert_path = store.layout.pair_files(line, key_type)
    return read_pair(key_path, cert_path)


def _encode(name: str, cert_id: str, key_id: str, found: Found) -> str:
    """One index line: tab-separated, since a JSON document of 20,000 entries takes longer
    to parse than the rest of a no-op run."""
    cert = found.cert
    problem = (found.problem or "").replace("\t", " ").replace("\n", " ")
    fields = [name, cert_id, key_id, "1" if found.key_present else "0", problem]
    if cert is not None:
        fields += [repr(cert.not_before.timestamp()), repr(cert.not_after.timestamp()),
                   " ".join(sorted(cert.names)), cert.cert_id]
    return "\t".join(fields)


def _decode(fields: list[str]) -> Found:
    problem = fields[4] or None
    info = None
    if len(fields) == 9:
        info = CertInfo(datetime.fromtimestamp(float(fields[5]), UTC),
                        datetime.fromtimestamp(float(fields[6]), UTC),
                        frozenset(fields[7].split()), cert_id=fields[8])
    return Found(info, problem, fields[3] == "1")


class Index:
    """The on-disk cache of ``read_pair`` results; see the module docstring."""

    def __init__(self, store: Store) -> None:
        self.root = store.root
        self.path = store.root / INDEX_NAME
        self.entries: dict[str, list[str]] = {}
        self.changed = False
        try:
            # lematt's own file: a symlink in its place is not followed (read_file).
            text = (read_file(str(self.path)) or b"").decode()
            head, _, body = text.partition("\n")
            if head == f"lematt-inventory {INDEX_VERSION}":
                for row in body.splitlines():
                    fields = row.split("\t")
                    if len(fields) in (5, 9):
                        self.entries[fields[0]] = fields
            else:
                self.changed = True
        except (StoreError, ValueError):
            self.changed = True  # missing or damaged: rebuilt by this scan
        self._dirs: dict[str, int] = {}

    def _stat(self, sub: str, name: str) -> str | None:
        # stat relative to an open directory: no path walk per file.
        fd = self._dirs.get(sub)
        if fd is None:
            try:
                fd = self._dirs[sub] = os.open(self.root / sub, DIR_FLAGS)
            except FileNotFoundError:
                return None
        try:
            st = os.stat(name, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.root / sub / name}: {exc}") from exc
        return f"{st.st_dev},{st.st_ino},{st.st_size},{st.st_mtime_ns},{st.st_ctime_ns}"

    def lookup(self, key_name: str, cert_name: str) -> Found:
        cert_id, key_id = self._stat("cert", cert_name), self._stat("key", key_name) or "-"
        if cert_id is None:
            return Found(None, "missing", key_present=key_id != "-")
        cached = self.entries.get(cert_name)
        if cached is not None and cached[1] == cert_id and cached[2] == key_id:
            try:
                return _decode(cached)
            except (ValueError, IndexError, OverflowError):
                pass  # a damaged entry: read the files again
        found = read_pair(str(self.root / "key" / key_name), str(self.root / "cert" / cert_name))
        self.entries[cert_name] = _encode(cert_name, cert_id, key_id, found).split("\t")
        self.changed = True
        return found

    def close(self) -> None:
        """Close the directories ``lookup`` opened."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def save(self, keep: set[str]) -> None:
        """Write the index (atomically) if it changed, dropping entries of files no longer
        configured; a failure to write it only costs speed next time."""
        self.close()
        stale = self.entries.keys() - keep
        if not self.changed and not stale:
            return
        for name in stale:
            del self.entries[name]
        body = "\n".join("\t".join(fields) for fields in self.entries.values())
        with contextlib.suppress(OSError):
            write_atomic(self.path, f"lematt-inventory {INDEX_VERSION}\n{body}\n".encode(),
                         PUBLIC_MODE)


def scan(store: Store, lines: tuple[CertLine, ...], key_types: tuple[KeyType, ...],
         names: dict[tuple[int, KeyType], str] | None = None, *, save: bool = True
         ) -> dict[tuple[int, KeyType], Found]:
    """Found state per (line number, key type), through the index; ``names`` (if given)
    receives each one's certificate file name, which the renewal state is keyed by.
    ``save=False`` leaves the index file as it was (``lematt plan`` writes nothing)."""
    index = Index(store)
    found: dict[tuple[int, KeyType], Found] = {}
    keep: set[str] = set()
    try:
        for line in lines:
            for kt in key_types:
                key_name, cert_name = store.layout.pair_names(line, kt)
                keep.add(cert_name)
                found[(line.lineno, kt)] = index.lookup(key_name, cert_name)
                if names is not None:
                    names[(line.lineno, kt)] = cert_name
    finally:
        if save:
            index.save(keep)
        else:
            index.close()
    return found
