"""The ``verify`` entries of an actions section: endpoints that must serve the new certificate.

Contract: ``parse_endpoint(item)`` turns one entry into an ``Endpoint`` or raises
``ValueError`` with a sentence saying what is wrong and how to write it (the caller adds
file, line and section). Pure: no I/O, no name resolution.

Accepted forms::

    "https://host[:port]"        direct TLS, port 443 by default
    "tls://host:port"            direct TLS on any port (IMAPS 993, SMTPS 465, LDAPS ...)
    "smtp://host[:port]"         SMTP, port 25 by default (587 too): EHLO, STARTTLS
    "imap://host[:port]"         IMAP, port 143 by default: STARTTLS
    {"connect": "ADDR:PORT", "name": "host", "scheme": "https"}

``host`` is a host name or an IP address (``[v6]`` in brackets); nothing else may follow the
port (no path, user or query: an entry is an address, not a page). The mapping form reaches
a backend directly: ``connect`` is where to connect, ``name`` the server name (SNI) to ask
for, and only the certificates that carry ``name`` are checked there; ``scheme`` (default
``tls``) says how to start TLS. Without ``name`` the server name asked for is each
certificate's own first name.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from lematt.names import validate_dns_name

SCHEMES = ("https", "tls", "smtp", "imap")
STARTTLS_SCHEMES = ("smtp", "imap")
DEFAULT_PORTS = {"https": 443, "smtp": 25, "imap": 143}
EXAMPLE = ('"https://www.example.com", "smtp://mail.example.com:587" or '
           '{"connect": "10.0.0.5:443", "name": "www.example.com"}')



@functools.cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """URL, HOST[:PORT] and host label patterns, compiled when a verify entry is first read
    (not at import: every cron run imports this module, few configs have entries)."""
    url = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)", re.DOTALL)
    host_port = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+))"
                           r"(?::(?P<port>[0-9]{1,5}))?/?")
    # A host to connect to may be a single label ("localhost", a name from /etc/hosts),
    # unlike a certificate name; each label LDH, 1-63 characters.
    label = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
    return url, host_port, label


@dataclass(frozen=True)
class Endpoint:
    """Where to look for a served certificate, and how to start TLS there."""

    scheme: str  # one of SCHEMES
    host: str  # host name (lowercase) or IP address, as connected to
    port: int
    name: str | None = None  # the server name (SNI) to ask for; None: each certificate's

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        shown = f"{self.scheme}://{host}:{self.port}"
        return f"{shown} ({self.name})" if self.name else shown


def parse_endpoint(item: object) -> Endpoint:
    """One ``verify`` entry (a string or a mapping of connect/name/scheme) as an Endpoint."""
    if isinstance(item, str):
        return _parse_url(item)
    if isinstance(item, dict):
        return _parse_mapping(item)
    raise ValueError(f"{item!r} is not an endpoint; write one like {EXAMPLE}")


def _parse_url(text: str) -> Endpoint:
    match = _patterns()[0].fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an endpoint URL; write one like {EXAMPLE}")
    scheme = _scheme(match["scheme"])
    host, port = _host_port(match["rest"], scheme, text)
    return Endpoint(scheme, host, port)


def _parse_mapping(item: dict[object, object]) -> Endpoint:
    unknown = sorted(str(k) for k in item if k not in ("connect", "name", "scheme"))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in a verify mapping (allowed: connect, "
                         f"name, scheme); write one like {EXAMPLE}")
    connect = item.get("connect")
    if not isinstance(connect, str) or not connect.strip():
        raise ValueError("a verify mapping needs 'connect': \"ADDRESS:PORT\"")
    scheme = _scheme(item.get("scheme", "tls"))
    host, port = _host_port(connect.strip(), scheme, connect)
    name = item.get("name")
    if name is None:
        return Endpoint(scheme, host, port)
    if not isinstance(name, str):
        raise ValueError(f"'name' must be a host name, not {name!r}")
    try:
        return Endpoint(scheme, host, port, validate_dns_name(name))
    except ValueError as exc:
        raise ValueError(f"'name' {name!r} is not a valid DNS name ({exc}); write the name "
                         "the certificate carries, asked for as the server name") from None


def _scheme(value: object) -> str:
    scheme = value.lower() if isinstance(value, str) else value
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {value!r} is not one lematt can check (one of "
                         f"{', '.join(SCHEMES)})")
    assert isinstance(scheme, str)
    return scheme


def _host_port(text: str, scheme: str, written: str) -> tuple[str, int]:
    _, host_port, label_re = _patterns()
    match = host_port.fullmatch(text)
    if not match:
        raise ValueError(f"{written!r}: expected HOST[:PORT] (a host name or IP address, "
                         "[IPv6] in brackets, nothing after the port)")
    host = match["v6"] or match["host"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if match["v6"] is not None:
            raise ValueError(f"{written!r}: {host!r} is not an IPv6 address") from None
        host = host.lower()
        labels = host.split(".")
        if len(host) > 253 or not all(label_re.fullmatch(label) for label in labels):
            raise ValueError(f"{written!r}: {host!r} is not a host name (letters, digits "
                             "and hyphens, labels separated by dots) nor an IP address") \
                from None
    else:
        if match["host"] is not None and address.version == 6:
            raise ValueError(f"{written!r}: write an IPv6 address in brackets, [{host}]")
        host = str(address)
    if match["port"] is None:
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"{written!r}: {scheme}:// needs a port (tls://HOST:PORT)")
        return host, DEFAULT_PORTS[scheme]
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"{written!r}: port {port} is not between 1 and 65535")
    return host, port
