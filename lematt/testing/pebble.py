"""Real ACME services on loopback for tests, benchmarks and demos (stdlib + cryptography only).

Contract
--------
``start_pebble(workdir)`` starts ``pebble-challtestsrv`` (as Pebble's DNS) and ``pebble`` on
127.0.0.1, each in its own process group with its output in ``workdir/*.log``, waits (bounded)
until both answer, and returns a :class:`PebbleRig`. ``PebbleRig.stop()`` ends both groups
(SIGTERM, bounded wait, SIGKILL); it is idempotent and the rig is also a context manager.
If either binary is missing a ``RuntimeError`` says ``apt-get install pebble``; any other
startup failure raises :class:`RigError` with the tail of both logs, after stopping whatever
had started. :class:`StaticChallengeServer` is a threaded stdlib HTTP server that serves the
files of a directory at ``/.well-known/acme-challenge/<file>`` and 404s everything else.

Ports: ``pebble_ports(offset)`` are the default ports plus ``offset`` (ACME 14000, management
15000, http-01 5002, tls-alpn-01 5001, DNS 8053, challtestsrv API 8055), ``free_pebble_ports()``
six ports free right now, both as ``start_pebble`` keyword arguments; ``free_ports(n)`` is the
helper behind the latter.

``python -m lematt.testing.pebble [--port-offset N] [--workdir DIR]`` starts a rig on free ports
(or the offset ones), prints the lematt.conf lines that use it and where names resolve, and
runs until Ctrl-C or SIGTERM, then stops everything (bounded). Exit status 1 if the rig cannot
start or one of its processes dies.

This module imports no pytest: ``tests/e2e/conftest.py``, ``benchmarks/`` and demo scripts share
it.

Pebble 2.4 facts the rig relies on (Debian package ``pebble`` 2.4.0)
---------------------------------------------------------------------
* HTTPS only. Its own TLS certificate comes from the config (``certificate``/``privateKey``);
  the rig makes a throwaway CA plus a server cert for ``127.0.0.1``/``localhost`` so clients can
  verify the connection against ``PebbleRig.ca_bundle`` (lematt's ``caBundle``). The certificates
  Pebble *issues* chain to a different, random root made at every start (management API
  ``GET https://127.0.0.1:<management_port>/roots/0``, also ``/intermediates/0``).
* Issued certificate lifetime: config key ``certificateValidityPeriod`` (seconds); Pebble's
  default is 157766400 s (1826 days, ~5 years) and ``notAfter = notBefore + period - 1 s``.
  Pebble logs ``Using certificate validity period of N seconds`` at start. The rig always writes
  the key (``cert_validity_seconds``, default = Pebble's default), so a test may ask for short
  certificates (e.g. 10 days) to make renewals due immediately.
* http-01: the VA fetches ``http://<name>:<httpPort>/.well-known/acme-challenge/<token>``,
  resolving ``<name>`` through ``-dnsserver`` (challtestsrv here). challtestsrv answers every
  A query with ``-defaultIPv4`` (127.0.0.1) unless ``add_a`` set addresses for that name; the rig
  starts it with an empty ``-defaultIPv6`` so there are no AAAA answers and Pebble connects over
  IPv4 loopback only. So a challenge responder for a name mapped to 127.0.0.N must listen on
  127.0.0.N:``http_port``. ``tlsPort`` is only where the VA would connect for tls-alpn-01.
* Environment: ``PEBBLE_VA_NOSLEEP=1`` (no random 0-15 s sleep before each validation; always
  set here), ``PEBBLE_VA_SLEEPTIME`` (max sleep), ``PEBBLE_WFE_NONCEREJECT`` (percent of valid
  nonces rejected as badNonce, default 5), ``PEBBLE_AUTHZREUSE`` (percent of new orders that
  reuse a valid authz, default 50), ``PEBBLE_VA_ALWAYS_VALID``, ``PEBBLE_CHAIN_LENGTH``,
  ``PEBBLE_ALTERNATE_ROOTS``, ``PEBBLE_WFE_ORDERS_PER_PAGE``. Pass extras with ``extra_env``.
* Pebble keeps all state in memory: a restart forgets accounts, orders and its issuing CA.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# Pebble's built-in default for certificateValidityPeriod (ca/ca.go defaultValidityPeriod).
PEBBLE_DEFAULT_VALIDITY_SECONDS = 157766400

_POLL_INTERVAL = 0.05  # seconds between readiness probes
_PROBE_TIMEOUT = 1.0  # per-probe socket timeout, so one hung probe cannot eat the budget
_STOP_TIMEOUT = 5.0  # per process, after SIGTERM and again after SIGKILL
_LOG_TAIL_LINES = 30
# Go's net/http honours these; the VA must talk to loopback directly, never via a proxy.
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
               "ALL_PROXY", "no_proxy", "NO_PROXY")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")  # base64url alphabet of ACME tokens (RFC 8555 8.1)


class RigError(RuntimeError):
    """A test service could not be started or queried; the message carries the log tail."""


# --------------------------------------------------------------------------- certificates


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by the owner only (it is throwaway, but keep the habit)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_test_ca_and_server_cert(workdir: Path) -> tuple[Path, Path, Path]:
    """Create a throwaway CA and a server cert for 127.0.0.1 / localhost in ``workdir``.

    Returns ``(ca_cert, server_cert, server_key)`` paths (PEM). EC P-256 keys keep this fast.
    The server cert carries both an IP SAN and a DNS SAN because clients connect to
    ``https://127.0.0.1:...`` and hostname checks look only at the SAN.
    """
    now = dt.datetime.now(dt.UTC)
    # Backdate a little so a slightly skewed clock between processes cannot reject it.
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            f"lematt test rig CA {secrets.token_hex(4)}")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address(LOOPBACK)),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(srv_key.public_key()),
                       critical=False)
        # AKI: strict verifiers (Python 3.13's VERIFY_X509_STRICT) demand it on leaf certs.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    ca_path = workdir / "rig-ca.pem"
    cert_path = workdir / "pebble-server.pem"
    key_path = workdir / "pebble-server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, srv_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return ca_path, cert_path, key_path


# --------------------------------------------------------------------------- processes


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the process group led by ``proc`` (started with ``start_new_session``).

    Only while ``proc`` is not yet reaped: after that its pid (= pgid) may belong to someone
    else, and we must never signal a stranger's group.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, wait bounded, then SIGKILL and wait bounded again."""
    if proc.poll() is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_TIMEOUT)
        return
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        # SIGKILL cannot be ignored; if this still times out the process is stuck in the
        # kernel (D state) and nothing more can be done from here.
        proc.wait(timeout=_STOP_TIMEOUT)


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty)"


def _no_proxy_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """urllib opener that ignores *_proxy variables: rig traffic is loopback only."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _check_free(port: int, kind: int) -> None:
    """Fail early and clearly when a port is taken (often a leftover Pebble from a killed run,
    which would otherwise answer our probes with the wrong TLS certificate)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        # Go listeners set SO_REUSEADDR too, so a TIME_WAIT remnant is not a conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
            raise RigError(
                f"{LOOPBACK}:{port}/{proto} is already in use ({exc.strerror}); a leftover "
                f"pebble or pebble-challtestsrv? See `ss -ltnup | grep {port}`") from exc


# --------------------------------------------------------------------------- ports


def free_ports(count: int, address: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that are free on ``address`` for TCP *and* UDP right now.

    The kernel picks them (bind to port 0); each is held until all are found, so they differ.
    Both protocols because one of them may become challtestsrv's DNS port (UDP and TCP).
    Another process may still take a port before the caller binds it; the kernel hands out
    port-0 ports in turn, which makes that rare. Raises :class:`RigError` if the kernel keeps
    offering ports that are taken for UDP.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(20 * count):  # bounded: a port whose UDP side is taken is skipped
            if len(ports) == count:
                break
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind((address, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            try:
                udp.bind((address, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise RigError(f"found only {len(ports)} of {count} free ports on {address}")
    return ports


def pebble_ports(offset: int = 0) -> dict[str, int]:
    """The rig's default ports plus ``offset``, as ``start_pebble`` keyword arguments (the
    test suite's ``LEMATT_TEST_PORT_OFFSET`` scheme)."""
    return {"acme_port": 14000 + offset, "management_port": 15000 + offset,
            "http_port": 5002 + offset, "tls_port": 5001 + offset, "dns_port": 8053 + offset,
            "challtestsrv_port": 8055 + offset}


def free_pebble_ports() -> dict[str, int]:
    """Six free ports (:func:`free_ports`), as ``start_pebble`` keyword arguments."""
    return dict(zip(pebble_ports(), free_ports(6), strict=True))


# --------------------------------------------------------------------------- DNS


def dns_query(server: tuple[str, int], name: str, qtype: str = "A",
              timeout: float = 2.0) -> list[str]:
    """Ask one DNS server over UDP for the A or AAAA records of ``name``; return the addresses.

    A deliberately tiny RFC 1035 client for tests: one question, recursion desired, answers of
    other types (e.g. a CNAME) are skipped. Raises :class:`RigError` on timeout or a bad reply.
    """
    types = {"A": 1, "AAAA": 28}
    if qtype not in types:
        raise ValueError(f"qtype must be A or AAAA, not {qtype!r}")
    qid = secrets.randbits(16)
    qname = b"".join(bytes([len(label)]) + label.encode("ascii")
                     for label in name.rstrip(".").split(".")) + b"\x00"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(
        "!HH", types[qtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, server)
        # Bounded: a stray datagram with another id is skipped at most a few times.
        for _ in range(4):
            try:
                reply, _peer = sock.recvfrom(4096)
            except TimeoutError as exc:
                raise RigError(f"DNS query {name} {qtype} to {server}: no answer") from exc
            if len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == qid:
                break
        else:
            raise RigError(f"DNS query {name} {qtype} to {server}: no matching reply")
    _qid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", reply[:12])
    if flags & 0x000F:
        raise RigError(f"DNS query {name} {qtype}: rcode {flags & 0x000F}")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(reply, pos) + 4
    found: list[str] = []
    for _ in range(an):
        pos = _skip_name(reply, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", reply[pos:pos + 10])
        pos += 10
        rdata = reply[pos:pos + rdlen]
        pos += rdlen
        if rtype == types[qtype]:
            family = socket.AF_INET if rtype == 1 else socket.AF_INET6
            found.append(socket.inet_ntop(family, rdata))
    return found


def _skip_name(msg: bytes, pos: int) -> int:
    """Return the offset just after the (possibly compressed) domain name at ``pos``."""
    for _ in range(128):  # a name has at most 127 labels; bounds a malicious loop
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:  # compression pointer: two bytes, ends the name here
            return pos + 2
        pos += 1 + length
    raise RigError("DNS reply: name too long")


# --------------------------------------------------------------------------- Pebble


@dataclass
class PebbleRig:
    """A running Pebble + challtestsrv pair on 127.0.0.1. Stop it with :meth:`stop`."""

    directory_url: str  # https://127.0.0.1:<acme_port>/dir
    ca_bundle: Path  # PEM of the throwaway CA that signed Pebble's own HTTPS cert (caBundle)
    http_port: int  # Pebble's httpPort: where its VA connects for http-01
    management_url: str  # challtestsrv management API base URL (plain HTTP)
    dns_port: int = 8053  # challtestsrv DNS (UDP and TCP) on 127.0.0.1
    pebble_management_url: str = ""  # Pebble's own management API (HTTPS, same CA)
    workdir: Path = field(default_factory=Path)
    _pebble: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _challtestsrv: subprocess.Popen[bytes] | None = field(default=None, repr=False,
                                                          compare=False)
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False, compare=False)

    @property
    def pebble_log(self) -> Path:
        return self.workdir / "pebble.log"

    @property
    def challtestsrv_log(self) -> Path:
        return self.workdir / "challtestsrv.log"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly ``ca_bundle`` (hostname checks stay on)."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def _manage(self, endpoint: str, payload: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.management_url}/{endpoint}", data=json.dumps(payload).encode(),
            method="POST")
        try:
            with _no_proxy_opener().open(request, timeout=5.0) as response:
                response.read()
        except (OSError, urllib.error.URLError) as exc:
            raise RigError(f"challtestsrv /{endpoint} {payload}: {exc}") from exc

    def add_a(self, name: str, address: str) -> None:
        """Make ``name`` resolve (A) to exactly the IPv4 loopback ``address`` for Pebble.

        challtestsrv's /add-a *appends*; clearing first gives replace semantics, so calling
        this twice moves the name instead of round-robining between two hosts.
        """
        if not ipaddress.IPv4Address(address).is_loopback:
            raise ValueError(f"{address}: the rig uses loopback addresses only")
        self.clear_a(name)
        self._manage("add-a", {"host": name, "addresses": [address]})

    def clear_a(self, name: str) -> None:
        """Forget ``add_a`` for ``name``; it resolves to the default (127.0.0.1) again."""
        self._manage("clear-a", {"host": name})

    def lookup(self, name: str, qtype: str = "A") -> list[str]:
        """What Pebble's resolver would get for ``name`` (a real DNS query to challtestsrv)."""
        return dns_query((LOOPBACK, self.dns_port), name, qtype)

    def pebble_pid(self) -> int:
        if self._pebble is None:
            raise RigError("pebble is not running")
        return self._pebble.pid

    def pebble_alive(self) -> bool:
        return self._pebble is not None and self._pebble.poll() is None

    def alive(self) -> bool:
        """Both Pebble and challtestsrv are still running."""
        return self.pebble_alive() and (self._challtestsrv is not None
                                        and self._challtestsrv.poll() is None)

    def stop(self) -> None:
        """Terminate both process groups (bounded waits, SIGKILL if needed). Idempotent."""
        _LIVE_RIGS[:] = [rig for rig in _LIVE_RIGS if rig is not self]
        for proc in (self._pebble, self._challtestsrv):
            if proc is not None:
                _stop_process(proc)
        for fh in self._logs:
            fh.close()
        self._logs.clear()

    def __enter__(self) -> PebbleRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Rigs not yet stopped. Their processes live in their own sessions, so nothing else would end
# them if a benchmark or demo script dies before calling stop(); atexit does.
_LIVE_RIGS: list[PebbleRig] = []


@atexit.register
def _stop_live_rigs() -> None:
    for rig in list(_LIVE_RIGS):
        rig.stop()


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(
            f"{binary} not found on PATH; the tests need real Pebble: apt-get install pebble")
    return path


def _spawn(argv: list[str], log_path: Path, env: dict[str, str],
           logs: list[IO[bytes]]) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - kept open for the process lifetime, closed by stop()
    logs.append(log)
    # Own session = own process group, so stop() can signal the whole group and a Ctrl-C
    # on the test runner's terminal does not race our orderly shutdown.
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def start_pebble(workdir: Path, *, acme_port: int = 14000, management_port: int = 15000,
                 http_port: int = 5002, tls_port: int = 5001, dns_port: int = 8053,
                 challtestsrv_port: int = 8055, nonce_reject_percent: int | None = None,
                 extra_env: dict[str, str] | None = None, startup_timeout: float = 20.0,
                 extra_config: dict[str, Any] | None = None,
                 cert_validity_seconds: int = PEBBLE_DEFAULT_VALIDITY_SECONDS) -> PebbleRig:
    """Start challtestsrv + Pebble on 127.0.0.1 and return once both answer.

    ``nonce_reject_percent=None`` keeps Pebble's default 5 % badNonce rejection, so client
    retry paths run in every test; ``extra_env`` is added to the Pebble environment and
    ``extra_config`` to its config (``{"externalAccountBindingRequired": True, ...}``).
    ``http_port`` is not listened on by the rig: the caller runs the http-01 responder there.
    Raises ``RuntimeError`` if a binary is missing, :class:`RigError` on any other failure.
    """
    pebble_bin = _require("pebble")
    challtestsrv_bin = _require("pebble-challtestsrv")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for port in (acme_port, management_port, challtestsrv_port):
        _check_free(port, socket.SOCK_STREAM)
    _check_free(dns_port, socket.SOCK_DGRAM)
    _check_free(dns_port, socket.SOCK_STREAM)

    ca_path, cert_path, key_path = make_test_ca_and_server_cert(workdir)
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps({"pebble": {
        "listenAddress": f"{LOOPBACK}:{acme_port}",
        "managementListenAddress": f"{LOOPBACK}:{management_port}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "certificateValidityPeriod": cert_validity_seconds,
        **(extra_config or {}),
    }}, indent=2) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env["PEBBLE_VA_NOSLEEP"] = "1"
    if nonce_reject_percent is not None:
        if not 0 <= nonce_reject_percent <= 100:
            raise ValueError("nonce_reject_percent must be within 0..100")
        env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject_percent)
    env.update(extra_env or {})

    rig = PebbleRig(
        directory_url=f"https://{LOOPBACK}:{acme_port}/dir",
        ca_bundle=ca_path,
        http_port=http_port,
        management_url=f"http://{LOOPBACK}:{challtestsrv_port}",
        dns_port=dns_port,
        pebble_management_url=f"https://{LOOPBACK}:{management_port}",
        workdir=workdir,
    )
    _LIVE_RIGS.append(rig)
    try:
        rig._challtestsrv = _spawn([
            challtestsrv_bin,
            # Only the DNS server: http-01 answers come from the code under test, and
            # challtestsrv's own listeners would steal those ports.
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-dns01", f"{LOOPBACK}:{dns_port}",
            "-management", f"{LOOPBACK}:{challtestsrv_port}",
            "-defaultIPv4", LOOPBACK,
            # No AAAA answers: Pebble would otherwise prefer ::1 and miss IPv4 responders.
            "-defaultIPv6", "",
        ], rig.challtestsrv_log, {k: v for k, v in os.environ.items() if k not in _PROXY_VARS},
            rig._logs)
        rig._pebble = _spawn([
            pebble_bin, "-config", str(config_path), "-dnsserver", f"{LOOPBACK}:{dns_port}",
        ], rig.pebble_log, env, rig._logs)
        _wait_ready(rig, startup_timeout)
    except BaseException:
        rig.stop()
        raise
    return rig


def _wait_ready(rig: PebbleRig, timeout: float) -> None:
    """Poll both services until they answer, bounded by ``timeout`` and an iteration count."""
    deadline = time.monotonic() + timeout
    https = _no_proxy_opener(rig.ssl_context())
    plain = _no_proxy_opener()
    dir_ok = mgmt_ok = False
    last_error = "not probed yet"
    for _ in range(int(timeout / _POLL_INTERVAL) + 1):
        for name, proc in (("pebble", rig._pebble), ("pebble-challtestsrv", rig._challtestsrv)):
            if proc is not None and proc.poll() is not None:
                raise RigError(f"{name} exited with status {proc.returncode} during startup\n"
                               + _logs_for_error(rig))
        if not dir_ok:
            try:
                with https.open(rig.directory_url, timeout=_PROBE_TIMEOUT) as response:
                    directory = json.loads(response.read())
                dir_ok = "newNonce" in directory
                if not dir_ok:
                    last_error = f"directory without newNonce: {directory}"
            except (OSError, ValueError) as exc:
                last_error = f"{rig.directory_url}: {exc}"
        if not mgmt_ok:
            # Setting the default A answer both probes the API and asserts our default.
            request = urllib.request.Request(
                f"{rig.management_url}/set-default-ipv4",
                data=json.dumps({"ip": LOOPBACK}).encode(), method="POST")
            try:
                with plain.open(request, timeout=_PROBE_TIMEOUT) as response:
                    response.read()
                mgmt_ok = True
            except OSError as exc:
                last_error = f"{rig.management_url}: {exc}"
        if dir_ok and mgmt_ok:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    raise RigError(f"Pebble rig not ready after {timeout:.0f} s (last: {last_error})\n"
                   + _logs_for_error(rig))


def _logs_for_error(rig: PebbleRig) -> str:
    return (f"--- {rig.pebble_log} (tail) ---\n{_log_tail(rig.pebble_log)}\n"
            f"--- {rig.challtestsrv_log} (tail) ---\n{_log_tail(rig.challtestsrv_log)}")


# --------------------------------------------------------------------------- http-01 files


class _ChallengeHandler(http.server.BaseHTTPRequestHandler):
    server: _ChallengeHTTPServer

    def do_GET(self) -> None:
        path = self.path
        if path.startswith("http://"):
            # Asked as a proxy (absolute-form request target, RFC 9112 3.2.2): the original
            # lematt's acme_tiny checks its own token file this way in the parity test.
            path = "/" + path[len("http://"):].partition("/")[2]
        token = path[len(CHALLENGE_PREFIX):] if path.startswith(CHALLENGE_PREFIX) else ""
        body: bytes | None = None
        # Only plain base64url names: no '/', '..' or query can reach outside the directory.
        if _TOKEN_RE.fullmatch(token):
            with contextlib.suppress(OSError):
                body = (self.server.directory / token).read_bytes()
        self.server.record(path, 200 if body is not None else 404)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")  # as RFC 8555 8.3 shows
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded in ``hits``; stderr noise would drown pytest output


class _ChallengeHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port while old sockets sit in TIME_WAIT

    def __init__(self, address: tuple[str, int], directory: Path) -> None:
        self.directory = directory
        self._hits: list[tuple[str, int]] = []
        self._hits_lock = threading.Lock()
        super().__init__(address, _ChallengeHandler)

    def record(self, path: str, status: int) -> None:
        with self._hits_lock:
            self._hits.append((path, status))

    def hits(self) -> list[tuple[str, int]]:
        with self._hits_lock:
            return list(self._hits)


class StaticChallengeServer:
    """Plain static HTTP server (thread, http.server) that serves files of `directory` at
    GET /.well-known/acme-challenge/<file> on (address, port); start(), stop(), context manager.

    Only files whose name is a base64url token are served (200, application/octet-stream);
    every other request gets 404. The socket is bound and listening when ``start()`` returns,
    so no readiness wait is needed; ``port=0`` picks a free port, readable as ``.port`` then.
    ``hits`` lists ``(path, status)`` of every GET, which lets a test see that the CA really
    fetched a token. ``address`` must be a loopback address.
    """

    def __init__(self, directory: Path, address: str = LOOPBACK, port: int = 5002) -> None:
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError(f"{address}: the rig uses loopback addresses only")
        self.directory = Path(directory)
        self.address = address
        self.port = port
        self._server: _ChallengeHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def hits(self) -> list[tuple[str, int]]:
        return self._server.hits() if self._server is not None else []

    def start(self) -> StaticChallengeServer:
        """Bind and serve in a daemon thread; raises OSError if the port is taken."""
        if self._server is not None:
            return self
        self._server = _ChallengeHTTPServer((self.address, self.port), self.directory)
        self.port = self._server.server_address[1]  # the real port when 0 was asked for
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"challenge-server-{self.address}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (bounded by the poll interval). Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has seen the flag (<= poll_interval)
        server.server_close()
        if thread is not None:
            thread.join(timeout=_STOP_TIMEOUT)

    def __enter__(self) -> StaticChallengeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- command line

_CLI = "python -m lematt.testing.pebble"
_WATCH_INTERVAL = 0.5  # seconds between checks that both processes still run


def _usage_text(rig: PebbleRig, ports: dict[str, int]) -> str:
    http_port, dns_port = ports["http_port"], ports["dns_port"]
    return f"""\
Pebble is running on {LOOPBACK} (files and logs in {rig.workdir}).

Put these lines into the [config] section of lematt.conf:
    directoryTest = {rig.directory_url}
    directoryProd = {rig.directory_url}
    caBundle = {rig.ca_bundle}
and answer http-01 on port {http_port}, e.g. with lematt's own server:
    challengeListen = {LOOPBACK}:{http_port}

Names: Pebble resolves every name through pebble-challtestsrv (DNS on {LOOPBACK}:{dns_port})
to {LOOPBACK}, IPv4 only, so for any name it fetches
    http://{LOOPBACK}:{http_port}/.well-known/acme-challenge/<token>
To send a name to another loopback address (where another responder listens on port {http_port}):
    curl -X POST -d '{{"host": "www.example.test", "addresses": ["127.0.0.2"]}}' \\
        {rig.management_url}/add-a
Only Pebble resolves names this way; lematt itself never looks them up. The certificates chain
to a root Pebble makes at every start: {rig.pebble_management_url}/roots/0

Stop with Ctrl-C (or SIGTERM)."""


def main(argv: list[str] | None = None) -> int:
    """Run a Pebble rig until SIGINT or SIGTERM; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog=_CLI, description="Run Pebble + pebble-challtestsrv on loopback for lematt until "
        "Ctrl-C, and print the lematt.conf lines that use them.")
    parser.add_argument("--port-offset", type=int, metavar="N",
                        help="use the default ports plus N (ACME 14000+N, management 15000+N, "
                        "http-01 5002+N, tls-alpn-01 5001+N, DNS 8053+N, challtestsrv API "
                        "8055+N) instead of free ones")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="keep Pebble's config, TLS CA and logs in DIR (default: a "
                        "temporary directory, removed at exit)")
    args = parser.parse_args(argv)
    ports = (pebble_ports(args.port_offset) if args.port_offset is not None
             else free_pebble_ports())

    # A flag set from the handlers: the main thread then stops the rig in order, with its
    # bounded waits, instead of unwinding from a KeyboardInterrupt in the middle of them.
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            workdir = args.workdir or Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="lematt-pebble-")))
            try:
                rig = stack.enter_context(start_pebble(workdir, **ports))
            except RuntimeError as exc:  # RigError too: a missing binary, a port in use
                print(f"{_CLI}: {exc}", file=sys.stderr)
                return 1
            print(_usage_text(rig, ports), flush=True)
            while not stop.wait(_WATCH_INTERVAL):
                if not rig.alive():
                    print(f"{_CLI}: Pebble or pebble-challtestsrv exited; logs:\n"
                          f"{_logs_for_error(rig)}", file=sys.stderr)
                    return 1
            print("stopping Pebble ...", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
