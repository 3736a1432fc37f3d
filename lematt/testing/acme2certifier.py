"""acme2certifier on loopback: a second, real ACME CA for tests (stdlib + cryptography here).

Contract
--------
``start_acme2certifier(workdir, *, port, dns_server=(host, port), ...)`` writes into ``workdir``
a throwaway issuing CA (``issuer-ca.pem``/``.key``), a throwaway TLS CA + server certificate for
127.0.0.1 (``lematt.testing.pebble.make_test_ca_and_server_cert``), an acme2certifier config
(``acme_srv.cfg``), and runs acme2certifier's WSGI application in a subprocess (``python -m
lematt.testing.acme2certifier``, its own process group, output in ``acme2certifier.log``) over
HTTPS on 127.0.0.1:<port>. It waits (bounded) until the directory answers over HTTPS verified
against ``ca_bundle`` and returns an :class:`A2cRig`; ``A2cRig.stop()`` is idempotent (SIGTERM,
bounded wait, SIGKILL) and the rig is a context manager. A missing package raises
``RuntimeError`` naming ``pip install acme2certifier``; any other startup failure raises
:class:`lematt.testing.pebble.RigError` with the log tail, after stopping the subprocess.
Everything listens on, and talks to, loopback only. This module imports no pytest:
``tests/e2e/conftest.py`` (fixture ``acme2certifier``) and scripts share it. acme2certifier
itself (a dependency of the ``test`` extra only) is imported in the serving subprocess alone, so
importing this module needs nothing beyond lematt's own dependencies. Start-up takes about
0.7 s, stop a few ms.

What is switched on where (all read once at process start, so options are start parameters;
``extra_config`` adds or overrides any ``[section] key``):

* ``cert_validity_days``: ``[CAhandler] cert_validity_days`` of the openssl handler (whole days).
* ``eab=True``: ``[EABhandler] eab_handler_module = acme2certifier.eabhandlers.file_handler`` with
  a CSV ``key_file`` holding one pair; ``A2cRig.eab_kid`` / ``A2cRig.eab_hmac_key`` (base64url,
  the JWK ``k``, as ACME clients take it). ``eab_strict=False`` makes EAB optional.
* ARI is on by default in 0.46.3; ``ari=False`` sets ``[Renewalinfo] renewalinfo_disable``;
  ``ari_renewal_force=True`` makes every suggestedWindow already open; ``ari_threshold_percent``
  sets ``renewalthreshold_pctg``.
* ``profiles={"name": "description"}``: ``[Order] profiles`` (JSON), shown in ``meta.profiles``.
* ``contact_required`` (default False: the rig sets ``[Account] contact_check_disable``),
  ``tos_url`` (``[Directory] tos_url``), ``identifier_limit`` (``[Order] identifier_limit``).

The process: ``acme2certifier/share/acme2certifier_wsgi.py`` is a WSGI module whose own
``__main__`` serves plain HTTP on 0.0.0.0:80 with wsgiref. The rig imports its ``application``
instead and serves it with Werkzeug's threaded server (Werkzeug is a declared dependency of the
package: ``Requires-Dist: werkzeug``) with an ``ssl.SSLContext`` on 127.0.0.1. The module boots
at import (reads ``$ACME_SRV_CONFIGFILE``, creates the SQLite database, checks the config).

acme2certifier 0.46.3 facts (paths are inside the installed ``acme2certifier`` package)
-------------------------------------------------------------------------------------
* Layout: CA handlers are modules, ``[CAhandler] handler_module =
  acme2certifier.cahandlers.openssl_ca_handler`` (the older ``examples/ca_handler/*.py`` +
  ``handler_file`` form is deprecated, ``compat.py``); the SQLite store is ``[DBhandler] handler =
  wsgi`` (``dbhandlers/wsgi_handler.py``) with ``dbfile``; config file from
  ``$ACME_SRV_CONFIGFILE`` (``acme_srv/helpers/config.py`` ``load_config``), INI without
  interpolation, case-sensitive keys.
* openssl handler (``cahandlers/openssl_ca_handler.py``): needs ``issuing_ca_key``,
  ``issuing_ca_cert``, ``issuing_ca_crl`` (a path; may not exist yet) and an existing
  ``cert_save_path``, else the directory answers 403 "error in ca_handler configuration".
  Lifetime: ``notBefore = now``, ``notAfter = now + cert_validity_days`` (integer days, default
  365; ``cert_validity_adjust`` caps it at the issuer's notAfter). Issued certs keep the CSR
  subject, get EKU serverAuth+clientAuth, KU digitalSignature+keyEncipherment (also for EC
  keys), SKI/AKI, a uuid4 serial. The chain served is leaf + issuing CA (+ ``ca_cert_chain_list``).
* Directory (``acme_srv/directory.py``): ``newNonce``, ``newAccount``, ``newOrder``,
  ``revokeCert``, ``keyChange``, ``renewalInfo`` and an advertised ``newAuthz`` that no route
  serves, plus a random ``<uuid hex>: <url>`` entry on every GET (Let's Encrypt's practice).
  ``meta`` = ``home``, ``author``, ``name: acme2certifier``, ``version``; plus ``termsOfService``
  (``tos_url``), ``caaIdentities``, ``profiles``, ``externalAccountRequired`` (EAB on) when set.
  URLs are built from ``[DEFAULT] server_name`` (the rig sets ``127.0.0.1:<port>``), else from
  the request's Host header.
* newNonce (``share/acme2certifier_wsgi.py``): HEAD 200, GET 204, ``Replay-Nonce`` header.
* newAccount (``acme_srv/account.py`` ``_add_account_to_db``, ``_build_success_data``): new key
  -> 201, ``Location``, body ``{"status": "valid", "orders": ...}``; a key it already knows ->
  **200, the same Location, body ``{}``** (no ``status``: RFC 8555 7.3.1 clients that read the
  body as an account object fail here). ``{"onlyReturnExisting": true}`` and a POST-as-GET to the
  account URL answer 200 with the full object (``status``, ``key``, ``contact``, ``createdAt``).
  By default a ``contact`` is required (400 "Contact information is missing"; the rig sets
  ``[Account] contact_check_disable`` unless ``contact_required``).
* Orders (``acme_srv/order.py`` ``create_order``): every newOrder makes a new order (random
  name) with new pending authorizations: no reuse of pending/ready orders, and no reuse of valid
  authorizations across orders (each order validates again; ``[Authorization]
  prevalidated_domainlist`` skips validation for listed names). At most 20 identifiers per order
  (403 ``rejectedIdentifier`` "identifier limit exceeded"; ``[Order] identifier_limit``). Orders
  expire after 86400 s (``[Order] validity``). A ``replaces`` field is accepted and ignored.
* Synchronous: the challenge POST validates before it answers (the reply already says
  ``valid``/``invalid``; the order turns ``ready``), and finalize enrolls before it answers
  (``valid`` with ``certificate``; after ``[Certificate] enrollment_timeout`` = 5 s it stays
  ``processing``). The certificate is served as ``application/pem-certificate-chain``.
* Profiles: ``[Order] profiles`` (JSON object name -> description). An unknown profile is 403
  ``invalidProfile``, except that with exactly one profile configured it is silently replaced by
  that one; ``[Order] profiles_check_disable`` accepts anything. The order object does not echo
  ``profile``, and the openssl handler ignores it.
* ARI (``acme_srv/renewalinfo.py``): ``GET <renewalInfo>/<base64url AKI>.<base64url serial>``
  (RFC 9773; the old OCSP CertID form is accepted too) -> ``suggestedWindow`` from ``issued +
  85 %`` of the lifetime (``renewalthreshold_pctg``) to ``notAfter``, ``Retry-After: 86400``;
  ``renewal_force`` moves the window to [now + 1 d - 365 d, now + 1 d]. POST ``{certid,
  replaced}`` marks a cert replaced (an early draft's form).
* EAB (``acme_srv/account.py`` ``ExternalAccountBinding``, ``eabhandlers/file_handler.py``):
  CSV ``eab_kid,eab_mac``; ``eab_mac`` is the base64url HMAC key (the JWK ``k``); the inner JWS
  ``url`` must equal the outer one. ``eab_strict_mode`` (default True) sets
  ``meta.externalAccountRequired``.
* http-01 (``acme_srv/challenge_validators/http_validator.py``, ``acme_srv/helpers/network.py``
  ``url_get_dns_pinned``): the name is resolved (A, then AAAA) with dnspython against
  ``[DEFAULT] dns_server_list``, then ``GET http://<address>/.well-known/acme-challenge/<token>``
  with ``Host: <name>``: always port 80, no port option. So a responder for a name mapped to
  127.0.0.N must listen on 127.0.0.N:80 (root). ``http01_block_private_ips`` (default off) would
  refuse loopback. tls-alpn-01 connects to port 443; dns-01 asks the same DNS for TXT.
* ``dns_server_list`` takes addresses only: dnspython ``Resolver.nameservers`` raises
  ``ValueError`` for ``"127.0.0.1:8053"``. So the rig writes ``dns_server_list = ["<host>"]`` and
  the serving process pins dnspython itself to ``(host, port)`` before acme2certifier is imported
  (:func:`_pin_dns`): every ``dns.resolver.Resolver()`` skips ``/etc/resolv.conf`` and asks
  only the challtestsrv address and port, so no lookup can leave loopback.
* Other things a client can be tested against: ``[Directory] tos_url`` (then
  ``termsOfServiceAgreed`` is required), ``[Account] ecc_only``, ``[Order] identifier_limit``,
  ``[Challenge] http_01_support`` / ``dns_01_support`` / ``tls_alpn_01_support``,
  ``[Certificate] cert_reusage_timeframe`` (hands out an earlier certificate for the same CSR),
  ``[Certificate] enrollment_timeout`` (default 5 s, then the order stays ``processing``),
  ``keyChange``, account deactivation, ``revokeCert`` (the openssl handler writes the CRL).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import configparser
import datetime as dt
import importlib.util
import ipaddress
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lematt.testing.pebble import (
    _PROXY_VARS,
    LOOPBACK,
    RigError,
    _log_tail,
    _no_proxy_opener,
    _stop_process,
    make_test_ca_and_server_cert,
)

A2C_MODULE = "acme2certifier"  # the import name the package check looks for
A2C_VERSION = "0.46.3"  # the version the facts above were read from (pyproject's test extra)
INSTALL_HINT = ("pip install acme2certifier (pinned in the test extra: "
                "pip install -e '.[test]')")
OPENSSL_HANDLER = "acme2certifier.cahandlers.openssl_ca_handler"
EAB_FILE_HANDLER = "acme2certifier.eabhandlers.file_handler"
DEFAULT_CERT_VALIDITY_DAYS = 365  # the openssl handler's own default

_MODULE = "lematt.testing.acme2certifier"  # what the serving subprocess runs with -m
# The directory that holds the lematt package: on the subprocess's PYTHONPATH, so that a lematt
# run from a checkout (not installed) serves too, whatever the subprocess's working directory.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
_POLL_INTERVAL = 0.05  # seconds between readiness probes
_PROBE_TIMEOUT = 2.0  # per probe: the first directory GET also loads the CA handler
_LOG_NAME = "acme2certifier.log"


# --------------------------------------------------------------------------- the rig


@dataclass
class A2cRig:
    """A running acme2certifier on 127.0.0.1. Stop it with :meth:`stop`."""

    directory_url: str  # https://127.0.0.1:<port>/directory
    ca_bundle: Path  # PEM of the throwaway CA behind the rig's own HTTPS cert (caBundle)
    issuer_cert: Path  # PEM of the CA that signs the issued certificates
    port: int
    dns_server: tuple[str, int]  # where its resolver asks (challtestsrv)
    cert_validity_days: int
    workdir: Path
    config_path: Path  # acme_srv.cfg as written
    eab_kid: str | None = None
    eab_hmac_key: str | None = None  # base64url, unpadded: the JWK "k"
    profiles: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _log: IO[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / _LOG_NAME

    @property
    def base_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly ``ca_bundle`` (hostname checks stay on)."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def directory(self) -> dict[str, Any]:
        """GET the directory (verified HTTPS, no proxy)."""
        with _no_proxy_opener(self.ssl_context()).open(self.directory_url,
                                                        timeout=5.0) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    def pid(self) -> int:
        if self._proc is None:
            raise RigError("acme2certifier is not running")
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Terminate the process group (bounded waits, SIGKILL if needed). Idempotent."""
        _LIVE_RIGS[:] = [rig for rig in _LIVE_RIGS if rig is not self]
        if self._proc is not None:
            _stop_process(self._proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> A2cRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Rigs not yet stopped: the server runs in its own session, so nothing else would end it if a
# script dies before stop(); atexit does (same scheme as lematt.testing.pebble for Pebble).
_LIVE_RIGS: list[A2cRig] = []


@atexit.register
def _stop_live_rigs() -> None:
    for rig in list(_LIVE_RIGS):
        rig.stop()


# --------------------------------------------------------------------------- files


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_issuing_ca(workdir: Path, *, days: int = 3650) -> tuple[Path, Path]:
    """Create the throwaway CA acme2certifier signs with; returns ``(cert, key)`` PEM paths.

    Separate from the TLS CA of the rig's own HTTPS certificate, as with a real CA, so a test
    can tell "trusted for the API" from "issued by the CA". EC P-256 keeps it fast.
    """
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, f"lematt a2c rig issuing CA {secrets.token_hex(4)}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated: the handler stamps notBefore = now, which must not precede the issuer's.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        # Same key-id method as the handler's AKI (from_issuer_public_key): leaf AKI == our SKI.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "issuer-ca.pem", workdir / "issuer-ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _write_config(path: Path, sections: Mapping[str, Mapping[str, str]]) -> None:
    # acme2certifier reads it with interpolation=None and optionxform=str; write it the same way
    # so JSON values and '%' pass through untouched and key case is kept.
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    for section, values in sections.items():
        if section != "DEFAULT" and not parser.has_section(section):
            parser.add_section(section)
        for key, value in values.items():
            parser.set(section, key, value)
    with path.open("w", encoding="utf-8") as fh:
        parser.write(fh)


def _check_free(port: int) -> None:
    """Fail early and clearly when the port is taken (often a leftover rig of a killed run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise RigError(
                f"{LOOPBACK}:{port}/tcp is already in use ({exc.strerror}); a leftover "
                f"acme2certifier rig? See `ss -ltnp | grep {port}`") from exc


def _require_package() -> None:
    if importlib.util.find_spec(A2C_MODULE) is None:
        raise RuntimeError(
            f"Python package {A2C_MODULE!r} is not installed in {sys.executable}; the "
            f"acme2certifier tests need it: {INSTALL_HINT}")


# --------------------------------------------------------------------------- start


def start_acme2certifier(
    workdir: Path, *, port: int = 14500, dns_server: tuple[str, int] = (LOOPBACK, 8053),
    cert_validity_days: int = DEFAULT_CERT_VALIDITY_DAYS, eab: bool = False,
    eab_strict: bool = True, ari: bool = True, ari_renewal_force: bool = False,
    ari_threshold_percent: float | None = None, profiles: Mapping[str, str] | None = None,
    contact_required: bool = False, tos_url: str | None = None,
    identifier_limit: int | None = None,
    extra_config: Mapping[str, Mapping[str, str]] | None = None, debug: bool = False,
    startup_timeout: float = 30.0,
) -> A2cRig:
    """Start acme2certifier on https://127.0.0.1:<port>/directory and return once it answers.

    ``dns_server`` is the (loopback) DNS its validations resolve names with, normally the
    Pebble rig's challtestsrv. ``debug`` turns on acme2certifier's (very verbose) debug log.
    Raises ``RuntimeError`` if the package is missing, :class:`RigError` on any other failure.
    """
    _require_package()
    dns_host, dns_port = dns_server
    if not ipaddress.IPv4Address(dns_host).is_loopback:
        raise ValueError(f"dns_server {dns_server}: the rig uses loopback addresses only")
    if cert_validity_days < 1:
        raise ValueError("cert_validity_days: the openssl handler counts whole days, >= 1")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_free(port)

    ca_bundle, server_cert, server_key = make_test_ca_and_server_cert(workdir)
    issuer_cert, issuer_key = make_issuing_ca(workdir, days=max(3650, cert_validity_days + 30))
    cert_dir = workdir / "issued"
    cert_dir.mkdir(exist_ok=True)

    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {
            "debug": str(debug),
            # Fixed URLs in the directory whatever Host header a client sends.
            "server_name": f"{LOOPBACK}:{port}",
            # Addresses only (see the module docstring); the port is pinned in _pin_dns.
            "dns_server_list": json.dumps([dns_host]),
        },
        "Helper": {"log_format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "DBhandler": {"handler": "wsgi", "dbfile": str(workdir / "acme_srv.db")},
        "CAhandler": {
            "handler_module": OPENSSL_HANDLER,
            "issuing_ca_key": str(issuer_key),
            "issuing_ca_cert": str(issuer_cert),
            "issuing_ca_crl": str(workdir / "issuer-ca.crl"),
            "cert_save_path": str(cert_dir),
            "cert_validity_days": str(cert_validity_days),
        },
        # acme2certifier requires a contact by default; lematt's contactEmail is optional.
        "Account": {"contact_check_disable": str(not contact_required)},
        "Order": {},
        "Renewalinfo": {"renewalinfo_disable": str(not ari),
                        "renewal_force": str(ari_renewal_force)},
    }
    if ari_threshold_percent is not None:
        sections["Renewalinfo"]["renewalthreshold_pctg"] = str(ari_threshold_percent)
    if tos_url is not None:
        sections["Directory"] = {"tos_url": tos_url}
    if identifier_limit is not None:
        sections["Order"]["identifier_limit"] = str(identifier_limit)
    if profiles:
        sections["Order"]["profiles"] = json.dumps(dict(profiles))
    eab_kid = eab_hmac_key = None
    if eab:
        eab_kid, eab_hmac_key = f"rig-kid-{secrets.token_hex(4)}", _b64url(secrets.token_bytes(32))
        key_file = workdir / "eab_keys.csv"
        _write_private(key_file, f"eab_kid,eab_mac\n{eab_kid},{eab_hmac_key}\n".encode())
        sections["EABhandler"] = {"eab_handler_module": EAB_FILE_HANDLER,
                                  "key_file": str(key_file), "eab_strict_mode": str(eab_strict)}
    for section, values in (extra_config or {}).items():
        sections.setdefault(section, {}).update(values)
    config_path = workdir / "acme_srv.cfg"
    _write_config(config_path, sections)

    # The serving process never talks to a proxy: validations must reach loopback directly.
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env["ACME_SRV_CONFIGFILE"] = str(config_path)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_PACKAGE_PARENT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file as they happen
    argv = [sys.executable, "-m", _MODULE, "--host", LOOPBACK, "--port", str(port),
            "--cert", str(server_cert), "--key", str(server_key),
            "--dns-host", dns_host, "--dns-port", str(dns_port)]

    rig = A2cRig(directory_url=f"https://{LOOPBACK}:{port}/directory", ca_bundle=ca_bundle,
                 issuer_cert=issuer_cert, port=port, dns_server=(dns_host, dns_port),
                 cert_validity_days=cert_validity_days, workdir=workdir,
                 config_path=config_path, eab_kid=eab_kid, eab_hmac_key=eab_hmac_key,
                 profiles=dict(profiles or {}))
    _LIVE_RIGS.append(rig)
    try:
        rig._log = open(rig.log_path, "wb")  # noqa: SIM115 - closed by stop()
        # Own session = own process group: stop() signals the whole group.
        rig._proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=rig._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        _wait_ready(rig, startup_timeout)
    except BaseException:
        rig.stop()
        raise
    return rig


def _wait_ready(rig: A2cRig, timeout: float) -> None:
    """Poll the directory until it answers with newNonce, bounded in time and count."""
    deadline = time.monotonic() + timeout
    opener = _no_proxy_opener(rig.ssl_context())
    last_error = "not probed yet"
    for _ in range(int(timeout / _POLL_INTERVAL) + 1):
        proc = rig._proc
        if proc is not None and proc.poll() is not None:
            raise RigError(f"acme2certifier exited with status {proc.returncode} during "
                           f"startup\n--- {rig.log_path} (tail) ---\n{rig.log_tail()}")
        try:
            with opener.open(rig.directory_url, timeout=_PROBE_TIMEOUT) as response:
                directory = json.loads(response.read())
            if "newNonce" in directory:
                return
            last_error = f"directory without newNonce: {directory}"
        except (OSError, ValueError) as exc:
            # A 403 here is acme2certifier's "error in ca_handler configuration": keep polling
            # until the deadline so the log tail below shows the handler's complaint.
            last_error = f"{rig.directory_url}: {exc}"
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    raise RigError(f"acme2certifier not ready after {timeout:.0f} s (last: {last_error})\n"
                   f"--- {rig.log_path} (tail) ---\n{rig.log_tail()}")


# --------------------------------------------------------------------------- serving process


def _pin_dns(host: str, port: int) -> None:
    """Make every dnspython resolver in this process ask only ``host:port``.

    acme2certifier's ``dns_server_list`` cannot carry a port, and a default
    ``dns.resolver.Resolver()`` reads the machine's /etc/resolv.conf (not loopback). The
    subclass ignores that file, starts with ``[host]`` and keeps ``port`` when acme2certifier
    assigns its own ``nameservers`` list (dnspython applies ``self.port`` to plain addresses).
    """
    import dns.resolver  # a dependency of acme2certifier, present whenever it is

    class PinnedResolver(dns.resolver.Resolver):
        def __init__(self, filename: Any = "/etc/resolv.conf", configure: bool = True) -> None:
            super().__init__(filename, configure=False)
            self.nameservers = [host]
            self.port = port

    dns.resolver.Resolver = PinnedResolver  # type: ignore[misc]
    dns.resolver.default_resolver = None  # rebuilt from the pinned class on first use


def _serve(argv: list[str] | None = None) -> None:
    """Entry point of the subprocess: HTTPS + threads around acme2certifier's WSGI app."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--dns-host", required=True)
    parser.add_argument("--dns-port", type=int, required=True)
    args = parser.parse_args(argv)

    _pin_dns(args.dns_host, args.dns_port)  # before acme2certifier imports dns.resolver users
    # Importing the module boots acme2certifier: config, logging, database, handler checks.
    from acme2certifier.share.acme2certifier_wsgi import application
    from werkzeug.serving import make_server

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server = make_server(args.host, args.port, application, threaded=True,
                         ssl_context=context)
    print(f"a2c rig serving https://{args.host}:{args.port}/directory "
          f"(DNS {args.dns_host}:{args.dns_port})", flush=True)
    # SIGTERM's default action ends the process; SQLite keeps the database consistent.
    server.serve_forever()


if __name__ == "__main__":
    _serve()
