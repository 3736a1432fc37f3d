"""The one place ``lematt.monitor`` reads which deploys are still owed.

Contract: ``owed_deploys(config, store)`` returns, per domains line still owing a deploy (its
names), the hosts it is owed to, as the actions name them (``local`` or the SSH destination
as written), in config order. It reads the store's record through ``deploy.owed`` (no lock
needed: the record is replaced atomically); an unreadable record is its ``StoreError``.

Why one function: the store's record of owed deploys changes shape as the store evolves;
status and metrics depend only on this function's result, so adapting to a new record is a
change here alone.
"""

from __future__ import annotations

from lematt.config import Config
from lematt.deploy.owed import owed_deploys as owed_by_line
from lematt.store.tree import Store

ALL_HOSTS = "*"  # a line owing every host its actions name, when no host can be named

Names = tuple[str, ...]


def owed_deploys(config: Config, store: Store) -> dict[Names, tuple[str, ...]]:
    """Line names -> hosts still owed (see the module docstring)."""
    return {debt.line.names: tuple(dict.fromkeys(written for _, written in debt.hosts))
            or (ALL_HOSTS,) for debt in owed_by_line(config, store)}


def owed_by_host(owed: dict[Names, tuple[str, ...]]) -> dict[str, int]:
    """Host -> how many lines it is owed (``ALL_HOSTS`` counted as its own host)."""
    counts: dict[str, int] = {}
    for hosts in owed.values():
        for host in hosts:
            counts[host] = counts.get(host, 0) + 1
    return counts
