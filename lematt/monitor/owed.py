"""The one place ``lematt.monitor`` reads which deploys are still owed.

Contract: ``owed_deploys(store)`` returns, per domains line (its names, as the store records
them), the hosts that line's renewed certificate still has to reach, sorted; ``ALL_HOSTS``
in that tuple means "every host its actions deploy to" (a store that records a new pair's
debt before the hosts are known). A file the store cannot read is its ``StoreError``.

Why one function: the store's record of owed deploys (``lematt.store.pending``) changes shape
as the store evolves; status and metrics depend only on this function's result, so adapting
to a new record is a change here alone.
"""

from __future__ import annotations

from lematt.store.tree import Store

ALL_HOSTS = "*"  # the line owes every host its actions name

Names = tuple[str, ...]


def owed_deploys(store: Store) -> dict[Names, tuple[str, ...]]:
    """Line names -> hosts still owed (see the module docstring). Reads
    ``store.pending`` once; raises its ``StoreError`` for an unreadable record."""
    by_line: dict[Names, set[str]] = {}
    for host, lines in store.pending.load().items():
        for names in lines:
            by_line.setdefault(tuple(names), set()).add(host)
    return {names: tuple(sorted(hosts)) for names, hosts in by_line.items()}


def owed_by_host(owed: dict[Names, tuple[str, ...]]) -> dict[str, int]:
    """Host -> how many lines it is owed (``ALL_HOSTS`` counted as its own host)."""
    counts: dict[str, int] = {}
    for hosts in owed.values():
        for host in hosts:
            counts[host] = counts.get(host, 0) + 1
    return counts
