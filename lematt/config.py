"""Config: lematt.conf, domains and actions.conf -> one frozen ``Config``.

Contract: ``load(path)`` reads lematt.conf at ``path`` and ``domains`` / ``actions.conf`` from the
same directory, validates everything once (cross-references included) and returns frozen
dataclasses. Any problem raises ``ConfigError`` whose text names ``file:line`` and the key and
says what to do. Nothing here touches the network, the certificate tree or sys.exit.

Each file may be INI (upstream's format, read with configparser as upstream did) or YAML with
the same keys. The parsing lives in helper modules: ``config_source`` (files, INI/YAML with
line numbers), ``config_settings`` (lematt.conf), ``config_domains`` (domains),
``config_actions`` (actions); this module holds the data types and the cross-checks.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from lematt.errors import ConfigError
from lematt.names import file_stem

KeyType = Literal["rsa", "ec"]

LE_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LE_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Settings:
    """lematt.conf, validated, with defaults resolved."""

    conf_dir: Path
    account_key: Path
    challenge_drop_dir: Path | None = None
    challenge_listen: tuple[str, int] | None = None
    reauthorize_days: float = 15.0
    generate_new_certs_after_days: float | None = None
    key_bits_rsa: int = 2048
    curve: str = "prime256v1"
    always_generate_new_keys: bool = False
    rsa_tag: str = "rsa2048"
    curve_tag: str = "prime256v1"
    key_types: tuple[KeyType, ...] = ("rsa", "ec")
    directory_prod: str = LE_PRODUCTION
    directory_test: str = LE_STAGING
    ca_bundle: Path | None = None
    contact_email: str | None = None
    # Requests per second per ACME endpoint name ("newOrder", "newNonce", "newAccount",
    # "directory", "*" for every other URL under the CA).
    rate_limits: tuple[tuple[str, float], ...] = ()
    # Remote hosts (SSH): the OpenSSH client config used to resolve destinations, and limits.
    ssh_config: Path | None = None  # None: ~/.ssh/config if it exists
    ssh_connect_timeout: float = 15.0
    ssh_command_timeout: float = 120.0
    parallel_hosts: int = 32
    # Orders in flight and order processes; --parallel / --processes override them.
    parallel: int = 20
    processes: int = 1
    # Every request to the CA has a timeout and every order a deadline: a frozen CA ends the
    # run with one clear error per certificate instead of a hang.
    acme_request_timeout: float = 30.0
    order_timeout: float = 600.0

    def tag(self, key_type: KeyType) -> str:
        return self.rsa_tag if key_type == "rsa" else self.curve_tag

    def directory_url(self, test: bool) -> str:
        return self.directory_test if test else self.directory_prod


@dataclass(frozen=True)
class CertLine:
    """One ``domains`` line: one certificate per key type.

    ``names`` are validated, lowercase, shorthand-expanded, in the line's order with
    duplicates dropped; ``names[0]`` is the CN.
    """

    lineno: int
    names: tuple[str, ...]
    # The line's names as written (shorthand expanded, lowercased) *with* duplicates: the
    # original named files from this list, so ``file_stem`` needs it. Empty = same as names.
    written_names: tuple[str, ...] = ()
    # True when the certificate must carry the TLS Feature "status_request" extension
    # (RFC 7633, "OCSP must-staple"), from the actions section(s) its names map to.
    ocsp_must_staple: bool = False

    @property
    def primary(self) -> str:
        return self.names[0]

    @functools.cached_property
    def file_stem(self) -> str:
        """The stem of this certificate's file names in the upstream tree (see names.file_stem)."""
        return file_stem(self.written_names or self.names)


@dataclass(frozen=True)
class SshUpload:
    """``{"ssh": DEST, "to": DIR, "mode": "0644"}`` in uploadCerts / uploadKeys."""

    ssh: str
    to: str
    mode: int | None = None  # None: 0644 for certificates, 0600 for keys

    def __str__(self) -> str:
        return f"sftp {self.ssh}:{self.to}"


@dataclass(frozen=True)
class SshRun:
    """``{"ssh": DEST, "run": COMMAND}`` in update; without ``run`` the key's forced command
    decides what runs (authorized_keys ``command="..."``)."""

    ssh: str
    run: str | None = None

    def __str__(self) -> str:
        return f"ssh {self.ssh}" + (f" {self.run}" if self.run is not None else "")


@dataclass(frozen=True)
class SshForward:
    """``{"ssh": DEST, "forward": BASEURL}`` in prepare: the http-01 redirector on DEST."""

    ssh: str
    forward: str
    listen: str | None = None
    command: str | None = None

    def __str__(self) -> str:
        return f"forwarder on {self.ssh} -> {self.forward}"


# A plain string is a local shell command, as in the original lematt.
Action = str | SshUpload | SshRun | SshForward


@dataclass(frozen=True)
class Section:
    """One actions.conf section: its actions in file order, each a string or an SSH form."""

    name: str
    domains: frozenset[str] = frozenset()
    prepare: tuple[str | SshForward, ...] = ()
    upload_certs: tuple[str | SshUpload, ...] = ()
    upload_keys: tuple[str | SshUpload, ...] = ()
    update: tuple[str | SshRun, ...] = ()
    ocsp_staple_required: bool = False
    # Line of the section header (INI) or section key (YAML) in the actions file, for
    # messages; not part of equality (the same section is the same wherever it is written).
    lineno: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Actions:
    """actions.conf: ``default`` and ``every`` may be absent; overrides keep file order."""

    default: Section | None = None
    every: Section | None = None
    overrides: tuple[Section, ...] = ()

    def sections_for(self, names: tuple[str, ...]) -> tuple[Section, ...]:
        """The sections a certificate with these names maps to, in file order.

        Every override that names any of the names (else ``[default]``), then ``[every]``.
        """
        wanted = set(names)
        chosen = [s for s in self.overrides if s.domains & wanted]
        if not chosen and self.default is not None:
            chosen.append(self.default)
        if self.every is not None:
            chosen.append(self.every)
        return tuple(chosen)


@dataclass(frozen=True)
class Config:
    """Everything one run needs from the conf dir, validated.

    ``warnings`` are sentences for the user (printed by the CLI, never by this module);
    the paths say which files were read (``actions_path`` is None when there is none).
    """

    settings: Settings
    lines: tuple[CertLine, ...]
    actions: Actions = field(default_factory=Actions)
    warnings: tuple[str, ...] = ()
    config_path: Path | None = None
    domains_path: Path | None = None
    actions_path: Path | None = None

    def ocsp_must_staple(self, line: CertLine) -> bool:
        """Whether the certificate for ``line`` must request OCSP must-staple."""
        return line.ocsp_must_staple


ACTIONS_FILE_NAMES = ("actions.conf", "actions.yaml", "actions.yml")
# Let's Encrypt ended OCSP; from this date every order whose CSR asks for must-staple fails
# (ISRG's timeline, December 2024: https://abetterinternet.net/post/ending-ocsp, also on the
# Let's Encrypt blog as "Ending OCSP Support in 2025").
MUST_STAPLE_REFUSED = (
    "Let's Encrypt refuses orders with the must-staple extension since 2025-05-07"
)
_STORE_SUFFIX = len("-cert-combined.") + len(".test.pem")  # longest upstream file name part
_NAME_MAX = 255  # bytes per file name on common file systems (ext4, xfs, zfs, apfs)


def load(config_path: Path) -> Config:
    """Read lematt.conf at ``config_path`` plus ``domains`` and the actions file beside it.

    The conf dir is the directory of ``config_path`` with symlinks resolved (as upstream).
    The actions file is the first of actions.conf, actions.yaml, actions.yml that exists
    (none: no actions). Raises ``ConfigError`` (file:line and key in the text) for anything
    wrong in any of the three files or between them.
    """
    # Imported here: these modules import the dataclasses above.
    from lematt.config_actions import parse_actions
    from lematt.config_domains import parse_domains
    from lematt.config_settings import parse_settings
    from lematt.config_source import read_text

    path = Path(os.path.realpath(os.path.expanduser(config_path)))
    conf_dir = path.parent
    settings, warnings = parse_settings(path, read_text(path, "config file"), conf_dir)

    domains_path = conf_dir / "domains"
    if not domains_path.exists():
        raise ConfigError(
            "not found: create it beside lematt.conf with one certificate per line "
            "(first name, then extra names; e.g. 'example.com www')", path=domains_path)
    lines = parse_domains(domains_path, read_text(domains_path, "domains file"))
    if not lines:
        warnings.append(f"{domains_path}: no certificate lines; nothing to do")

    actions = Actions()
    found = [conf_dir / n for n in ACTIONS_FILE_NAMES if (conf_dir / n).exists()]
    actions_path = found[0] if found else None
    if actions_path is not None:
        warnings += [f"{p}: ignored, {actions_path.name} is used" for p in found[1:]]
        names = frozenset(n for line in lines for n in line.names)
        actions, action_warnings = parse_actions(
            actions_path, read_text(actions_path, "actions file"), names)
        warnings += action_warnings

    lines = _apply_must_staple(lines, actions, domains_path)
    staplers = [line for line in lines if line.ocsp_must_staple]
    if staplers:
        first = staplers[0]
        warnings.append(
            f"{domains_path}:{first.lineno}: {len(staplers)} certificate(s) ask for OCSP "
            f"must-staple (ocspStapleRequired), first {first.primary}; "
            f"{MUST_STAPLE_REFUSED}: set it to no unless your CA still accepts it")
    warnings += _long_stems(lines, settings, domains_path)
    return Config(settings, tuple(lines), actions, tuple(warnings),
                  config_path=path, domains_path=domains_path, actions_path=actions_path)


def _apply_must_staple(lines: list[CertLine], actions: Actions, domains_path: Path) \
        -> list[CertLine]:
    """Give each line its must-staple setting; mixed settings on one line are an error.

    Each name maps, as upstream, to every override naming it, or else to [default]; the
    values of all those sections must agree, because a certificate has one extension set.
    """
    sections = [s for s in (actions.default, *actions.overrides) if s is not None]
    if not any(s.ocsp_staple_required for s in sections):
        return lines  # the common case: nobody asks for it, nothing to compare
    default = actions.default.ocsp_staple_required if actions.default else False
    default_label = "[default]" if actions.default else "no section (no [default])"
    by_name: dict[str, list[Section]] = {}
    for section in actions.overrides:
        for name in section.domains:
            by_name.setdefault(name, []).append(section)
    result = []
    for line in lines:
        seen: dict[bool, str] = {}
        for name in line.names:
            for section in by_name.get(name, ()):
                seen.setdefault(section.ocsp_staple_required, f"[{section.name}] for {name}")
            if name not in by_name:
                seen.setdefault(default, f"{default_label} for {name}")
        if len(seen) > 1:
            raise ConfigError(
                "the names of this certificate map to actions sections that disagree on "
                f"ocspStapleRequired (yes: {seen[True]}; no: {seen[False]}); a certificate "
                "has one must-staple setting, so make them agree", path=domains_path,
                line=line.lineno)
        result.append(replace(line, ocsp_must_staple=True) if seen.get(True) else line)
    return result


def _long_stems(lines: list[CertLine], settings: Settings, domains_path: Path) -> list[str]:
    """Warn about lines whose upstream file names would pass the file-system limit."""
    limit = _NAME_MAX - _STORE_SUFFIX - max(len(settings.rsa_tag), len(settings.curve_tag))
    warnings = []
    for line in lines:
        names = line.written_names or line.names
        # Cheap upper bound first: the stem is never longer than all names joined.
        if sum(map(len, names)) + len(names) > limit and len(line.file_stem) > limit:
            warnings.append(
                f"{domains_path}:{line.lineno}: the upstream file-name stem of this "
                f"certificate is {len(line.file_stem)} characters; with lematt's suffixes it "
                f"passes the {_NAME_MAX}-byte file-name limit of most file systems")
    return warnings
