"""SSH destinations: parse what the user wrote, resolve it like OpenSSH, load known_hosts.

Contract
--------
``SshDestination.parse(text)`` is pure: ``[user@]host[:port]``, ``[user@][v6addr]:port``, a bare
IPv6 address, or an alias; it raises ``ValueError`` with a sentence the config loader can put
behind ``file:line``. ``SshDestination.resolve(text, config_path)`` additionally reads an
OpenSSH client config file (default ``~/.ssh/config``, missing = empty) through asyncssh's own
parser, so ``Host``/``Match`` blocks, ``HostName`` (with ``%h``), ``Port``, ``User``,
``IdentityFile``, ``UserKnownHostsFile``, ``GlobalKnownHostsFile`` and ``HostKeyAlias`` mean
what they mean to ``ssh``; user and port written in the destination win over the file, as on
the ``ssh`` command line. A broken config file is a ``ConfigError`` naming it.

``host_key()`` is what "one host" means for ordering: resolved address and port, spelled as
in known_hosts (``[127.0.0.3]:2222``; port 22 implicit). Names are not looked up in DNS, so
``HostName db1`` and ``HostName 10.0.0.5`` count as two hosts even when they are one.

``load_known_hosts`` reads the destination's known_hosts files (a missing file is empty, as for
``ssh``) and ``host_key_problem`` turns asyncssh's host key refusal into the sentence a user
needs: unknown key (add it after verifying) or changed key (possible man-in-the-middle).
Host key checking can never be switched off: ``UserKnownHostsFile none`` resolves to no
files, and the pool refuses to connect to such a destination.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import asyncssh

from lematt.errors import ConfigError

DEFAULT_PORT = 22
DEFAULT_CONFIG = Path("~/.ssh/config")
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

_USER_RE = re.compile(r"[^\s@:/\[\]]+")
_HOST_RE = re.compile(r"[A-Za-z0-9_.%-]+")  # names, IPv4, and aliases such as mail_reload


def _port(text: str, written: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"SSH destination {written!r}: port {text!r} is not a number 1-65535")
    return int(text)


def normalize_address(address: str) -> str:
    """Canonical spelling of a host name or IP literal, so equal hosts compare equal."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower().rstrip(".")


def format_host(address: str, port: int) -> str:
    """``address`` or ``[address]:port``, exactly as OpenSSH writes known_hosts entries."""
    return address if port == DEFAULT_PORT else f"[{address}]:{port}"


@dataclass(frozen=True)
class SshDestination:
    """Where to connect, as written and as resolved through the SSH client config.

    ``written`` is the user's text (used in messages and as the runner's name); ``host`` is the
    name config ``Host`` patterns match (the alias); ``address``/``port``/``user`` are the
    resolved connection target. ``explicit_user``/``explicit_port`` record what the text
    itself fixed. ``known_hosts`` lists the files host keys are checked against; it is empty
    only when the config says ``UserKnownHostsFile none``, which the pool refuses.
    """

    written: str
    host: str
    address: str
    port: int
    user: str | None = None
    explicit_user: str | None = None
    explicit_port: int | None = None
    identity_files: tuple[str, ...] = ()
    known_hosts: tuple[str, ...] = (DEFAULT_KNOWN_HOSTS,)
    host_key_alias: str | None = None
    config_path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> SshDestination:
        """Split ``[user@]host[:port]`` without reading any file (address = host, port 22)."""
        written = text
        text = text.strip()
        if not text or any(ch.isspace() for ch in text):
            raise ValueError(f"SSH destination {written!r}: expected [user@]host[:port] "
                             "or an alias from the SSH config")
        user: str | None = None
        if "@" in text:
            user, text = text.rsplit("@", 1)
            if not _USER_RE.fullmatch(user):
                raise ValueError(f"SSH destination {written!r}: bad user name {user!r}")
        port: int | None = None
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"SSH destination {written!r}: expected [address]:port")
            if rest:
                port = _port(rest[1:], written)
        elif text.count(":") > 1:
            host = text  # a bare IPv6 address; a port needs the [v6]:port form
        else:
            host, sep, port_text = text.partition(":")
            if sep:
                port = _port(port_text, written)
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"SSH destination {written!r}: {host!r} is not an IPv6 "
                                 "address") from None
        elif not _HOST_RE.fullmatch(host):
            raise ValueError(f"SSH destination {written!r}: bad host name {host!r}")
        return cls(written=written, host=host, address=normalize_address(host),
                   port=port or DEFAULT_PORT, user=user, explicit_user=user,
                   explicit_port=port)

    @classmethod
    def resolve(cls, text: str, config_path: Path | None = None) -> SshDestination:
        """Parse ``text`` and apply the SSH client config (``config_path`` or ~/.ssh/config).

        Raises ``ValueError`` for a malformed destination and ``ConfigError`` for an
        unreadable or invalid config file. Reads one small file: call it where blocking
        for a moment is fine (config loading), or in a worker thread.
        """
        parsed = cls.parse(text)
        path = Path(config_path or DEFAULT_CONFIG).expanduser()
        if config_path is None and not path.is_file():
            path_used: Path | None = None  # no personal config: plain OpenSSH defaults
        else:
            path_used = path
        try:
            # asyncssh's own OpenSSH-config evaluation, so that we resolve exactly what
            # asyncssh.connect will later use. Keys/agent are not loaded here (None).
            options = asyncssh.SSHClientConnectionOptions(
                config=[str(path_used)] if path_used else [], host=parsed.host,
                port=parsed.explicit_port or (), username=parsed.explicit_user or (),
                client_keys=None, agent_identities=None, agent_path=None)
        except OSError as exc:
            raise ConfigError(f"cannot read SSH config for {text!r}: {exc.strerror}",
                              path=path_used) from exc
        except (ValueError, asyncssh.Error) as exc:
            # asyncssh's parse errors already start with "<file> line N:".
            named = path_used is not None and str(path_used) in str(exc)
            raise ConfigError(f"SSH destination {text!r}: {exc}",
                              path=None if named else path_used) from exc
        config = options.config
        # Read from the parsed file rather than options.known_hosts: asyncssh maps
        # "UserKnownHostsFile none" to an absent known_hosts option, i.e. *no checking at all*.
        user_files = cast("list[str] | None", config.get("UserKnownHostsFile"))  # []: none
        global_files = cast("list[str]", config.get("GlobalKnownHostsFile") or [])
        known = [DEFAULT_KNOWN_HOSTS] if user_files is None else list(user_files)
        identity = cast("list[str]", config.get("IdentityFile") or [])
        alias = config.get("HostKeyAlias")
        return cls(
            written=parsed.written, host=parsed.host, address=normalize_address(options.host),
            port=int(options.port), user=options.username, explicit_user=parsed.explicit_user,
            explicit_port=parsed.explicit_port,
            identity_files=tuple(str(item) for item in identity),
            known_hosts=tuple(str(item) for item in known + global_files),
            host_key_alias=str(alias) if alias else None, config_path=path_used)

    def host_key(self) -> str:
        """The ordering identity of the machine: resolved address and port."""
        return format_host(self.address, self.port)

    def connection_key(self) -> tuple[object, ...]:
        """What makes two destinations share one SSH connection: everything but the text."""
        return (self.host, self.address, self.port, self.user, self.identity_files,
                self.known_hosts, self.host_key_alias, self.config_path)


def load_known_hosts(files: tuple[str, ...]) -> tuple[asyncssh.SSHKnownHosts, list[Path]]:
    """Read and merge ``files``; a missing file counts as empty (as ``ssh`` treats it).

    Returns the parsed entries and the expanded paths (for messages). Loading them ourselves
    matters: asyncssh treats an *empty* known_hosts argument as "use ~/.ssh/known_hosts",
    which would silently check against a different file than the user configured.
    """
    paths = [Path(item).expanduser() for item in files]
    chunks = []
    for path in paths:
        try:
            chunks.append(path.read_text(errors="replace"))
        except FileNotFoundError:
            continue
    return asyncssh.import_known_hosts("\n".join(chunks)), paths


def has_recorded_key(destination: SshDestination, known: asyncssh.SSHKnownHosts) -> bool:
    """Whether known_hosts holds any key (or CA) for the destination: a refused key is then
    a *changed* key, not an unknown one."""
    name = destination.host_key_alias or destination.address
    port = None if destination.port == DEFAULT_PORT else destination.port
    host_keys, ca_keys, *_ = known.match(name, destination.address, port)
    return bool(host_keys or ca_keys)


def host_key_problem(destination: SshDestination, known: asyncssh.SSHKnownHosts,
                     files: list[Path]) -> str:
    """The user's sentence for a host key asyncssh refused (unknown vs. changed)."""
    target = format_host(destination.host_key_alias or destination.address, destination.port)
    where = " or ".join(str(path) for path in files) or "(no known_hosts file)"
    first = files[0] if files else DEFAULT_KNOWN_HOSTS
    if has_recorded_key(destination, known):
        return (f"host key for {target} does not match the key recorded in {where} — possible "
                "man-in-the-middle attack, or the host was reinstalled; verify the new key "
                f"before replacing the entry (ssh-keygen -R '{target}' -f {first})")
    scan = f"ssh-keyscan -p {destination.port} {destination.address} >> {first}"
    return (f"host key for {target} is not in {where}: verify it and add it with "
            f"ssh-keyscan (`{scan}`, after checking the fingerprint)")
