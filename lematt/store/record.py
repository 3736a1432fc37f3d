"""A commit's journal record: the only paths it may name, and carrying it out (roll-forward).

Contract: ``parse(record, source)`` turns a journal record (this lematt's, version 2, or an
earlier lematt's: ``.journal/pending`` without a version, legacy ``.journal/*.json``) into
``Steps``, or raises ``StoreError`` naming ``source`` if any path in it is not one lematt
writes: a tree-relative ``<dir>/<name>`` with ``<dir>`` one of lematt's directories, ``<name>``
one component (no ``/``, no ``..``, no NUL, never absolute), of the shape that step writes
(a version ``<slot>+<hex>`` in ``.pairs``, an upstream name in ``key/``, ...). So a forged
or damaged journal can rename, link or remove nothing outside the tree, and nothing in it
that lematt does not own.

``apply(dirs, steps)`` carries the steps out in order, each idempotent (a roll-forward after
a crash at any point redoes what is left), through the tree's directory descriptors (no path
walk, no symlink followed; the per-name symlinks lematt made are replaced, never followed),
with an fsync of every directory a phase changed before the next phase starts:

1. ``renames``: staged files and version directories into the tree;
2. ``migrate``: a pair whose upstream names are still the old layout's files (or not both
   its own links) gets a version holding exactly those files, and its pointer to it, so
   that turning the names into links changes nothing a reader sees;
3. ``mains``: the upstream key and certificate names become links through the pointer;
4. ``switch``: each pair's pointer to its new version - one rename, key and certificate
   change together;
5. ``links``: the per-name symlinks of SAN lines (never replacing a regular file or
   another line's upstream name);
6. ``remove``: the versions no pointer names any more.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lematt import failpoint
from lematt.errors import StoreError
from lematt.store.atomic import TEMP_MARK
from lematt.store.dirs import STAGING, TreeDirs
from lematt.store.layout import PAIRS_DIR, VERSION_MARK
from lematt.store.safe import remove_tree

VERSION = 2
_NAME = r"[^/\x00]{1,255}"
_PLAIN = r"(?!\.)[^/\x00]{1,255}"  # an upstream name or a slot: never hidden
_SLOT = r"(?!\.)[^/\x00+]{1,200}"
_VERSION_RE = re.compile(rf"(?P<slot>{_SLOT})\{VERSION_MARK}[0-9a-f]{{8,64}}")
_STAGED_RE = re.compile(rf"{re.escape(STAGING)}/(?P<name>{_PLAIN})")
_LEGACY_TEMP_RE = re.compile(rf"(?P<dir>key|csr|cert)/(?P<name>\.{_NAME}"
                             rf"{re.escape(TEMP_MARK)}[^/\x00]*)")
_UPSTREAM_RE = re.compile(rf"(?P<dir>key|csr|cert)/(?P<name>{_PLAIN})")
_POINTER_RE = re.compile(rf"{re.escape(PAIRS_DIR)}/(?P<slot>{_SLOT})")
_IN_PAIRS_RE = re.compile(rf"{re.escape(PAIRS_DIR)}/(?P<name>{_NAME})")
_MAIN_TARGET_RE = re.compile(
    rf"\.\./{re.escape(PAIRS_DIR)}/(?P<slot>{_SLOT})/(?P<member>{_PLAIN})")

Rel = tuple[str, str]  # (directory key of TreeDirs, entry name)


@dataclass
class Steps:
    renames: list[tuple[Rel, Rel]] = field(default_factory=list)
    migrate: list[tuple[str, str, str]] = field(default_factory=list)  # slot, old, new
    mains: list[tuple[Rel, str]] = field(default_factory=list)
    switch: list[tuple[str, str]] = field(default_factory=list)  # slot, version
    links: list[tuple[Rel, str]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # versions
    owed: list[tuple[str, ...]] = field(default_factory=list)
    certs: list[str] = field(default_factory=list)

    def extend(self, other: Steps) -> None:
        for name in ("renames", "migrate", "mains", "switch", "links", "remove", "owed",
                     "certs"):
            getattr(self, name).extend(getattr(other, name))

    def to_json(self) -> dict[str, Any]:
        """The journal record (``parse`` reads it back)."""
        def rel(where: Rel) -> str:
            return f"{where[0]}/{where[1]}"

        return {
            "version": VERSION,
            "renames": [[rel(src), rel(dst)] for src, dst in self.renames],
            "migrate": [[f"{PAIRS_DIR}/{slot}", old, new] for slot, old, new in self.migrate],
            "mains": [[rel(where), target] for where, target in self.mains],
            "switch": [[f"{PAIRS_DIR}/{slot}", version] for slot, version in self.switch],
            "links": [[rel(where), target] for where, target in self.links],
            "remove": [f"{PAIRS_DIR}/{version}" for version in self.remove],
            "owed": [list(names) for names in self.owed],
            "certs": self.certs,
        }


def version_slot(name: str) -> str | None:
    """The slot of a version directory name ``<slot>+<hex>``; None for any other name."""
    found = _VERSION_RE.fullmatch(name)
    return found["slot"] if found is not None else None


def _bad(source: str, what: str, value: object) -> StoreError:
    return StoreError(f"journal {source}: refusing {what} {value!r}: not a path lematt writes "
                      "in its tree; move the journal away and run lematt again")


def _pairs_of(raw: Any, source: str, key: str) -> Iterable[list[Any]]:
    items = raw.get(key, [])
    if not isinstance(items, list):
        raise _bad(source, key, items)
    for item in items:
        if not isinstance(item, list) or not all(isinstance(x, str) for x in item):
            raise _bad(source, key, item)
        yield item


def _match(pattern: re.Pattern[str], value: str, source: str, what: str) -> re.Match[str]:
    found = pattern.fullmatch(value)
    if found is None or (pattern is not _MAIN_TARGET_RE and "/.." in f"/{value}"):
        raise _bad(source, what, value)
    return found


def _version(value: str, source: str, slot: str | None = None) -> str:
    found = _match(_VERSION_RE, value, source, "version")
    if slot is not None and found["slot"] != slot:
        raise _bad(source, "version", value)
    return value


def _in_pairs(value: str, source: str) -> str:
    return _version(_match(_IN_PAIRS_RE, value, source, "path")["name"], source)


def _link_path(value: str, source: str) -> Rel:
    found = _match(_UPSTREAM_RE, value, source, "link")
    if found["dir"] == "csr":
        raise _bad(source, "link", value)
    return found["dir"], found["name"]


def parse(raw: Any, source: str) -> Steps:
    if not isinstance(raw, dict):
        raise _bad(source, "record", type(raw).__name__)
    steps = Steps()
    legacy = raw.get("version") != VERSION
    for item in _pairs_of(raw, source, "renames"):
        if len(item) != 2:
            raise _bad(source, "rename", item)
        src_text, dst_text = item
        staged = _STAGED_RE.fullmatch(src_text)
        if staged is not None:
            src: Rel = (STAGING, staged["name"])
        elif legacy:
            temp = _match(_LEGACY_TEMP_RE, src_text, source, "rename source")
            src = (temp["dir"], temp["name"])
        else:
            raise _bad(source, "rename source", src_text)
        upstream = _UPSTREAM_RE.fullmatch(dst_text)
        if upstream is not None and (legacy or upstream["dir"] == "csr"):
            dst: Rel = (upstream["dir"], upstream["name"])
        elif not legacy and dst_text.startswith(f"{PAIRS_DIR}/"):
            version = _in_pairs(dst_text, source)
            if src != (STAGING, version):
                raise _bad(source, "rename", item)
            dst = (PAIRS_DIR, version)
        else:
            raise _bad(source, "rename target", dst_text)
        steps.renames.append((src, dst))
    for item in _pairs_of(raw, source, "links"):
        if len(item) != 2 or not re.fullmatch(_PLAIN, item[1]):
            raise _bad(source, "link", item)
        steps.links.append((_link_path(item[0], source), item[1]))
    if not legacy:
        for item in _pairs_of(raw, source, "migrate"):
            if len(item) != 3:
                raise _bad(source, "migrate", item)
            slot = _match(_POINTER_RE, item[0], source, "pointer")["slot"]
            steps.migrate.append((slot, _version(item[1], source, slot),
                                  _version(item[2], source, slot)))
        for item in _pairs_of(raw, source, "switch"):
            if len(item) != 2:
                raise _bad(source, "switch", item)
            slot = _match(_POINTER_RE, item[0], source, "pointer")["slot"]
            steps.switch.append((slot, _version(item[1], source, slot)))
        for item in _pairs_of(raw, source, "mains"):
            if len(item) != 2:
                raise _bad(source, "main link", item)
            where = _link_path(item[0], source)
            target = _match(_MAIN_TARGET_RE, item[1], source, "main link target")
            # An upstream name points at the file of the same name in its pair's version.
            if target["member"] != where[1]:
                raise _bad(source, "main link", item)
            steps.mains.append((where, item[1]))
        removals = raw.get("remove", [])
        if not isinstance(removals, list) or not all(isinstance(x, str) for x in removals):
            raise _bad(source, "remove", removals)
        steps.remove = [_in_pairs(value, source) for value in removals]
        steps.owed = [tuple(names) for names in _pairs_of(raw, source, "owed")]
    certs = raw.get("certs", [])
    steps.certs = [str(c) for c in certs] if isinstance(certs, list) else []
    return steps


# -- carrying the steps out ----------------------------------------------------------------------

def _readlink(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError:  # EINVAL: not a symlink
        return None


def set_link(dir_fd: int, name: str, target: str) -> bool:
    """Make ``name`` a symlink to ``target`` with one rename (whatever was there - a file,
    another link - is replaced, never followed); True if it changed."""
    if _readlink(name, dir_fd) == target:
        return False
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
            raise IsADirectoryError(21, "a directory where lematt keeps a file", name)
    temp = f".{name[:200]}{TEMP_MARK}{secrets.token_hex(4)}"
    os.symlink(target, temp, dir_fd=dir_fd)
    try:
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    return True


def _name_link(dir_fd: int, name: str, target: str) -> bool:
    """A per-name symlink: created or re-pointed, but never over a regular file (a name that
    is also a single-name line) nor over another line's upstream link (a target with '/')."""
    try:
        current = os.readlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.symlink(target, name, dir_fd=dir_fd)
            return True
        return False
    except OSError:
        return False  # not a symlink: a real file stays
    if current == target or "/" in current:
        return False
    return set_link(dir_fd, name, target)


def _sync(dirs: TreeDirs, names: Iterable[str]) -> None:
    for name in sorted(set(names)):
        os.fsync(dirs.fd(name))


def apply(dirs: TreeDirs, steps: Steps, on_done: Callable[[], None] | None = None) -> None:
    """Carry ``steps`` out (see the module docstring); ``on_done`` runs after the last
    phase is durable (the caller records owed deploys there). Raises ``OSError``."""
    pairs = dirs.fd(PAIRS_DIR)
    touched: set[str] = set()
    for (src_dir, src), (dst_dir, dst) in steps.renames:
        # A missing source was renamed before a crash; its directory is fsynced below still.
        with contextlib.suppress(FileNotFoundError):
            os.replace(src, dst, src_dir_fd=dirs.fd(src_dir), dst_dir_fd=dirs.fd(dst_dir))
        touched.update((src_dir, dst_dir))
        failpoint.hit("store.rename")
    _sync(dirs, touched)
    # A version whose directory is not there (its files vanished) is never pointed at: that
    # pair keeps its old files and is ordered again.
    present = {v for _, v in steps.switch if _is_dir(v, pairs)}
    touched = set()
    for slot, old, new in steps.migrate:
        if new in present and _readlink(slot, pairs) != new and _is_dir(old, pairs):
            set_link(pairs, slot, old)
            touched.add(PAIRS_DIR)
    _sync(dirs, touched)
    touched = set()
    switching = {slot for slot, version in steps.switch if version in present}
    for (where, name), target in steps.mains:
        if _main_slot(target) in switching and set_link(dirs.fd(where), name, target):
            touched.add(where)
    _sync(dirs, touched)
    if steps.migrate:
        failpoint.hit("store.migrated")
    for slot, version in steps.switch:
        if version in present:
            set_link(pairs, slot, version)
            failpoint.hit("store.switched")
    _sync(dirs, [PAIRS_DIR] if steps.switch else [])
    touched = set()
    for (where, name), target in steps.links:
        if _name_link(dirs.fd(where), name, target):
            touched.add(where)
    _sync(dirs, touched)
    live = {_readlink(slot, pairs) for slot, _ in steps.switch}
    for version in steps.remove:
        if version not in live:
            remove_tree(version, pairs)
    _sync(dirs, [PAIRS_DIR] if steps.remove else [])
    if on_done is not None:
        on_done()


def _main_slot(target: str) -> str | None:
    found = _MAIN_TARGET_RE.fullmatch(target)
    return found["slot"] if found is not None else None


def _is_dir(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return False
