"""Which URLs lematt follows from a CA: its directory's origin, and the origins allowed in config.

Contract: ``OriginPolicy(directory_url, allowed)`` knows the directory's origin (scheme, host,
port; RFC 6454 section 4) and the extra origins of ``caAllowedOrigins``. ``policy.check(url,
what)`` returns the URL parsed exactly as aiohttp will use it (a ``yarl.URL``), or raises
``AcmeError`` saying which URL was refused and why, before any byte is sent there:

* only absolute ``https://`` URLs (``http://`` only when the directory itself is a plain-http
  loopback test CA), never from https to http: an allowed ``http://`` origin is ignored when
  the directory is ``https://``;
* ASCII without whitespace or control characters (RFC 3986 section 2), no user name or
  password (section 3.2.1: a CA has no reason to send one, aiohttp would send it as Basic
  auth);
* host and port equal to the directory's or to an allowed origin's (host compared as text:
  ``127.1`` and ``127.0.0.1`` are different origins, as for a browser).

Why: every URL after the directory comes from the CA's replies (Location, order, authz,
challenge, finalize and certificate URLs), so a compromised or misconfigured CA - or anything
that can change its replies - could otherwise send lematt's signed requests in cleartext to
another host, or hand it a certificate from one. ``Transport.send`` calls ``check`` for every
request, so no code path can go around it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import yarl

from lematt.errors import AcmeError

# RFC 3986 section 2: a URL is printable ASCII without spaces.
_URL_CHARS = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _parse(url: str) -> yarl.URL | None:
    if not _URL_CHARS.fullmatch(url):
        return None
    try:
        parsed = yarl.URL(url)
    except ValueError:
        return None
    if not parsed.is_absolute() or parsed.scheme not in ("https", "http") or not parsed.host:
        return None
    return parsed


def origin_of(url: str) -> Origin | None:
    """The origin of an absolute http(s) URL; None for anything else."""
    parsed = _parse(url)
    if parsed is None or parsed.port is None or parsed.host is None:
        return None
    return Origin(parsed.scheme, parsed.host.lower(), parsed.port)


class OriginPolicy:
    def __init__(self, directory_url: str, allowed: Iterable[str] = ()) -> None:
        home = origin_of(directory_url)
        if home is None:
            raise AcmeError(f"the ACME directory URL {directory_url} is not an http(s) URL")
        self.home = home
        origins = {home}
        for text in allowed:
            origin = origin_of(text)
            # Never from https to http, whatever the config says (it refuses that too).
            if origin is not None and (origin.scheme == "https" or home.scheme == "http"):
                origins.add(origin)
        self.origins = frozenset(origins)

    def check(self, url: str, what: str = "") -> yarl.URL:
        """``url`` parsed, if lematt may send a request there; else ``AcmeError``."""
        head = f"{what}: " if what else ""
        parsed = _parse(url)
        if parsed is None:
            raise AcmeError(f"{head}the CA sent {url[:200]!r}, which is not an absolute "
                            "http(s) URL; lematt sent nothing there")
        if parsed.user is not None or parsed.password is not None:
            raise AcmeError(f"{head}the CA sent the URL {url[:200]} with a user name in it; "
                            "lematt sent nothing there")
        origin = origin_of(url)
        if origin in self.origins:
            return parsed
        if origin is not None and origin.scheme == "http" and self.home.scheme == "https":
            raise AcmeError(
                f"{head}the CA sent the plain-http URL {url[:200]} although its directory is "
                f"at {self.home}; lematt never sends requests to the CA in cleartext and sent "
                "nothing there")
        raise AcmeError(
            f"{head}the CA sent the URL {url[:200]}, which is not on its directory's origin "
            f"{self.home}; lematt sent nothing there (if this CA really serves from several "
            "hosts, list them in caAllowedOrigins)")
