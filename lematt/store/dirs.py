"""The tree's directories, opened once per run: never through a symlink, made with explicit modes.

Contract: ``open_tree(root, allow_group=...)`` returns ``TreeDirs``: an open descriptor of the
tree and of each directory lematt keeps in it (``key/`` 0700, ``cert/`` and ``csr/`` 0755,
``.pairs/`` 0755, ``.staging/`` and ``.journal/`` 0700), creating what is missing with exactly
that mode whatever the umask. Every later operation on the tree is relative to these
descriptors (``*at`` calls), so a directory swapped for a symlink after this check is never
followed. An existing directory keeps the mode an operator gave it (``key/`` with group
access for Debian's ssl-cert group, say) unless other users can reach it: then only their
bits are taken away (group access stays), and ``TreeDirs.changes`` says so, once. Each
directory is checked as it is opened (``safe.check_stat`` on its ``fstat``: owned by this
user or root, not writable by others; group-writable only with ``allow_group``); ``key/``
must moreover be this user's own, not root's (a ``StoreError``: keys must be theirs alone). The tree
itself may be a symlink (an operator's choice of disk); what it points to is checked.
Errors: ``StoreError`` (a symlink or non-directory where a directory belongs, an I/O error)
or ``ConfigError`` (unsafe ownership or mode), each naming the path.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lematt.errors import StoreError
from lematt.store.layout import PAIRS_DIR, PRIVATE_DIR_MODE, PUBLIC_DIR_MODE
from lematt.store.safe import check_stat, ensure_dir, open_dir

STAGING = ".staging"
JOURNAL = ".journal"
SUBDIRS = (("key", PRIVATE_DIR_MODE), ("cert", PUBLIC_DIR_MODE), ("csr", PUBLIC_DIR_MODE),
           (PAIRS_DIR, PUBLIC_DIR_MODE), (STAGING, PRIVATE_DIR_MODE),
           (JOURNAL, PRIVATE_DIR_MODE))


@dataclass
class TreeDirs:
    root: Path
    fds: dict[str, int] = field(default_factory=dict)  # "" is the tree itself
    changes: list[str] = field(default_factory=list)  # what was repaired, for the user

    def fd(self, name: str) -> int:
        return self.fds[name]

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def _what(name: str) -> str:
    return "certificate tree" if not name else f"tree directory {name}/"


def open_tree(root: Path, *, allow_group: bool) -> TreeDirs:
    dirs = TreeDirs(root)
    try:
        created = False
        try:
            os.mkdir(root, PUBLIC_DIR_MODE)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create the certificate tree {root}: "
                             f"{exc.strerror or exc}") from exc
        try:
            # The tree itself may be an operator's symlink to another disk: followed.
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot open the certificate tree {root}: "
                             f"{exc.strerror or exc}") from exc
        dirs.fds[""] = fd
        if created:
            os.fchmod(fd, PUBLIC_DIR_MODE)
        check_stat(os.fstat(fd), root, allow_group=allow_group, what=_what(""))
        # Every existing directory is checked before anything is created.
        for name, mode in SUBDIRS:
            with contextlib.suppress(FileNotFoundError):
                sub = dirs.fds[name] = open_dir(name, fd, str(root / name), missing_ok=False)
                st = os.fstat(sub)
                check_stat(st, root / name, allow_group=allow_group, what=_what(name))
                if name == "key" and st.st_uid != os.geteuid():
                    # Root's (which check_stat lets pass) but lematt runs as another user.
                    raise StoreError(
                        f"{root / name} belongs to user id {st.st_uid}, not to the user "
                        "running lematt; chown it to that user (keys must be theirs alone)")
                current = stat.S_IMODE(st.st_mode)
                if mode == PRIVATE_DIR_MODE and current & 0o007:
                    # Open to other users: not an operator's group setup but a leak.
                    os.fchmod(sub, current & ~0o007)
                    dirs.changes.append(
                        f"{root / name}: removed other users' access (mode {current:04o} -> "
                        f"{current & ~0o007:04o}); group access, if any, is kept")
        for name, mode in SUBDIRS:
            if name not in dirs.fds:
                dirs.fds[name], _ = ensure_dir(name, fd, mode, str(root / name))
    except BaseException:
        dirs.close()
        raise
    return dirs
