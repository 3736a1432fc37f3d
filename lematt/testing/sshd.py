"""Real OpenSSH servers on loopback for tests, benchmarks and demos (stdlib + cryptography only).

Contract
--------
``start_sshd(workdir, address, port, authorized_keys=..., extra_config=...)`` starts Debian's
``/usr/sbin/sshd -D -e -f <workdir>/sshd_config`` as the current user (root in CI), listening
only on ``address:port`` (a loopback address: one address = one "host"), with its own ed25519
host key, its own ``authorized_keys`` file, no passwords, no PAM, ``StrictModes no`` (the tmp
dirs are not root-owned 0700) and ``Subsystem sftp internal-sftp``. It waits (bounded) until the
port answers with an SSH banner and returns a :class:`SshdRig`; ``SshdRig.stop()`` ends the
listener *and* every per-connection sshd and session process it started (bounded, SIGKILL if
needed), is idempotent, and the rig is a context manager. A missing sshd raises
``RuntimeError`` naming ``apt-get install openssh-server`` (a failure, never a skip); any other
startup failure raises :class:`RigError` with the tail of the sshd log.

:class:`ClientKit` is the client side: an ed25519 key pair (private file 0600), a known_hosts
file and an OpenSSH client config file, all under one directory, rewritten whole on each
change so that a session-wide kit can follow rigs that come and go with new host keys.

This module imports no pytest: ``tests/e2e/conftest.py``, ``benchmarks/`` and demo scripts share
it.

OpenSSH facts the rig relies on (Debian 12, OpenSSH 9.2)
--------------------------------------------------------
* As root, sshd insists on its privilege-separation directory ``/run/sshd`` (root-owned, not
  group/world-writable) even with ``-D``; on a fresh container it does not exist yet.
* sshd refuses host keys readable by others ("UNPROTECTED PRIVATE KEY FILE"), whatever
  ``StrictModes`` says, hence 0600.
* Each connection is served by a forked sshd and each session runs in its own session (setsid),
  so signalling the listener's process group does not reach them; ``stop()`` therefore
  snapshots the listener's descendants from ``/proc`` before it stops the listener.
* ``authorized_keys`` is read at every login: :meth:`SshdRig.set_authorized_keys` takes effect
  for the next connection without a restart.
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lematt.testing import RUN_ID_ENV

SSHD = "/usr/sbin/sshd"  # Debian's path; sshd must be started by absolute path (re-exec)
PRIVSEP_DIR = Path("/run/sshd")

_POLL_INTERVAL = 0.05  # seconds between readiness probes
_PROBE_TIMEOUT = 1.0  # per-probe socket timeout, so one hung probe cannot eat the budget
_STOP_TIMEOUT = 5.0  # after SIGTERM and again after SIGKILL
_LOG_TAIL_LINES = 30
_RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]+")


class RigError(RuntimeError):
    """sshd could not be started; the message carries the log tail."""


# --------------------------------------------------------------------------- keys


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by the owner only (ssh and sshd refuse anything looser)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_ed25519_key(path: Path, comment: str) -> str:
    """Write a new OpenSSH-format ed25519 private key to ``path`` (0600) and ``path.pub``;
    return the public line ``ssh-ed25519 AAAA... comment``."""
    key = ed25519.Ed25519PrivateKey.generate()
    _write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    line = f"{public} {comment}"
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return line


def known_hosts_pattern(address: str, port: int) -> str:
    """The host part of a known_hosts line, as OpenSSH writes it (port 22 stays implicit)."""
    return address if port == 22 else f"[{address}]:{port}"


# --------------------------------------------------------------------------- client side


@dataclass
class ClientKit:
    """Client key, known_hosts and ssh config for talking to rigs; see the module docstring.

    ``known_hosts`` and ``ssh_config`` are regenerated from the kit's own records on every
    change, so re-adding a host or an alias replaces its old entry instead of piling up.
    """

    directory: Path
    key_path: Path
    public_line: str
    known_hosts: Path
    ssh_config: Path
    user: str
    _host_keys: dict[str, str] = field(default_factory=dict, repr=False)  # pattern -> key
    _aliases: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, directory: Path) -> ClientKit:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "id_ed25519"
        kit = cls(directory=directory, key_path=key_path,
                  public_line=make_ed25519_key(key_path, "lematt-test-client"),
                  known_hosts=directory / "known_hosts", ssh_config=directory / "ssh_config",
                  user=getpass.getuser())
        kit._write()
        return kit

    def add_known_host(self, address: str, port: int, host_key: str) -> None:
        """Trust ``host_key`` (``ssh-ed25519 AAAA...``) for ``address:port``, replacing any
        key recorded for it before."""
        self._host_keys[known_hosts_pattern(address, port)] = " ".join(host_key.split()[:2])
        self._write()

    def forget_host(self, address: str, port: int) -> None:
        """Remove ``address:port`` from known_hosts (its key becomes unknown)."""
        self._host_keys.pop(known_hosts_pattern(address, port), None)
        self._write()

    def add_alias(self, alias: str, address: str, port: int, *, user: str | None = None,
                  identity_file: Path | None = None, known_hosts: Path | None = None,
                  extra: dict[str, str] | None = None) -> str:
        """Write (or replace) a ``Host alias`` block; defaults: the kit's user, key and
        known_hosts. Returns ``alias``."""
        options = {
            "HostName": address, "Port": str(port), "User": user or self.user,
            "IdentityFile": str(identity_file or self.key_path), "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(known_hosts or self.known_hosts),
            **(extra or {}),
        }
        self._aliases[alias] = options
        self._write()
        return alias

    def _write(self) -> None:
        lines = [f"{pattern} {key}" for pattern, key in self._host_keys.items()]
        self.known_hosts.write_text("".join(line + "\n" for line in lines))
        blocks = []
        for alias, options in self._aliases.items():
            body = "".join(f"    {key} {value}\n" for key, value in options.items())
            blocks.append(f"Host {alias}\n{body}")
        self.ssh_config.write_text("\n".join(blocks))


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: tells a live process from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(root: int) -> dict[int, str]:
    """Snapshot ``{pid: start_time}`` of every live descendant of ``root`` (one /proc scan)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        start = _proc_start_time(pid)
        if start is not None and pid not in found:
            found[pid] = start
            stack.extend(children.get(pid, ()))
    return found


def _kill_snapshot(snapshot: dict[int, str], sig: int) -> None:
    for pid, start in snapshot.items():
        if _proc_start_time(pid) == start:  # the very process we saw, not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _wait_gone(snapshot: dict[int, str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / _POLL_INTERVAL) + 1):
        if all(_proc_start_time(pid) != start for pid, start in snapshot.items()):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    return False


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty)"


# --------------------------------------------------------------------------- sshd


@dataclass
class SshdRig:
    """A running sshd on ``address:port``. Stop it with :meth:`stop`."""

    address: str
    port: int
    workdir: Path
    host_key: str  # "ssh-ed25519 AAAA..." (no comment)
    authorized_keys: Path
    config_path: Path
    user: str
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _log: IO[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RigError(f"sshd on {self.address}:{self.port} is not running")
        return self._proc.pid

    @property
    def known_hosts_line(self) -> str:  # "[127.0.0.2]:2222 ssh-ed25519 AAAA..."
        return f"{known_hosts_pattern(self.address, self.port)} {self.host_key}"

    def set_authorized_keys(self, lines: list[str]) -> None:
        """Replace the authorized_keys file; sshd reads it at each login."""
        self.authorized_keys.write_text("".join(line.strip() + "\n" for line in lines))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """End the listener and everything it forked (bounded waits, SIGKILL). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            # Snapshot first: once the listener is gone its children are reparented and
            # can no longer be told apart from anyone else's processes.
            snapshot = _descendants(proc.pid) if proc.poll() is None else {}
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            _kill_snapshot(snapshot, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=_STOP_TIMEOUT)
            if not _wait_gone(snapshot, _STOP_TIMEOUT):
                _kill_snapshot(snapshot, signal.SIGKILL)
                _wait_gone(snapshot, _STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SshdRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sshd_config(rig: SshdRig, host_key_path: Path, extra_config: str) -> str:
    workdir = rig.workdir
    return f"""\
# Written by lematt.testing.sshd: a throwaway sshd for one loopback "host".
ListenAddress {_host_port(rig.address, rig.port)}
HostKey {host_key_path}
PidFile {workdir / "sshd.pid"}
AuthorizedKeysFile {rig.authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The rig's files live in pytest tmp dirs, which StrictModes would reject.
StrictModes no
PermitRootLogin prohibit-password
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
{_run_id_setting()}{extra_config}
"""


def _run_id_setting() -> str:
    """``SetEnv`` passing ``$LEMATT_TEST_RUN_ID`` on to sessions, or nothing when it is unset.

    sshd gives every session a fresh environment; without this, a process started over SSH
    (a forwarder lematt runs on a "remote" host) would not carry the run id that marks every
    other process of the run, and a leftover check (.ci/run) could not tell it is the suite's.
    """
    run_id = os.environ.get(RUN_ID_ENV)
    if not run_id:
        return ""
    if not _RUN_ID_RE.fullmatch(run_id):  # one sshd_config word, no quoting needed
        raise ValueError(f"{RUN_ID_ENV}={run_id!r}: use letters, digits, '.', '_', '-' only")
    return f"SetEnv {RUN_ID_ENV}={run_id}\n"


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _check_free(address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd does
        try:
            sock.bind((address, port))
        except OSError as exc:
            raise RigError(f"{address}:{port} is already in use ({exc.strerror}); a leftover "
                           f"sshd? See `ss -ltnp | grep {port}`") from exc


def _banner(address: str, port: int) -> str | None:
    """The server's identification line, or None while it does not answer."""
    try:
        with socket.create_connection((address, port), timeout=_PROBE_TIMEOUT) as sock:
            data = sock.recv(256)
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return line if line.startswith("SSH-") else None


def start_sshd(workdir: Path, address: str = "127.0.0.2", port: int = 2222, *,
               authorized_keys: list[str] | None = None, extra_config: str = "",
               startup_timeout: float = 15.0) -> SshdRig:
    """Start sshd on ``address:port`` and return once it sends its SSH banner.

    ``authorized_keys`` lines are written verbatim (options such as ``restrict,command="..."``
    included); ``extra_config`` is appended to the generated sshd_config. Raises
    ``RuntimeError`` if sshd is missing, :class:`RigError` on any other failure.
    """
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"{address}: the rig uses loopback addresses only")
    if not os.access(SSHD, os.X_OK):
        raise RuntimeError(f"{SSHD} not found; the tests need real OpenSSH: "
                           "apt-get install openssh-server")
    if os.geteuid() == 0:
        # Root sshd chroots its pre-auth child into this directory.
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_free(address, port)

    host_key_path = workdir / "ssh_host_ed25519_key"
    host_key = " ".join(make_ed25519_key(host_key_path, f"rig@{address}").split()[:2])
    rig = SshdRig(address=address, port=port, workdir=workdir, host_key=host_key,
                  authorized_keys=workdir / "authorized_keys",
                  config_path=workdir / "sshd_config", user=getpass.getuser())
    rig.set_authorized_keys(authorized_keys or [])
    rig.config_path.write_text(_sshd_config(rig, host_key_path, extra_config))

    try:
        rig._log = open(rig.log_path, "wb")  # noqa: SIM115 - closed by stop()
        # Own session, so stop() can signal the listener's group without touching ours.
        rig._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(rig.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=rig._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _wait_ready(rig, startup_timeout)
    except BaseException:
        rig.stop()
        raise
    return rig


def _wait_ready(rig: SshdRig, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / _POLL_INTERVAL) + 1):
        proc = rig._proc
        if proc is not None and proc.poll() is not None:
            raise RigError(f"sshd on {rig.address}:{rig.port} exited with status "
                           f"{proc.returncode} during startup\n--- {rig.log_path} (tail) ---\n"
                           f"{_log_tail(rig.log_path)}")
        if _banner(rig.address, rig.port) is not None:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    raise RigError(f"sshd on {rig.address}:{rig.port} sent no SSH banner within "
                   f"{timeout:.0f} s\n--- {rig.log_path} (tail) ---\n{_log_tail(rig.log_path)}")
