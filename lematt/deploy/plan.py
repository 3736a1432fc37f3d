"""The deploy plan: from renewed certificates to each host's ordered steps. Pure: no I/O.

Contract:
- ``deploy_plan(actions, lines, layout, resolve, files_for)``: each certificate maps to its sections
  (``Actions.sections_for``); every section runs once for all its certificates. Steps are
  grouped by host - "local" for shell strings, else the resolved address:port of the SSH
  destination, so two aliases of one machine share one queue. On each host every upload
  (per section: uploadCerts, then uploadKeys; sections in order of first appearance) comes
  before any update, and each distinct update runs once, in order of first appearance.
  ``files_for(lines, kind, mode)`` lists the files an upload carries (``deploy.files``): an
  SFTP upload's, and what CERTS / KEYS stand for in a shell string.
- ``hosts_for(actions, line, resolve)``: the hosts ``deploy_plan`` would give steps for ``line``.
Placeholder values are shell-quoted. In a shell-string upload, CERTS / KEYS become the
files ``files_for`` lists, as explicit paths (see ``_file_words``).
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


def _file_words(files: Sequence[UploadFile]) -> str:
    """CERTS / KEYS in a shell action: each file, shell-quoted, as its own argument - the
    regular file each pair's upstream name shows now (its basename is that upstream name),
    then each per-name symlink (it points at the upstream name in its own directory, so a
    copy next to the copied file resolves on the other side).

    The original expanded ``<dir>/<name>*`` for every name of every renewed line and let the
    shell glob it. That glob is dropped: the upstream names are now lematt's symlinks into
    ``.pairs`` (the per-pair switch), and ``rsync -a`` copies a symlink as a symlink, so a
    glob over ``key/`` and ``cert/`` would hand remote hosts dangling links. Named
    explicitly, the real files carry the upstream names; what else the glob matched was
    never the line's own (another line's files sharing a prefix, ``mail.example.com*``
    matching ``mail.example.com.au-...``). Kept from the original: one argument per file,
    every configured key type of every renewed line, the per-name links."""
    return " ".join(shlex.quote(str(f.local)) for f in files)


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


def hosts_for(actions: Actions, line: CertLine, resolve: Callable[[str], str]) -> list[str]:
    """The hosts ``deploy_plan`` gives steps for ``line`` (in order of first appearance),
    without listing any file: what an owed deploy of the line is owed to."""
    hosts: list[str] = []
    for section in actions.sections_for(line.names):
        for entry in (*section.upload_certs, *section.upload_keys, *section.update):
            ssh = entry.ssh if isinstance(entry, SshUpload | SshRun) else None
            hosts.append(resolve(ssh) if ssh is not None else LOCAL)
    return _unique(hosts)


FilesFor = Callable[[Sequence[CertLine], str, "int | None"], tuple[UploadFile, ...]]


def deploy_plan(actions: Actions, lines: Sequence[CertLine], layout: Layout,
                resolve: Callable[[str], str], files_for: FilesFor) -> dict[str, list[Step]]:
    """Steps per host for deploying ``lines``; ``resolve`` maps an SSH destination to its
    host key (resolved address:port)."""
    uploads: dict[str, list[Step]] = {}
    updates: dict[str, list[Step]] = {}
    for section, certs in sections_with_certs(actions, lines):
        for kind, entries, word in (("uploadCerts", section.upload_certs, "CERTS"),
                                    ("uploadKeys", section.upload_keys, "KEYS")):
            for entry in entries:
                if isinstance(entry, SshUpload):
                    host = resolve(entry.ssh)
                    step = Step(kind, section.name, host, None, entry.ssh, entry.to,
                                files_for(certs, kind, entry.mode))
                else:
                    host = LOCAL
                    command = entry
                    if word in entry:
                        command = entry.replace(word, _file_words(files_for(certs, kind, None)))
                    step = Step(kind, section.name, host, command)
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


