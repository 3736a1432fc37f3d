"""What is due now: the steps a run and ``lematt plan`` share, from config, tree and clock to
the list of jobs.

Contract: ``await survey(config, store, now, only=..., force=..., refresh=..., write=...)``
scans the tree (``store.inventory``, through its index), reads what is kept about each
certificate (``store.renewal``), optionally lets ``refresh`` bring that up to date (the run
asks the CA there; ``lematt plan`` passes none and so contacts nothing), and plans
(``lematt.plan``). ``write=False`` leaves every file as it was (the inventory index is not
saved). The result is a ``Survey``: the jobs, in domains order (RSA before EC), and what the
run needs afterwards (the found state, the file name of each certificate, the renewal book,
the warnings worth showing).

``only`` (names, from ``--only``) restricts planning to the domains lines that carry one of
them; ``select_lines`` refuses a name no line carries (``ConfigError``, exit 2). ``force``
makes every selected certificate due (reason ``FORCED``) even when it is current. The whole
tree is always scanned, so the index keeps its entries for the lines not selected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import anyio

from lematt.config import Config
from lematt.errors import ConfigError
from lematt.model import CertLine, CertState, Found, Job, KeyType
from lematt.plan import plan, timing_warnings
from lematt.store.inventory import scan
from lematt.store.renewal import RenewalBook, index_identity, states_for
from lematt.store.tree import Store

Key = tuple[int, KeyType]
FORCED = "forced (--force)"
# refresh(found, names, book, default, index) -> whether the book changed (then the kept
# states are read again before planning).
Refresh = Callable[[dict[Key, Found], dict[Key, str], RenewalBook, "CertState | None", str],
                   Awaitable[bool]]


@dataclass
class Survey:
    jobs: list[Job]
    found: dict[Key, Found]
    names: dict[Key, str]  # each certificate's file name (the renewal book's key)
    book: RenewalBook
    lines: tuple[CertLine, ...]  # the lines planned (all, or those ``only`` selects)
    warnings: list[str] = field(default_factory=list)
    # What planning judged with (``store.renewal.states_for``): the quiet-run memo needs it.
    states: dict[Key, CertState] = field(default_factory=dict)
    default: CertState | None = None


def _normal(name: str) -> str:
    return name.strip().lower().rstrip(".")


def select_lines(lines: tuple[CertLine, ...], only: Iterable[str]) -> tuple[CertLine, ...]:
    """The lines carrying one of ``only`` (all lines when it is empty). A name that no line
    carries is a ``ConfigError`` naming it."""
    wanted = [_normal(name) for name in only]
    if not wanted:
        return lines
    carried = {name for line in lines for name in line.names}
    unknown = [name for name in dict.fromkeys(wanted) if name not in carried]
    if unknown:
        raise ConfigError(f"--only {' '.join(unknown)}: no domains line carries "
                          f"{'this name' if len(unknown) == 1 else 'these names'}; give a "
                          "name written in the domains file (shorthand expanded)")
    chosen = set(wanted)
    return tuple(line for line in lines if chosen.intersection(line.names))


async def survey(config: Config, store: Store, now: datetime, *, only: Iterable[str] = (),
                 force: bool = False, refresh: Refresh | None = None,
                 write: bool = True) -> Survey:
    settings = config.settings
    lines = select_lines(config.lines, only)
    names: dict[Key, str] = {}
    found = await anyio.to_thread.run_sync(
        lambda: scan(store, config.lines, settings.key_types, names, save=write))
    book = RenewalBook(store.root)
    profiles = {line.profile or "" for line in config.lines}
    index = index_identity(store.root)
    states, default = states_for(book, names, found, now.timestamp(), profiles, index)
    if refresh is not None and await refresh(found, names, book, default, index):
        states, default = states_for(book, names, found, now.timestamp(), profiles, index)
    jobs = plan(settings, lines, found, now, states, default,
                force=FORCED if force else None)
    warnings = [*config.warnings, *timing_warnings(settings, lines, found)]
    return Survey(jobs, found, names, book, lines, warnings, states, default)
