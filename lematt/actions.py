"""Actions: from renewed certificates to the ordered steps of each host, and running them.

Contract:
- ``prepare_commands(actions, line)``: the local prepare commands of one certificate, one per
  name and section (``DOMAIN`` replaced by that name), identical commands once.
- ``deploy_steps(actions, renewed, store)``: each renewed certificate maps to its sections
  (``Actions.sections_for``); every section runs once for all its renewed certificates. All
  uploads (per section: uploadCerts, then uploadKeys; sections in order of first appearance)
  come before any update, and an update command that several sections share runs once.
- ``run_steps(runner, steps, timeout)`` runs one host's steps in order; after a failed upload
  that host gets no updates. Each failure is a value in the returned list.
Placeholder values are shell-quoted, except that the ``*`` of CERTS/KEYS stays outside the
quotes so the shell expands it (the original's glob semantics).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from lematt.config import Actions, CertLine, Section
from lematt.execution import CommandResult, Runner
from lematt.store import Store


@dataclass(frozen=True)
class Step:
    kind: str  # "uploadCerts" | "uploadKeys" | "update"
    section: str
    command: str

    @property
    def is_upload(self) -> bool:
        return self.kind != "update"


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def prepare_commands(actions: Actions, line: CertLine) -> list[str]:
    commands: list[str] = []
    for name in line.names:
        for section in actions.sections_for((name,)):
            commands.extend(c.replace("DOMAIN", shlex.quote(name)) for c in section.prepare)
    return _unique(commands)


def _globs(directory: str, lines: Sequence[CertLine]) -> str:
    names = _unique([n for line in lines for n in line.names])
    return " ".join(shlex.quote(f"{directory}/{n}") + "*" for n in names)


def _words(names: Sequence[str]) -> str:
    return " ".join(shlex.quote(n) for n in _unique(names))


def sections_with_certs(actions: Actions, renewed: Sequence[CertLine]
                        ) -> list[tuple[Section, list[CertLine]]]:
    """Each section that applies, with its renewed certificates, in order of first appearance."""
    by_name: dict[str, tuple[Section, list[CertLine]]] = {}
    for line in renewed:
        for section in actions.sections_for(line.names):
            by_name.setdefault(section.name, (section, []))[1].append(line)
    # [every] runs after the specific sections, whatever the order of appearance.
    return sorted(by_name.values(), key=lambda item: item[0] is actions.every)


def deploy_steps(actions: Actions, renewed: Sequence[CertLine], store: Store) -> list[Step]:
    uploads: list[Step] = []
    updates: list[Step] = []
    cert_dir, key_dir = str(store.cert_dir()), str(store.key_dir())
    for section, lines in sections_with_certs(actions, renewed):
        certs = _globs(cert_dir, lines)
        keys = _globs(key_dir, lines)
        uploads += [Step("uploadCerts", section.name, c.replace("CERTS", certs))
                    for c in section.upload_certs]
        uploads += [Step("uploadKeys", section.name, c.replace("KEYS", keys))
                    for c in section.upload_keys]
        cn = _words([line.primary for line in lines])
        every_name = _words([n for line in lines for n in line.names])
        updates += [Step("update", section.name,
                         c.replace("DOMAINS_CN", cn).replace("DOMAINS_ALL", every_name))
                    for c in section.update]
    seen: set[str] = set()
    distinct_updates = []
    for step in updates:
        if step.command not in seen:
            seen.add(step.command)
            distinct_updates.append(step)
    return uploads + distinct_updates


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    result: CommandResult | None  # None: skipped because an upload on this host failed
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok and self.error is None


async def run_steps(runner: Runner, steps: Sequence[Step], *, timeout: float
                    ) -> list[StepOutcome]:
    outcomes: list[StepOutcome] = []
    upload_failed = False
    for step in steps:
        if upload_failed and not step.is_upload:
            outcomes.append(StepOutcome(step, None, f"{runner.name}: skipped `{step.command}` "
                                                    "because an upload to this host failed"))
            continue
        result = await runner.run(step.command, timeout=timeout)
        outcomes.append(StepOutcome(step, result,
                                    None if result.ok else result.describe_failure()))
        if not result.ok and step.is_upload:
            upload_failed = True
    return outcomes
