"""A job's key: the stored one reused, or a new one; CPU-bound key work in worker processes.

Contract: ``key_for(settings, store, job, workers)`` returns ``(key, pem, new)``: the stored
key and its PEM as stored when it may be reused (not ``alwaysGenerateNewKeys``, not a revoked
pair, present, of the configured type and size; a stored RSA key is validated first), ``new``
False; else a new key and its PEM, ``new`` True. The stored key is the pair's own
(``Store.read_key``: a symlink that is not the pair's is not followed). Nothing is written: a
new key lives in memory until its certificate is stored with it, and a reused one is stored
again with its certificate, byte for byte.

``async with key_workers() as workers: pem = await workers.run(fn, *args)`` runs a
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
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from lematt.config import Settings
from lematt.errors import CryptoError
from lematt.model import Job
from lematt.store.tree import Store

if TYPE_CHECKING:
    from lematt import crypto

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


async def key_for(settings: Settings, store: Store, job: Job, workers: KeyWorkers
                  ) -> tuple[crypto.PrivateKey, bytes, bool]:
    from lematt import crypto

    s = settings
    # A revoked pair (job.new_key) never keeps its key: it may be why it was revoked.
    if not s.always_generate_new_keys and not job.new_key and job.found.key_present:
        pem = store.read_key(job.line, job.key_type)
        if pem is not None:
            with contextlib.suppress(CryptoError):
                key = crypto.load_private_key(pem, validate=False)
                if crypto.key_matches_type(key, job.key_type, s.key_bits_rsa, s.curve) and (
                        job.key_type != "rsa" or await workers.run(
                            crypto.rsa_pem_is_consistent, pem)):
                    # A stored RSA key is checked before it signs (it may come from a
                    # user), but in a worker process: the checks take about 40 ms.
                    return key, pem, False
    if job.key_type == "rsa":
        # RSA generation is CPU-bound (hundreds of ms): keep it off the event loop.
        pem = await workers.run(crypto.generate_private_pem, "rsa", s.key_bits_rsa, s.curve)
    else:
        pem = crypto.generate_private_pem("ec", s.key_bits_rsa, s.curve)
    # Made a moment ago by our own code: the RSA consistency checks (about 40 ms of the
    # event loop per 2048-bit key) would only re-prove what generation guarantees.
    return crypto.load_private_key(pem, validate=False), pem, True

