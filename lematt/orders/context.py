"""What the order phase needs from a run, and what the order tasks of one process share.

Contract: ``OrderEnv`` is made once per run (and once per order process) and never changes;
``OrderTools`` lives while one process orders (one ACME client, one solver, one order-slot
limiter, one group committer, one pool of key workers, at most one forwarder hub) and is
passed down to every line and job; ``record`` receives each job's outcome as it finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lematt.config import Config, Settings
from lematt.model import Outcome
from lematt.report import Reporter
from lematt.store.tree import Store

if TYPE_CHECKING:
    import anyio

    from lematt.acme.client import AcmeClient
    from lematt.acme.order import ChallengeSolver
    from lematt.challenges.remote import ForwarderHub
    from lematt.orders.keys import KeyWorkers
    from lematt.store.committer import GroupCommitter


@dataclass(frozen=True)
class OrderEnv:
    config: Config
    store: Store
    reporter: Reporter
    test: bool
    parallel: int
    processes: int = 1
    # The conf-dir lock's descriptor: order processes inherit it, so the lock outlives the
    # main process while they still store.
    lock_fd: int | None = None

    @property
    def settings(self) -> Settings:
        return self.config.settings

    @property
    def directory_url(self) -> str:
        return self.settings.directory_url(self.test)


@dataclass
class OrderTools:
    client: AcmeClient
    solver: ChallengeSolver
    slots: anyio.CapacityLimiter
    committer: GroupCommitter
    workers: KeyWorkers
    record: Callable[[Outcome], None]
    hub: ForwarderHub | None = None
