"""The deploy plan: from renewed certificates to each host's ordered steps. Pure: no I/O.

Contract:
- ``deploy_plan(actions, lines, layout, resolve, files_for)``: each certificate maps to its sections
  (``Actions.sections_for``); every section runs once for all its certificates. Steps are
  grouped by host - "local" for shell strings, else the resolved address:port of the SSH
  destination, so two aliases of one machine share one queue. On each host every upload
  (per section: uploadCerts, then uploadKeys; sections in order of first appearance) comes
  before any update, and each distinct update runs once, in order of first appearance.
  ``files_for(lines, kind, mode)`` lists the files an SFTP upload carries (``deploy.files``).
Placeholder values are shell-quoted, except that the ``*`` of CERTS/KEYS stays outside the
quotes so the shell expands it (the original's glob semantics).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lematt.config import Actions, Section, SshRun, SshUpload
from lematt.execution import UploadFile
from lematt.model import CertLine
from lematt.store.layout import Layout

LOCAL = "local"


@dataclass(frozen=True)
class Step:
    """One thing to do on one host. ``destination`` None means a local shell command."""

    kind: str  # "uploadCerts" | "uploadKeys" | "update" | "verify" (made by the deployer)
    section: str
    host: str
    command: str | None  # None: an SFTP upload, or an SSH session whose key forces the command
    destination: str | None = None
    remote_dir: str | None = None
    files: tuple[UploadFile, ...] = ()

    @property
    def is_upload(self) -> bool:
        return self.kind in ("uploadCerts", "uploadKeys")

    def describe(self) -> str:
        if self.kind == "verify":
            return self.command or ""
        if self.destination is None:
            return f"`{self.command}`"
        if self.remote_dir is not None:
            return f"{len(self.files)} files to {self.destination}:{self.remote_dir}"
        return f"ssh {self.destination} " + (f"`{self.command}`" if self.command is not None
                                             else "(forced command)")


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


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


FilesFor = Callable[[Sequence[CertLine], str, "int | None"], tuple[UploadFile, ...]]


def deploy_plan(actions: Actions, lines: Sequence[CertLine], layout: Layout,
                resolve: Callable[[str], str], files_for: FilesFor) -> dict[str, list[Step]]:
    """Steps per host for deploying ``lines``; ``resolve`` maps an SSH destination to its
    host key (resolved address:port)."""
    uploads: dict[str, list[Step]] = {}
    updates: dict[str, list[Step]] = {}
    cert_dir, key_dir = str(layout.cert_dir()), str(layout.key_dir())
    for section, certs in sections_with_certs(actions, lines):
        for kind, entries, directory, word in (
                ("uploadCerts", section.upload_certs, cert_dir, "CERTS"),
                ("uploadKeys", section.upload_keys, key_dir, "KEYS")):
            for entry in entries:
                if isinstance(entry, SshUpload):
                    host = resolve(entry.ssh)
                    step = Step(kind, section.name, host, None, entry.ssh, entry.to,
                                files_for(certs, kind, entry.mode))
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


