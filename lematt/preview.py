"""``lematt plan``: what a run would do now, without doing any of it.

Contract: ``await preview(config, store, now, only=..., force=..., no_deploy=...)`` returns a
``Preview``: the certificates that are due and why (``lematt.survey``, the same steps a run
takes up to its jobs list), the prepare commands and forwarders their orders would start
(``Actions.prepares_for`` / ``forwarders_for``), and each host's deploy steps in the order a
run runs them (``Deployer.plan``: the lines that would be renewed, plus what earlier runs
still owe, read through ``owed_deploys``). It contacts no CA and no host, takes no lock and
writes nothing: the tree, the inventory index and the kept renewal state stay byte for byte
as they were. Renewal windows are judged as kept by the last run (a run may first refresh
stale ones from the CA, which can move a certificate in or out of its window).

``lines(preview)`` is its text (one sentence per line), ``to_json(preview)`` its JSON form
(``lematt plan --json``, README "lematt plan").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lematt.config import Config, SshForward
from lematt.deploy.deployer import Deployer
from lematt.deploy.owed import owed_deploys as owed_lines
from lematt.deploy.plan import Step
from lematt.model import CertLine, Job
from lematt.report import Reporter
from lematt.store.journal import Journal
from lematt.store.tree import Store
from lematt.survey import FORCED, survey

Pending = dict[str, list[tuple[str, ...]]]  # host -> names of the lines it is owed


@dataclass
class Preview:
    mode: str
    tree: Path
    now: datetime
    jobs: list[Job]
    certificates: int  # how many certificates were considered (selected lines x key types)
    prepares: list[tuple[CertLine, tuple[str, ...]]] = field(default_factory=list)
    forwarders: list[tuple[SshForward, list[CertLine]]] = field(default_factory=list)
    deploy: dict[str, list[Step]] = field(default_factory=dict)
    owed: Pending = field(default_factory=dict)
    deploy_now: bool = True
    interrupted_store: bool = False
    warnings: list[str] = field(default_factory=list)


def owed_deploys(config: Config, store: Store) -> Pending:
    """Host -> the lines (by names) that earlier runs still owe it (``deploy.owed``: a line
    stored but not yet deployed owes every host its actions name). The one place the
    preview reads owed deploys, so that a new form of that record changes only this."""
    by_host: Pending = {}
    for owed in owed_lines(config, store):
        for host, _ in owed.hosts:
            by_host.setdefault(host, []).append(owed.line.names)
    return by_host


def _interrupted(store: Store) -> bool:
    """Whether a store an earlier run began is waiting to be finished (``Store.recover``
    finishes it at the start of the next run)."""
    with contextlib.suppress(OSError):
        if any(store.journal_dir.glob("*.json")):
            return True
        return any(Journal(p).read() is not None for p in store.journal_dir.glob("pending*"))
    return False


async def preview(config: Config, store: Store, now: datetime, *, only: tuple[str, ...] = (),
                  force: bool = False, no_deploy: bool = False) -> Preview:
    due = await survey(config, store, now, only=only, force=force, write=False)
    actions = config.actions
    lines: dict[int, CertLine] = {}
    for job in due.jobs:
        lines.setdefault(job.line.lineno, job.line)
    result = Preview("test" if store.test else "prod", store.root, now, due.jobs,
                     len(due.lines) * len(config.settings.key_types),
                     deploy_now=not no_deploy, interrupted_store=_interrupted(store),
                     warnings=due.warnings)
    for line in lines.values():
        result.prepares += [(line, argv) for argv in actions.prepares_for(line)]
        for fwd in actions.forwarders_for(line):
            for known, users in result.forwarders:
                if known == fwd:
                    users.append(line)
                    break
            else:
                result.forwarders.append((fwd, [line]))
    result.owed = owed_deploys(config, store)
    # The reporter is never used by planning; the deployer only wants one.
    deployer = Deployer(config, store, Reporter(cron=True), None,
                        {} if no_deploy else store.pending.load())
    result.deploy, _ = deployer.plan(list(lines.values()))
    return result


def _describe(step: Step) -> str:
    if step.destination is not None and step.remote_dir is not None:
        what = "keys" if step.kind == "uploadKeys" else "certificates"
        return f"sftp the {what} to {step.destination}:{step.remote_dir}"
    return step.describe()


def lines(p: Preview) -> list[str]:
    """The preview as text, one sentence per line."""
    out = [f"plan for the {p.mode} tree {p.tree} at {p.now:%Y-%m-%d %H:%M:%S} UTC "
           "(nothing contacted, nothing written)"]
    if p.interrupted_store:
        out.append("a run first completes a store an earlier run was interrupted in")
    for job in p.jobs:
        out.append(f"due: {job.label}: {job.reason}")
    current = p.certificates - len(p.jobs)
    out.append(f"current: {current} of {p.certificates} certificate(s)")
    for line, argv in p.prepares:
        out.append(f"prepare for {line.primary}: {' '.join(argv)}")
    for fwd, users in p.forwarders:
        out.append(f"{fwd}, for {', '.join(line.primary for line in users)}")
    steps = 0
    for host, host_steps in p.deploy.items():
        owed = p.owed.get(host, [])
        note = f"; owed from an earlier run: {', '.join(n[0] for n in owed)}" if owed else ""
        verb = "deploy to" if p.deploy_now else "owed to"
        out.append(f"{verb} {host}: {len(host_steps)} step(s){note}")
        out += [f"  {i}. [{s.section}] {s.kind}: {_describe(s)}"
                for i, s in enumerate(host_steps, 1)]
        steps += len(host_steps)
    if p.deploy_now:
        out.append(f"a run now orders {len(p.jobs)} certificate(s) and runs {steps} deploy "
                   f"step(s) on {len(p.deploy)} host(s)")
    else:
        hosts = sorted(set(p.deploy) | set(p.owed))
        out.append(f"a run now orders {len(p.jobs)} certificate(s) and deploys nothing "
                   f"(--no-deploy); {len(hosts)} host(s) stay owed their deploys")
    return out


def to_json(p: Preview) -> dict[str, Any]:
    return {
        "mode": p.mode,
        "tree": str(p.tree),
        "now": p.now.isoformat(),
        "interrupted_store": p.interrupted_store,
        "certificates": p.certificates,
        "due": [{"lineno": j.line.lineno, "names": list(j.line.names), "key_type": j.key_type,
                 "reason": j.reason, "forced": j.reason == FORCED} for j in p.jobs],
        "prepare": [{"lineno": line.lineno, "name": line.primary, "argv": list(argv)}
                    for line, argv in p.prepares],
        "forwarders": [{"ssh": f.ssh, "forward": f.forward, "listen": f.listen,
                        "names": [line.primary for line in users]}
                       for f, users in p.forwarders],
        "deploy_now": p.deploy_now,
        "deploy": {host: [{"section": s.section, "kind": s.kind, "what": _describe(s),
                           "ssh": s.destination} for s in steps]
                   for host, steps in p.deploy.items()},
        "owed": {host: [list(names) for names in owed] for host, owed in p.owed.items()},
        "warnings": list(p.warnings),
    }
