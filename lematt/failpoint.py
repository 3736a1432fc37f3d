"""Test-only crash points: SIGKILL this process at a named step.

TEST ONLY. Never set ``LEMATT_FAILPOINT`` in production: it exists so that the fault suite
(``tests/e2e/faults/``) can kill lematt at an exact step of the store and deploy protocols
and prove that every state a crash can leave is one the next run completes.

Contract: ``LEMATT_FAILPOINT`` is read here, once, at import, and nowhere else. Its value is
``NAME`` or ``NAME:N``; ``hit(NAME)`` then sends SIGKILL to this process at the N-th call
with that name (default the first). Unset (the normal case), ``hit`` is one dict lookup and
nothing else. SIGKILL, not an exception or ``os._exit``: nothing runs after it (no finally,
no atexit, no buffered write), exactly as when the kernel or an operator kills the process.

The names (each documented where it is hit):
``store.staged``      a batch's files and version directories are in ``.staging``, fsynced;
                      no journal yet
``store.journaled``   the journal names the batch; nothing renamed yet
``store.rename``      after each rename into the tree (``store.rename:2`` = after the second)
``store.migrated``    old pairs of the batch moved into the versioned layout, before the switch
``store.switched``    after each pair's switch to its new version (``:N`` as for rename)
``store.owed``        the batch's owed deploys are written down; the journal not yet cleared
``run.deploy``        every order of the run is stored; no deploy step has run
``sftp.staged``       every file for one SSH destination is staged there; nothing renamed
``sftp.pair``         after each pair's files (key, certificate, links) are renamed on the
                      host (``:N``)
"""

from __future__ import annotations

import os
import signal

ENV = "LEMATT_FAILPOINT"


def _parse(value: str) -> tuple[str, int] | None:
    name, _, count = value.strip().partition(":")
    if not name:
        return None
    try:
        return name, max(1, int(count)) if count else 1
    except ValueError:
        return None


_armed = _parse(os.environ.get(ENV, ""))
_seen: dict[str, int] = {}


def hit(name: str) -> None:
    """Die here (SIGKILL) if the test armed this step; otherwise do nothing."""
    if _armed is None or _armed[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)
