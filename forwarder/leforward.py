#!/usr/bin/env python3
"""leforward: the http-01 redirector lematt runs on a remote host for the minutes an order takes.

Contract
--------
- Listens on ``--listen`` (default ``:80``) and answers ``GET``/``HEAD
  /.well-known/acme-challenge/TOKEN`` (TOKEN: 1-256 base64url characters) with ``301`` to
  ``BASEURL/.well-known/acme-challenge/TOKEN``. Every other target is 404, other methods 405,
  malformed requests 400; one request per connection (``Connection: close``).
- Prints exactly one line ``READY ADDR:PORT`` (the bound address) on stdout once it listens, and
  nothing else on stdout. Everything else (one line per request, warnings, errors) goes to stderr.
- Ends with status 0 when stdin reaches end-of-file (the SSH session that started it ended), on
  SIGTERM, SIGHUP or SIGINT, and after ``--max-seconds``, whichever comes first.
- Exit status: 0 normal end, 1 cannot listen (the message says why), 2 usage error.

Self-contained on purpose: standard library only, Python >= 3.8, POSIX. This one file is copied
to ``/usr/local/bin/leforward``, run as ``python3 -m forwarder``, or sent over SSH to a remote
``python3`` on stdin (see ``forwarder.remote_command``), so it must not import anything of lematt.
"""

# asyncio.TimeoutError is a different class from the builtin TimeoutError before Python 3.11, and
# this file must run on 3.8, so ruff's UP041 rewrite would break it there.
# ruff: noqa: UP041

from __future__ import annotations  # annotations stay strings: 3.9+ syntax in them is safe on 3.8

import argparse
import asyncio
import contextlib
import email.utils
import errno
import ipaddress
import math
import os
import re
import select
import signal
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable

EXIT_OK = 0
EXIT_BIND = 1
EXIT_USAGE = 2

READY_PREFIX = "READY "
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"

# RFC 8555 section 8.1: the token is base64url without padding; 256 bounds what we echo back.
_CHALLENGE_TARGET = re.compile(r"/\.well-known/acme-challenge/([A-Za-z0-9_-]{1,256})")
_TOKEN_CHARS = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 section 5.6.2 tchar
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

MAX_REQUEST_LINE = 1024  # longer request lines are answered 404 without being parsed
MAX_HEAD_LINE = 8192  # stream buffer limit: no single line is buffered beyond this
MAX_HEADERS = 64
MAX_HEAD_BYTES = 16384
MAX_CONNECTIONS = 512  # stays below the usual 1024 open-file soft limit
LINGER_SECONDS = 2.0
LINGER_BYTES = 65536
WRITE_TIMEOUT = 5.0

_REASONS = {
    301: "Moved Permanently",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


def log(message: str) -> None:
    """Write one line to stderr; never raises (a vanished SSH session must not crash the server)."""
    try:
        sys.stderr.write("leforward: " + message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def printable(text: str, limit: int = 200) -> str:
    """``text`` with control and non-ASCII characters escaped and cut to ``limit`` characters,
    so a hostile request line cannot forge log lines or drive a terminal."""
    out = "".join(c if 32 <= ord(c) < 127 else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


class BaseUrl:
    """A validated ``--baseurl``: ``origin`` is ``scheme://host[:port]`` with no trailing slash."""

    def __init__(self, origin: str, host: str, port: int, host_is_ip: bool) -> None:
        self.origin = origin
        self.host = host
        self.port = port  # effective port: the explicit one, else the scheme's default
        self.host_is_ip = host_is_ip


def parse_baseurl(text: str) -> BaseUrl:
    """Validate a redirect base URL: http or https, a host, an optional port, and nothing else.

    Raises ValueError with a sentence for the user. The result goes verbatim into a Location
    header, so anything that is not a plain host name, IP literal or port is refused here.
    """
    if not text or any(not 32 < ord(c) < 127 for c in text):
        raise ValueError("must be ASCII without spaces or control characters "
                         "(write an internationalised host name in its xn-- form)")
    if "?" in text or "#" in text:
        raise ValueError("must not have a query or fragment")
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not text[len(scheme) + 1:].startswith("//") or not parts.netloc:
        raise ValueError("needs a host, as in http://central.example.org")
    if parts.path not in ("", "/"):
        raise ValueError(f"must not have a path ({parts.path}): the forwarder appends "
                         f"{CHALLENGE_PREFIX}TOKEN itself")
    if "@" in parts.netloc:
        raise ValueError("must not contain a user name or password")
    match = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+)(?::([0-9]{1,5}))?", parts.netloc)
    if match is None:
        raise ValueError(f"has an invalid host or port: {parts.netloc}")
    host, port_text = match.group(1), match.group(2)
    host_is_ip = True
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"has an invalid IPv6 address: {host}") from None
        if "%" in host:
            raise ValueError(f"must not use an IPv6 zone index: {host}")
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            host_is_ip = False
            labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
            if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
                raise ValueError(f"has an invalid host name: {host}") from None
    if port_text is None:
        port = 80 if scheme == "http" else 443
    else:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, not {port_text}")
    origin = scheme + "://" + parts.netloc
    return BaseUrl(origin, host, port, host_is_ip)


def baseurl_warnings(base: BaseUrl) -> list[str]:
    """Sentences about a base URL that validates here but that Let's Encrypt will not follow.

    Let's Encrypt's challenge-types documentation (letsencrypt.org/docs/challenge-types/,
    HTTP-01): its implementation follows redirects "only to ports 80 or 443" and "does not accept
    redirects to IP addresses". Test CAs such as Pebble do not have these limits, so only warn.
    """
    warnings = []
    if base.port not in (80, 443):
        warnings.append(f"warning: --baseurl uses port {base.port}, but Let's Encrypt follows "
                        "redirects only to ports 80 and 443")
    if base.host_is_ip:
        warnings.append(f"warning: --baseurl host {base.host} is an IP address, but Let's "
                        "Encrypt does not follow redirects to IP addresses")
    return warnings


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[IPv6]:PORT`` or ``:PORT`` -> (address or "" for all, port).

    Only IP literals: the forwarder must not depend on name resolution on the remote host.
    Raises ValueError with a sentence for the user.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise ValueError("expected ADDR:PORT, [IPv6]:PORT or :PORT with a port up to 65535, "
                         f"not {text!r}")
    if host == "":
        return "", int(port_text)
    if host.startswith("[") and host.endswith("]") and "%" not in host:
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port_text)
        except ValueError:
            pass
    else:
        try:
            return str(ipaddress.IPv4Address(host)), int(port_text)
        except ValueError:
            pass
    raise ValueError("address must be an IPv4 address, [IPv6] in brackets, or empty for all "
                     f"addresses, not {host!r}")


def format_address(host: str, port: int) -> str:
    """The ``ADDR:PORT`` form used in the READY line: IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_ready_line(line: str) -> tuple[str, int] | None:
    """(address, port) from a ``READY ADDR:PORT`` line, or None when the line is something else."""
    line = line.strip()
    if not line.startswith(READY_PREFIX):
        return None
    host, sep, port = line[len(READY_PREFIX):].rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def redirect_location(origin: str, target: str) -> str | None:
    """The Location for a request target, or None when the target is not exactly a challenge path.

    Anything else (``..``, percent-escapes, a query, absolute-form, a second slash) does not
    match: the forwarder must never redirect a path the CA would not ask for.
    """
    match = _CHALLENGE_TARGET.fullmatch(target)
    return None if match is None else origin + CHALLENGE_PREFIX + match.group(1)


def build_response(status: int, location: str | None = None) -> bytes:
    """A complete, bodiless HTTP/1.1 response head that closes the connection."""
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}",
             "Date: " + email.utils.formatdate(usegmt=True)]
    if location is not None:
        lines.append("Location: " + location)
    if status == 405:
        lines.append("Allow: GET, HEAD")  # RFC 9110 section 15.5.6: a 405 must say what is allowed
    lines += ["Content-Length: 0", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("ascii")


class RequestError(Exception):
    """A request that gets an error status; ``request`` is what the log line shows."""

    def __init__(self, status: int, request: str) -> None:
        super().__init__(status, request)
        self.status = status
        self.request = request


class ClientGone(Exception):
    """The client closed the connection before sending a complete request head."""


async def _read_line(reader: asyncio.StreamReader, too_long: RequestError) -> bytes:
    """One line including its LF; ``too_long`` when it exceeds the stream's buffer limit."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise too_long from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise RequestError(400, printable(exc.partial.decode("latin-1"))) from None
        raise ClientGone() from None


def parse_request_line(raw: bytes) -> tuple[str, str, str]:
    """(method, target, version) from a request line without its line ending.

    Raises RequestError: 400 when the line is not ``METHOD SP TARGET SP HTTP/x.y`` in printable
    ASCII, 505 for an HTTP version other than 1.x.
    """
    shown = printable(raw.decode("latin-1"))
    if any(not 32 <= b < 127 for b in raw):
        raise RequestError(400, shown)
    parts = raw.decode("ascii").split(" ")
    if len(parts) != 3 or not parts[1] or not _TOKEN_CHARS.fullmatch(parts[0].encode("ascii")):
        raise RequestError(400, shown)
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if match is None:
        raise RequestError(400, shown)
    if match.group(1) != "1":
        raise RequestError(505, shown)
    return method, target, version


async def read_request_head(reader: asyncio.StreamReader) -> tuple[str, str, str]:
    """Read one bounded request head; return (method, target, request line for the log).

    Header fields are checked for syntax and counted, then ignored: the answer depends only on
    the request line. Raises RequestError or ClientGone.
    """
    too_long = RequestError(404, f"<request line over {MAX_HEAD_LINE} bytes>")
    line = await _read_line(reader, too_long)
    if line in (b"\r\n", b"\n"):  # RFC 9112 section 2.2: ignore one empty line before a request
        line = await _read_line(reader, too_long)
    raw = line.rstrip(b"\r\n")
    if len(raw) > MAX_REQUEST_LINE:
        raise RequestError(404, f"<request line of {len(raw)} bytes>")
    method, target, _version = parse_request_line(raw)
    shown = printable(raw.decode("ascii"))
    total = len(line)
    for _count in range(MAX_HEADERS + 1):
        field = await _read_line(reader, RequestError(431, shown))
        if field in (b"\r\n", b"\n"):
            return method, target, shown
        total += len(field)
        if total > MAX_HEAD_BYTES:
            raise RequestError(431, shown)
        name, colon, value = field.rstrip(b"\r\n").partition(b":")
        # A leading space is obsolete line folding, and a space before the colon is forbidden:
        # RFC 9112 sections 5.1 and 5.2 tell servers to reject both with 400.
        if not colon or not _TOKEN_CHARS.fullmatch(name) or b"\r" in value or b"\0" in value:
            raise RequestError(400, shown)
    raise RequestError(431, shown)


class Forwarder:
    """Serves connections: one request each, every connection its own task with its own deadline."""

    def __init__(self, base: BaseUrl, request_timeout: float) -> None:
        self.base = base
        self.request_timeout = request_timeout
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio.start_server callback; never raises (an exception here would only be logged
        by asyncio as 'unhandled', and the connection would leak)."""
        peer = writer.get_extra_info("peername")
        peer_text = format_address(peer[0], peer[1]) if peer else "?"
        if self.connections >= MAX_CONNECTIONS:
            log(f"{peer_text} refused: {self.connections} connections open")
            writer.close()
            return
        self.connections += 1
        try:
            await self._serve_one(reader, writer, peer_text)
        except Exception as exc:  # a bug must cost one connection, not the forwarder
            log(f"{peer_text} internal error: {exc!r}")
        finally:
            self.connections -= 1
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: str) -> None:
        location = None
        try:
            method, target, shown = await asyncio.wait_for(read_request_head(reader),
                                                           self.request_timeout)
        except asyncio.TimeoutError:
            status, shown = 408, f"<no complete request head within {self.request_timeout:g} s>"
        except RequestError as exc:
            status, shown = exc.status, exc.request
        except (ClientGone, ConnectionError):
            log(f"{peer} closed the connection without a complete request")
            return
        else:
            if method not in ("GET", "HEAD"):
                status = 405
            else:
                location = redirect_location(self.base.origin, target)
                status = 404 if location is None else 301
        # Logged before answering, so whoever sees the answer can already read the log line.
        log(f'{peer} "{shown}" {status}')
        try:
            writer.write(build_response(status, location))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            await self._linger(reader, writer)
        except (OSError, asyncio.TimeoutError):
            pass  # the client went away; nothing to answer any more

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then read and drop what the client still sends, for a bounded time.

        Closing a socket with unread input makes the kernel send RST, which can destroy the
        response before the client reads it (RFC 9112 section 9.6, "lingering close").
        """
        if writer.can_write_eof():
            writer.write_eof()

        async def drain_input() -> None:
            received = 0
            while received < LINGER_BYTES:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                received += len(chunk)

        with contextlib.suppress(asyncio.TimeoutError, asyncio.LimitOverrunError):
            await asyncio.wait_for(drain_input(), LINGER_SECONDS)


def bind_error_message(err: int, address: str, port: int, detail: str) -> str:
    """The user-facing sentence for a failed bind, with what to do about it."""
    where = f"cannot listen on {address}: "
    if err == errno.EADDRINUSE:
        return where + f"port {port} is in use (another web server or forwarder listens there)"
    if err in (errno.EACCES, errno.EPERM):
        if port < 1024:
            return where + (
                f"permission denied binding port {port}: ports below 1024 need root, "
                "CAP_NET_BIND_SERVICE (setcap cap_net_bind_service=+ep "
                "$(readlink -f $(which python3))) or a lower net.ipv4.ip_unprivileged_port_start")
        return where + "permission denied: " + detail
    if err == errno.EADDRNOTAVAIL:
        return where + "the address is not configured on this host"
    return where + detail


class BindError(Exception):
    """Listening failed; ``errno`` is the socket error, str() the sentence for the user."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def _listen_socket(family: int, host: str, port: int, dual_stack: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a new forwarder bind while connections of the previous one sit in TIME_WAIT; on
        # Linux it does not let two listeners share the port, so "in use" is still detected.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(exc.errno or 0, bind_error_message(
            exc.errno or 0, format_address(host, port), port, exc.strerror or str(exc))) from None
    return sock


def listen(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket on (host, port); host "" means every address.

    "Every address" is one dual-stack IPv6 socket, so READY names a single address; hosts
    without IPv6 get 0.0.0.0 instead. Raises BindError.
    """
    if host:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return _listen_socket(family, host, port, dual_stack=False)
    try:
        return _listen_socket(socket.AF_INET6, "::", port, dual_stack=True)
    except BindError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
            raise
    except OSError:  # no IPv6 socket support at all
        pass
    return _listen_socket(socket.AF_INET, "0.0.0.0", port, dual_stack=False)


def watch_stdin(loop: asyncio.AbstractEventLoop, on_eof: Callable[[], None]) -> None:
    """Call ``on_eof()`` in the loop once stdin reaches end-of-file (bytes read are dropped).

    A blocking read in a daemon thread works for every kind of stdin (pipe, socket, pty, file,
    /dev/null), where the loop's add_reader refuses files; the thread sleeps in read(), no polling.
    A read error counts as end-of-file: stdin is gone either way.
    """
    def run() -> None:
        while True:
            try:
                if not os.read(0, 65536):
                    break
            except BlockingIOError:  # someone made the shared descriptor non-blocking
                select.select([0], [], [])
            except OSError:
                break
        # RuntimeError: the loop has already closed, so the forwarder is ending anyway.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(on_eof)

    threading.Thread(target=run, name="leforward-stdin", daemon=True).start()


async def serve(base: BaseUrl, host: str, port: int, max_seconds: float,
                request_timeout: float, stdin_watch: bool) -> int:
    """Listen, print READY, serve until a stop condition; return the exit status."""
    loop = asyncio.get_running_loop()
    try:
        sock = listen(host, port)
    except BindError as exc:
        log(str(exc))
        return EXIT_BIND
    stopped = asyncio.Event()
    reasons = []

    def stop(reason: str) -> None:
        reasons.append(reason)
        stopped.set()

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(signum, stop, "received " + signal.Signals(signum).name)
    forwarder = Forwarder(base, request_timeout)
    server = await asyncio.start_server(forwarder.handle, sock=sock, limit=MAX_HEAD_LINE)
    bound = sock.getsockname()
    address = format_address(bound[0], bound[1])
    try:
        sys.stdout.write(READY_PREFIX + address + "\n")
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        log(f"cannot write the READY line to stdout: {exc}")
    log(f"listening on {address}, redirecting {CHALLENGE_PREFIX}* to "
        f"{base.origin}{CHALLENGE_PREFIX}* for at most {max_seconds:g} s")
    loop.call_later(max_seconds, stop, f"reached --max-seconds {max_seconds:g}")
    if stdin_watch:
        watch_stdin(loop, lambda: stop("stdin reached end-of-file"))
    await stopped.wait()
    log("stopping: " + reasons[0])
    server.close()
    return EXIT_OK


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds greater than 0, not "
                                         f"{text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leforward", allow_abbrev=False,
        description=f"Redirect ACME http-01 challenge requests (GET/HEAD {CHALLENGE_PREFIX}TOKEN) "
                    "to the central challenge server at BASEURL; answer everything else 404.",
        epilog="Prints 'READY ADDR:PORT' on stdout once listening. Exits 0 at stdin end-of-file, "
               "on SIGTERM/SIGHUP/SIGINT or after --max-seconds; 1 if it cannot listen; "
               "2 on a usage error.")
    parser.add_argument("--baseurl", required=True, metavar="URL",
                        help="http(s)://host[:port] of the central challenge server (no path)")
    parser.add_argument("--listen", default=":80", metavar="ADDR:PORT",
                        help="IPv4:PORT, [IPv6]:PORT or :PORT for every address (default :80)")
    parser.add_argument("--max-seconds", type=_positive_seconds, default=600.0, metavar="N",
                        help="exit after N seconds, whatever happens (default 600)")
    parser.add_argument("--request-timeout", type=_positive_seconds, default=10.0, metavar="N",
                        help="seconds a client has to send its request head (default 10)")
    parser.add_argument("--no-stdin-watch", action="store_true",
                        help="do not exit at stdin end-of-file (for running it by hand or "
                             "under a service manager)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (argparse exits 2 itself on bad usage)."""
    parser = build_parser()
    options = parser.parse_args(argv)
    try:
        base = parse_baseurl(options.baseurl)
    except ValueError as exc:
        parser.error(f"--baseurl {printable(options.baseurl)}: {exc}")
    try:
        host, port = parse_listen(options.listen)
    except ValueError as exc:
        parser.error(f"--listen: {exc}")
    for warning in baseurl_warnings(base):
        log(warning)
    try:
        return asyncio.run(serve(base, host, port, options.max_seconds,
                                 options.request_timeout, not options.no_stdin_watch))
    except KeyboardInterrupt:  # SIGINT before the loop's own handler was installed
        log("stopping: interrupted")
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
