"""The validated config: frozen dataclasses for lematt.conf, actions.conf and the whole conf dir.

Contract: values of these types are made only by ``lematt.config.load`` (which checks every
field and cross-reference); everything else reads them and never changes them. The domains
lines are ``lematt.model.CertLine`` values (they travel through the whole run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lematt.config.endpoints import Endpoint
from lematt.model import CertLine, KeyType

LE_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LE_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Settings:
    """lematt.conf, validated, with defaults resolved."""

    conf_dir: Path
    account_key: Path
    challenge_drop_dir: Path | None = None
    challenge_listen: tuple[str, int] | None = None
    # Explicit renewal rules (upstream's); unset, the CA's renewal window (ARI) or a third of
    # the certificate's lifetime decides (lematt.plan).
    reauthorize_days: float | None = None
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
    # Origins (scheme://host:port) besides the directory's that the CA may send URLs on;
    # any other URL from the CA is refused (lematt.acme.origins).
    ca_allowed_origins: tuple[str, ...] = ()
    # Seconds the whole run may spend on orders (--deadline overrides it); None: no limit
    # beyond each order's own orderTimeout.
    run_timeout: float | None = None
    # The CA profile for every certificate (an actions section's ``profile`` overrides it).
    profile: str | None = None
    # External account binding (RFC 8555 section 7.3.4): the key id and the HMAC key (base64url,
    # as the CA hands it out), used when the account is registered.
    eab_kid: str | None = None
    eab_hmac_key: str | None = field(default=None, repr=False)
    # Agree to the CA's terms of service when registering (on: drop-in for the original).
    agree_terms_of_service: bool = True
    # Prefer the chain whose top certificate was issued by this CN (Link rel="alternate").
    preferred_chain: str | None = None
    # Seconds the check of one endpoint may take, tries included (actions' ``verify``):
    # services reload asynchronously, so a few tries over this window before a mismatch counts.
    verify_timeout: float = 10.0
    # Commands run after a run with failures (after every run with notify_always), each a
    # local shell string or an SshRun; each bounded by notify_timeout seconds.
    notify: tuple[str | SshRun, ...] = ()
    notify_always: bool = False
    notify_timeout: float = 60.0
    # A Prometheus textfile written at the end of every run (lematt.monitor.metrics).
    metrics_file: Path | None = None
    # Where each key was written (file and line), for messages that name the setting.
    source: Path | None = field(default=None, compare=False)
    key_lines: tuple[tuple[str, int], ...] = field(default=(), compare=False)
    # Accept a conf dir and tree that their group may write (never one every user may).
    allow_group_writable: bool = False

    def tag(self, key_type: KeyType) -> str:
        return self.rsa_tag if key_type == "rsa" else self.curve_tag

    def directory_url(self, test: bool) -> str:
        return self.directory_test if test else self.directory_prod

    def where(self, key: str) -> str:
        """``file:line`` of ``key`` in lematt.conf (just the file when it is not written)."""
        line = dict(self.key_lines).get(key)
        where = str(self.source) if self.source is not None else "lematt.conf"
        return f"{where}:{line}" if line is not None else where


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
    # Endpoints that must serve this section's certificates once its updates ran.
    verify: tuple[Endpoint, ...] = ()
    ocsp_staple_required: bool = False
    # The CA profile for this section's certificates (None: lematt.conf's ``profile``).
    profile: str | None = None
    # Line of the section header (INI) or section key (YAML) in the actions file, for
    # messages; not part of equality (the same section is the same wherever it is written).
    lineno: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Actions:
    """actions.conf: ``default`` and ``every`` may be absent; overrides keep file order."""

    default: Section | None = None
    every: Section | None = None
    overrides: tuple[Section, ...] = ()

    def all_sections(self) -> tuple[Section, ...]:
        """Every section written: ``[default]``, the overrides, ``[every]``."""
        return tuple(s for s in (self.default, *self.overrides, self.every) if s is not None)

    def overrides_by_name(self) -> dict[str, list[Section]]:
        """Each name an override lists -> the overrides listing it, in file order."""
        by_name: dict[str, list[Section]] = {}
        for section in self.overrides:
            for name in section.domains:
                by_name.setdefault(name, []).append(section)
        return by_name

    def sections_for(self, names: tuple[str, ...]) -> tuple[Section, ...]:
        """The sections a certificate with these names maps to, as the original lematt maps
        them: name by name. A name that an override lists maps the certificate to that
        override (to every override listing it); a name that none lists maps it to
        ``[default]``. Result: ``[default]`` (if any name needs it), the overrides in file
        order, then ``[every]``; each section once.
        """
        wanted = set(names)
        overrides = [s for s in self.overrides if s.domains & wanted]
        listed = set().union(*(s.domains for s in overrides))
        chosen = []
        if self.default is not None and not wanted <= listed:
            chosen.append(self.default)
        chosen.extend(overrides)
        if self.every is not None:
            chosen.append(self.every)
        return tuple(chosen)

    def prepares_for(self, line: CertLine) -> list[tuple[str, ...]]:
        """The local prepare commands of a certificate, as argument vectors: one per name
        and section, ``DOMAIN`` replaced by that name, then split on whitespace and run
        without a shell, as the original lematt ran them; identical commands once."""
        commands: list[tuple[str, ...]] = []
        for name in line.names:
            for section in self.sections_for((name,)):
                commands.extend(tuple(c.replace("DOMAIN", name).split())
                                for c in section.prepare if isinstance(c, str))
        return [argv for argv in dict.fromkeys(commands) if argv]

    def forwarders_for(self, line: CertLine) -> list[SshForward]:
        """The SSH forwarders (structured prepares) a certificate's orders need, once each."""
        found: list[SshForward] = []
        for section in self.sections_for(line.names):
            found.extend(p for p in section.prepare
                         if isinstance(p, SshForward) and p not in found)
        return found


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
