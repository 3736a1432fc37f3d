"""Worker processes for CPU-bound key work (RSA generation and validation), owned by one run.

Contract: ``async with key_workers() as workers: pem = await workers.run(fn, *args)`` runs a
picklable top-level function in a pool of at most ``os.cpu_count()`` processes, started only
when first used, and shut down when the context exits (on every path, shielded; work already
running finishes, queued work is dropped). A cancelled caller stops waiting at once; its job
finishes unseen.

Why not ``anyio.to_process``: its workers are asyncio child processes of the event loop, in
the run's process group, so a Ctrl-C on a terminal reached them too: each died with a
KeyboardInterrupt that travelled back into the run as a traceback. These workers ignore SIGINT
(the run stops them), are spawned (never forked from the threaded event-loop process) and are
reaped by ``multiprocessing``, not by asyncio's child watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import anyio

_T = TypeVar("_T")


def _ignore_interrupts() -> None:
    # The run owns Ctrl-C: it stops the pool itself when it ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class KeyWorkers:
    def __init__(self, processes: int | None = None) -> None:
        self._processes = processes or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._pool is None:
            # Spawned, not forked: forking a process that runs threads (the event loop's
            # helpers, the group commit) can copy a lock some thread holds at that moment.
            self._pool = ProcessPoolExecutor(
                self._processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts)
        # A worker is started inside submit(), here. SIGINT stays blocked while it starts:
        # a blocked signal mask survives exec, so a terminal's Ctrl-C cannot kill the new
        # interpreter before its initializer ignores SIGINT for good.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return await future

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


@contextlib.asynccontextmanager
async def key_workers() -> AsyncIterator[KeyWorkers]:
    workers = KeyWorkers()
    try:
        yield workers
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(workers.shutdown)
