"""The quiet-run memo: a cron run that would find nothing to do ends before it reads the
config or the tree.

A full run that found nothing due, nothing owed and nothing to ask the CA knows until when
that stays so if nothing but the clock changes (``plan.next_due``,
``orders.renewal_info.next_question``). It writes that moment, with the identity of every
input it read, to ``<tree>/.memo/quiet``. The next ``--cron`` run compares: the same lematt,
the same config path, the moment not reached, and every input unchanged - then it exits 0
at once; anything else, and it runs in full (and writes a new memo if it is quiet again).

Contract:
- ``write_memo(conf, tree, until)`` after a quiet run; ``until`` is capped at
  ``MAX_QUIET_SECONDS`` from now, so a full check runs at least that often. A failure to
  write costs only speed (the next run is a full one).
- ``memo_says_quiet(config_path, test, now)`` is True only when all of the above holds; a
  missing, damaged, foreign, oversized or symlinked memo is False, never an error.

An input's identity is (device, inode, size, mtime ns, ctime ns) as ``stat`` gives it, or
absent. Inputs: the conf dir and each config file; the tree and its directories (key/,
cert/, csr/, .journal/, .pairs/). lematt replaces every file it writes in those directories
by a rename (and the tree's own records - inventory, renewal info, owed deploys - the same
way), which changes the directory's mtime, so any store, deletion or new file is seen.
What is not seen is a file edited in place inside key/ or cert/ (its directory keeps its
mtime): such an edit is noticed by the next full check, at the latest a day later.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import lematt

MEMO_DIR = ".memo"
MEMO_NAME = "quiet"
MEMO_FORMAT = 1
MAX_QUIET_SECONDS = 86400.0  # a full check at least once a day (in-place edits, see above)
_MAX_BYTES = 64 * 1024
_TREE_DIRS = ("key", "cert", "csr", ".journal", ".pairs")
# The planning rules are part of what a memo stands for: a change of lematt's code (an
# upgrade, another checkout) changes this file's identity and ends every memo.
_RULES = Path(lematt.__file__).parent / "plan.py"

Identity = list[int] | None


def _identity(path: str) -> Identity:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def tree_root(conf_dir: Path, test: bool) -> Path:
    return conf_dir / ("test" if test else "prod")


def _memo_path(tree: Path) -> Path:
    return tree / MEMO_DIR / MEMO_NAME


def _inputs(conf_files: Iterable[Path], conf_dir: Path, tree: Path) -> list[str]:
    return [str(conf_dir), *map(str, conf_files), str(tree), str(_RULES),
            *(str(tree / d) for d in _TREE_DIRS)]


def write_memo(config_path: Path, conf_files: Iterable[Path], conf_dir: Path, tree: Path,
               until: float, now: float) -> bool:
    """Record that runs stay quiet until ``until`` while the inputs stay as they are now.
    ``config_path`` is the config file as the loader resolved it. True when written."""
    from lematt.store.atomic import write_atomic
    from lematt.store.books import remove_leftovers
    from lematt.store.layout import KEY_MODE, PRIVATE_DIR_MODE

    until = min(until, now + MAX_QUIET_SECONDS) - 1.0  # a second for rounding, to be sure
    if until <= now:
        return False
    memo_dir = tree / MEMO_DIR
    try:
        # Made before the identities are taken: its creation changes the tree's mtime,
        # the memo's own rename inside it does not.
        os.mkdir(memo_dir, PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    except OSError:
        return False
    if os.path.islink(memo_dir) or not memo_dir.is_dir():
        return False  # not lematt's: never written through
    remove_leftovers(_memo_path(tree))
    inputs = _inputs(conf_files, conf_dir, tree)
    memo = {"format": MEMO_FORMAT, "lematt": lematt.__version__,
            "config": str(config_path), "until": until,
            "inputs": [[path, _identity(path)] for path in inputs]}
    try:
        write_atomic(_memo_path(tree), json.dumps(memo).encode(), KEY_MODE)
    except OSError:
        return False
    return True


def clear_memo(tree: Path) -> None:
    """Forget the memo (a run that found something to do)."""
    with contextlib.suppress(OSError):
        os.unlink(_memo_path(tree))


def memo_says_quiet(config_path: Path, test: bool, now: float) -> bool:
    """Whether the memo of this config's tree says a run now would do nothing."""
    path = Path(os.path.realpath(os.path.expanduser(config_path)))
    tree = tree_root(path.parent, test)
    try:
        fd = os.open(_memo_path(tree), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        data = os.read(fd, _MAX_BYTES + 1)
    except OSError:
        return False
    finally:
        os.close(fd)
    if len(data) > _MAX_BYTES:
        return False
    try:
        memo = json.loads(data)
        if (memo["format"] != MEMO_FORMAT or memo["lematt"] != lematt.__version__
                or memo["config"] != str(path) or not now < float(memo["until"])):
            return False
        inputs = memo["inputs"]
        names = [entry[0] for entry in inputs]
        if str(path) not in names or str(tree) not in names:
            return False
        return all(_identity(str(name)) == identity for name, identity in inputs)
    except (ValueError, KeyError, TypeError, IndexError):
        return False
