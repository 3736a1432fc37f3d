"""File names of the certificate tree, compatible with the original lematt's layout.

Layout (``<tree>`` is ``<confdir>/prod`` or ``<confdir>/test``; ``.test`` only in the test
tree; ``<key>`` is ``<stem>-key.<tag>[.test].pem`` and ``<cert>`` is
``<stem>-cert-combined.<tag>[.test].pem``, the original lematt's names)::

    <tree>/key/<key>                      -> ../.pairs/<slot>/<key>
    <tree>/cert/<cert>                    -> ../.pairs/<slot>/<cert>
    <tree>/csr/<stem>-csr.<tag>[.test].csr   the CSR last used (PEM)
    <tree>/{key,cert}/<name>-...          per-name symlinks (to <key> / <cert>), SAN lines only
    <tree>/.pairs/<slot>                  -> <slot>+<hex>: the pair's pointer
    <tree>/.pairs/<slot>+<hex>/<key>      one version of the pair: the key (0600) and the
    <tree>/.pairs/<slot>+<hex>/<cert>     certificate (leaf + chain as sent), regular files

``<stem>`` is ``names.file_stem`` of the line; ``<tag>`` is rsaTag or curveTag; ``<slot>`` is
``<stem>.<tag>``. The upstream names ``key/<key>`` and ``cert/<cert>`` (the original lematt's
names, which services are configured with) resolve through the pair's one pointer, so
switching the pointer (one rename) switches key and certificate together
(``lematt.store.pairs``). The files in a version directory carry the upstream names
themselves, so whatever copies the resolved files (rsync of CERTS / KEYS in an action, SFTP
uploads) delivers regular files with the names services expect. A tree written by the
original or an earlier lematt has regular files at the upstream names; they keep working and
are moved into this layout when their pair is next stored.

Contract: pure naming, no I/O: ``Layout(settings, test=...)`` maps (line, key type) to paths;
``KEY_MODE``, ``PUBLIC_MODE``, ``PRIVATE_DIR_MODE`` and ``PUBLIC_DIR_MODE`` are the modes
lematt gives its files and directories (explicit, never the umask's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lematt.config import Settings
from lematt.model import CertLine, KeyType

KEY_MODE = 0o600  # private keys and lematt's private records, from the first byte
PUBLIC_MODE = 0o644  # certificates, CSRs, challenge files
PRIVATE_DIR_MODE = 0o700  # key/, .journal/, .staging/
PUBLIC_DIR_MODE = 0o755  # the tree, cert/, csr/, .pairs/ and its version directories
PAIRS_DIR = ".pairs"
VERSION_MARK = "+"  # <slot>+<hex>: '+' is in no DNS name and no tag, so never in a slot


@dataclass(frozen=True)
class CertPaths:
    key: Path
    csr: Path
    cert: Path
    # (link path, relative target) pairs for the per-name symlinks of a SAN line.
    links: tuple[tuple[Path, str], ...]
    # The pair's name in .pairs/ (its pointer); key and cert are symlinks through it.
    slot: str = ""


class Layout:
    """The names of one tree (prod or test) under a conf dir."""

    def __init__(self, settings: Settings, *, test: bool) -> None:
        self.settings = settings
        self.test = test
        self.root = settings.conf_dir / ("test" if test else "prod")
        self._root_str = str(self.root)
        suffix = ".test" if test else ""
        self._pem_end: dict[str, str] = {kt: f".{settings.tag(kt)}{suffix}.pem"
                                         for kt in ("rsa", "ec")}

    def _file(self, kind: str, stem: str, key_type: KeyType) -> Path:
        suffix = ".test" if self.test else ""
        tag = self.settings.tag(key_type)
        if kind == "csr":
            return self.root / "csr" / f"{stem}-csr.{tag}{suffix}.csr"
        middle = "key" if kind == "key" else "cert-combined"
        return self.root / kind / f"{stem}-{middle}.{tag}{suffix}.pem"

    def paths(self, line: CertLine, key_type: KeyType) -> CertPaths:
        stem = line.file_stem
        key = self._file("key", stem, key_type)
        cert = self._file("cert", stem, key_type)
        links: list[tuple[Path, str]] = []
        if len(line.names) > 1:
            for name in line.names:
                links.append((self._file("key", name, key_type), key.name))
                links.append((self._file("cert", name, key_type), cert.name))
        return CertPaths(key, self._file("csr", stem, key_type), cert, tuple(links),
                         self.slot(line, key_type))

    def slot(self, line: CertLine, key_type: KeyType) -> str:
        """The pair's name in ``.pairs/``: ``<stem>.<tag>``."""
        return f"{line.file_stem}.{self.settings.tag(key_type)}"

    def pair_names(self, line: CertLine, key_type: KeyType) -> tuple[str, str]:
        """(key, certificate) file names in key/ and cert/: the hot path of a no-op run,
        without the Path objects and link names of ``paths``."""
        stem = line.file_stem
        end = self._pem_end[key_type]
        return f"{stem}-key{end}", f"{stem}-cert-combined{end}"

    def pair_files(self, line: CertLine, key_type: KeyType) -> tuple[str, str]:
        """(key, certificate) paths as strings."""
        key, cert = self.pair_names(line, key_type)
        return f"{self._root_str}/key/{key}", f"{self._root_str}/cert/{cert}"

    def cert_dir(self) -> Path:
        return self.root / "cert"

    def key_dir(self) -> Path:
        return self.root / "key"


def main_target(slot: str, name: str) -> str:
    """Where the upstream key or certificate name ``name`` points: the file of that very
    name in the version its pair's pointer names."""
    return f"../{PAIRS_DIR}/{slot}/{name}"
