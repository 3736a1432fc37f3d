"""Actions: from renewed certificates to each host's ordered steps, and running them.

Contract:
- ``prepare_commands(actions, line)``: the local prepare commands of one certificate, one per
  name and section (``DOMAIN`` replaced by that name), identical commands once.
  ``forwarders(actions, line)``: its structured (SSH forwarder) prepares, once each.
- ``deploy_plan(actions, lines, store, resolve)``: each certificate maps to its sections
  (``Actions.sections_for``); every section runs once for all its certificates. Steps are
  grouped by host - "local" for shell strings, else the resolved address:port of the SSH
  destination, so two aliases of one machine share one queue. On each host every upload
  (per section: uploadCerts, then uploadKeys; sections in order of first appearance) comes
  before any update, and each distinct update runs once, in order of first appearance.
- ``run_host(runners, steps)`` runs one host's steps in order; after a failed upload that host
  gets no updates. Each failure is a value in the returned list.
Placeholder values are shell-quoted, except that the ``*`` of CERTS/KEYS stays outside the
quotes so the shell expands it (the original's glob semantics).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lematt.config import Actions, Section, SshForward, SshRun, SshUpload
from lematt.errors import LemattError
from lematt.execution import CommandResult, UploadFile
from lematt.model import CertLine
from lematt.store.tree import Store

LOCAL = "local"
CERT_MODE, KEY_MODE = 0o644, 0o600


@dataclass(frozen=True)
class Step:
    """One thing to do on one host. ``destination`` None means a local shell command."""

    kind: str  # "uploadCerts" | "uploadKeys" | "update"
    section: str
    host: str
    command: str | None  # None: an SFTP upload, or an SSH session whose key forces the command
    destination: str | None = None
    remote_dir: str | None = None
    files: tuple[UploadFile, ...] = ()

    @property
    def is_upload(self) -> bool:
        return self.kind != "update"

    def describe(self) -> str:
        if self.destination is None:
            return f"`{self.command}`"
        if self.remote_dir is not None:
            return f"{len(self.files)} files to {self.destination}:{self.remote_dir}"
        return f"ssh {self.destination} " + (f"`{self.command}`" if self.command is not None
                                             else "(forced command)")


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def prepare_commands(actions: Actions, line: CertLine) -> list[str]:
    commands: list[str] = []
    for name in line.names:
        for section in actions.sections_for((name,)):
            commands.extend(c.replace("DOMAIN", shlex.quote(name)) for c in section.prepare
                            if isinstance(c, str))
    return _unique(commands)


def forwarders(actions: Actions, line: CertLine) -> list[SshForward]:
    found: list[SshForward] = []
    for section in actions.sections_for(line.names):
        found.extend(p for p in section.prepare if isinstance(p, SshForward) and p not in found)
    return found


def _globs(directory: str, lines: Sequence[CertLine]) -> str:
    names = _unique([n for line in lines for n in line.names])
    return " ".join(shlex.quote(f"{directory}/{n}") + "*" for n in names)


def _words(names: Sequence[str]) -> str:
    return " ".join(shlex.quote(n) for n in _unique(names))


def sections_with_certs(actions: Actions, lines: Sequence[CertLine]
                        ) -> list[tuple[Section, list[CertLine]]]:
    """Each section that applies, with its certificates, in order of first appearance."""
    by_name: dict[str, tuple[Section, list[CertLine]]] = {}
    for line in lines:
        for section in actions.sections_for(line.names):
            by_name.setdefault(section.name, (section, []))[1].append(line)
    # [every] runs after the specific sections, whatever the order of appearance.
    return sorted(by_name.values(), key=lambda item: item[0] is actions.every)


def upload_files(store: Store, lines: Sequence[CertLine], kind: str, mode: int | None
                 ) -> tuple[UploadFile, ...]:
    """The stored files of ``lines`` that CERTS / KEYS stand for: each key type's file and
    the per-name symlinks (kept as symlinks). Files that do not exist are left out."""
    want_keys = kind == "uploadKeys"
    mode = mode if mode is not None else (KEY_MODE if want_keys else CERT_MODE)
    files: dict[str, UploadFile] = {}
    for line in lines:
        for key_type in store.settings.key_types:
            paths = store.layout.paths(line, key_type)
            main = paths.key if want_keys else paths.cert
            if main.is_file():
                files[main.name] = UploadFile(main, main.name, mode)
            for link, target in paths.links:
                if link.parent == main.parent and link.is_symlink():
                    files.setdefault(link.name, UploadFile(link, link.name, mode, target))
    return tuple(files.values())


def deploy_plan(actions: Actions, lines: Sequence[CertLine], store: Store,
                resolve: Callable[[str], str]) -> dict[str, list[Step]]:
    """Steps per host for deploying ``lines``; ``resolve`` maps an SSH destination to its
    host key (resolved address:port)."""
    uploads: dict[str, list[Step]] = {}
    updates: dict[str, list[Step]] = {}
    cert_dir, key_dir = str(store.layout.cert_dir()), str(store.layout.key_dir())
    for section, certs in sections_with_certs(actions, lines):
        for kind, entries, directory, word in (
                ("uploadCerts", section.upload_certs, cert_dir, "CERTS"),
                ("uploadKeys", section.upload_keys, key_dir, "KEYS")):
            for entry in entries:
                if isinstance(entry, SshUpload):
                    host = resolve(entry.ssh)
                    step = Step(kind, section.name, host, None, entry.ssh, entry.to,
                                upload_files(store, certs, kind, entry.mode))
                else:
                    host = LOCAL
                    step = Step(kind, section.name, host,
                                entry.replace(word, _globs(directory, certs)))
                uploads.setdefault(host, []).append(step)
        cn = _words([line.primary for line in certs])
        all_names = _words([n for line in certs for n in line.names])
        for update in section.update:
            if isinstance(update, SshRun):
                host, dest, command = resolve(update.ssh), update.ssh, update.run
            else:
                host, dest, command = LOCAL, None, update
            if command is not None:
                command = command.replace("DOMAINS_CN", cn).replace("DOMAINS_ALL", all_names)
            queue = updates.setdefault(host, [])
            if not any((s.destination, s.command) == (dest, command) for s in queue):
                queue.append(Step("update", section.name, host, command, dest))
    hosts = _unique([*uploads, *updates])
    return {h: uploads.get(h, []) + updates.get(h, []) for h in hosts}


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    result: CommandResult | None  # None: an upload, a skipped step or one that could not start
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def run_host(execute: Callable[[Step], object], steps: Sequence[Step]
                   ) -> list[StepOutcome]:
    """Run one host's steps in order; ``execute(step)`` returns a CommandResult (or None for
    an upload) and raises ``LemattError`` when the step could not run at all."""
    outcomes: list[StepOutcome] = []
    upload_failed = False
    for step in steps:
        if upload_failed and not step.is_upload:
            outcomes.append(StepOutcome(step, None, f"{step.host}: skipped {step.describe()} "
                                                    "because an upload to this host failed"))
            continue
        try:
            result = await execute(step)  # type: ignore[misc]
        except LemattError as exc:
            outcomes.append(StepOutcome(step, None, str(exc)))
        else:
            error = None
            if isinstance(result, CommandResult) and not result.ok:
                error = result.describe_failure()
            outcomes.append(StepOutcome(step, result, error))
        if outcomes[-1].error is not None and step.is_upload:
            upload_failed = True
    return outcomes
