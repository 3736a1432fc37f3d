"""Owed deploys as a reader sees them: per configured line, the hosts a deploy is still owed to.

Contract: ``owed_deploys(config, store, resolve=None)`` reads what is owed
(``store.pending.load()``: ``<tree>/.deploy-pending.json``, replaced atomically, so no lock
is needed to read it) and returns one ``OwedDeploy`` per configured line that still owes a
deploy, in domains-file order. Each lists the hosts it is owed to as ``(host, written)``:
``host`` is the key the deployer queues by (``"local"`` for shell strings, else the SSH
destination resolved to ``[address]:port``, or ``"<dest> (unresolved)"``), ``written`` is how
the actions name it (the SSH destination as written, or ``"local"``). A line that owes every
host (stored, not yet deployed) lists every host its actions name now; a partial debt lists
the hosts still owed that its actions still name. As in the deployer, debts of lines no
longer configured, or to hosts no longer named, are left out (the next run drops them).
``resolve`` replaces the SSH resolution (tests). Raises ``StoreError`` for an unreadable
pending file. Nothing is written. This is what ``lematt status`` shows per line and host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lematt.config import Config, SshRun, SshUpload
from lematt.deploy.plan import LOCAL
from lematt.errors import ConfigError
from lematt.model import CertLine
from lematt.store.tree import Store


@dataclass(frozen=True)
class OwedDeploy:
    line: CertLine
    hosts: tuple[tuple[str, str], ...]  # (host key, destination as written), config order
    stored_not_deployed: bool  # True: owes every host (a new pair no deploy has reached yet)


def _resolver(config: Config) -> Callable[[str], str]:
    from lematt.execution.ssh_config import SshDestination

    known: dict[str, str] = {}

    def resolve(written: str) -> str:
        if written not in known:
            try:
                known[written] = SshDestination.resolve(
                    written, config.settings.ssh_config).host_key()
            except (ValueError, ConfigError):
                known[written] = f"{written} (unresolved)"  # as the deployer names it
        return known[written]

    return resolve


def owed_deploys(config: Config, store: Store,
                 resolve: Callable[[str], str] | None = None) -> list[OwedDeploy]:
    owed = store.pending.load()
    if not owed:
        return []
    resolve = resolve or _resolver(config)
    result: list[OwedDeploy] = []
    for line in config.lines:
        if line.names not in owed:
            continue
        still = owed[line.names]
        hosts: dict[str, str] = {}
        for section in config.actions.sections_for(line.names):
            for entry in (*section.upload_certs, *section.upload_keys, *section.update):
                if isinstance(entry, SshUpload | SshRun):
                    host, written = resolve(entry.ssh), entry.ssh
                else:
                    host, written = LOCAL, LOCAL
                if still is None or host in still:
                    hosts.setdefault(host, written)
        if hosts:
            result.append(OwedDeploy(line, tuple(hosts.items()), still is None))
    return result
