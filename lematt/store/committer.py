"""Group commit: the pairs of concurrent orders are stored in batches.

Contract: inside ``async with group_commits(store) as committer``,
``await committer.commit(pair)`` returns the pair's ``CertPaths`` or raises its
``StoreError``, with the same guarantee as ``Store.commit``. Pairs that finish while a batch
is being written wait and go together into the next one (``Store.commit_many``: one journal
and one fsync per directory per batch), so a burst of finished orders costs a few fsyncs
instead of a few per pair, and a single order is stored at once, without waiting for company.

Leaving the context stores what is queued. A caller cancelled while it waits does not undo
its commit: the pair still goes live (or stays queued only if the whole run is cancelled, and
then nothing of it went live). Batches are written in a worker thread, so the event loop keeps
serving the CA and the challenge server while the disk syncs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio

from lematt.errors import StoreError
from lematt.store.layout import CertPaths
from lematt.store.tree import NewPair, Store


@dataclass
class _Waiter:
    pair: NewPair
    done: anyio.Event = field(default_factory=anyio.Event)
    result: CertPaths | StoreError | None = None


class GroupCommitter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: list[_Waiter] = []
        self._wake = anyio.Event()
        self._closing = False
        self.batches = 0  # how many batches were written (the tests read it)

    async def commit(self, pair: NewPair) -> CertPaths:
        if self._closing:
            raise StoreError("internal error: commit after the run's orders ended")
        waiter = _Waiter(pair)
        self._queue.append(waiter)
        self._wake.set()
        await waiter.done.wait()
        assert waiter.result is not None
        if isinstance(waiter.result, StoreError):
            raise waiter.result
        return waiter.result

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            batch, self._queue = self._queue, []
            if batch:
                await self._write(batch)
            if self._closing and not self._queue:
                return

    async def _write(self, batch: list[_Waiter]) -> None:
        pairs = [w.pair for w in batch]
        try:
            # The thread finishes even if the run is cancelled meanwhile (anyio waits for
            # it): a batch is never left half-renamed by lematt itself.
            results = await anyio.to_thread.run_sync(self._store.commit_many, pairs)
        except Exception as exc:  # a bug must fail these pairs, not the run
            error = StoreError(f"internal error while storing: {exc!r}")
            results = [error] * len(batch)
        self.batches += 1
        for waiter, result in zip(batch, results, strict=True):
            waiter.result = result
            waiter.done.set()

    def _close(self) -> None:
        self._closing = True
        self._wake.set()


@contextlib.asynccontextmanager
async def group_commits(store: Store) -> AsyncIterator[GroupCommitter]:
    committer = GroupCommitter(store)
    async with anyio.create_task_group() as tg:
        tg.start_soon(committer._serve)
        try:
            yield committer
        finally:
            committer._close()
