"""Read the leaf certificate an endpoint serves for one server name and one key type.

Contract: ``served_leaf(endpoint, sni, key_type, timeout)`` connects (direct TLS, or plain
then SMTP/IMAP STARTTLS), completes a TLS handshake asking for ``sni`` and offering only
what a ``key_type`` certificate can serve, and returns the leaf's DER bytes; everything that
goes wrong - no connection, a refused or broken handshake, a STARTTLS dialogue that is not
one, silence - is a ``ProbeError`` whose message is one escaped line, within ``timeout``
seconds in all. The chain is read, never trusted: the caller compares fingerprints.

Why TLS 1.2 is pinned: a server that holds an RSA and an EC certificate picks one from what
the client offers. In TLS 1.2 the cipher suite names the certificate's key type
(ECDHE-RSA-* vs ECDHE-ECDSA-*), and Python's ``ssl`` can restrict the suites. In TLS 1.3 the
suites say nothing of the key; only the signature_algorithms extension does, and ``ssl``
(3.11) offers no way to set it. So the probe speaks TLS 1.2 to ask for each key type in
turn. A server that refuses TLS 1.2 is asked once more in TLS 1.3; what it serves is checked
only if it is of the wanted type.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from contextlib import suppress

from lematt.config.endpoints import Endpoint
from lematt.crypto import certificate_key_type
from lematt.errors import CryptoError, LemattError, printable
from lematt.model import KeyType

# Suites whose server authentication is RSA, resp. ECDSA. Plain-RSA key exchange is in the
# RSA list so that an old server without ECDHE is still read. @SECLEVEL=0: a weak old
# certificate must be read (and reported as not the stored one), not refused.
_CIPHERS = {
    "rsa": "ECDHE+aRSA:DHE+aRSA:kRSA:!eNULL:@SECLEVEL=0",
    "ec": "ECDHE+aECDSA:!eNULL:@SECLEVEL=0",
}
_SUITES = {"rsa": "ECDHE-RSA/RSA", "ec": "ECDHE-ECDSA"}
# OpenSSL's reasons for "this server does not speak TLS 1.2" and "no suite in common".
_VERSION_REFUSED = frozenset({"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL",
                              "NO_PROTOCOLS_AVAILABLE"})
_NO_SHARED_SUITE = frozenset({"SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER"})
_LINE_LIMIT = 4096  # longest protocol line accepted before STARTTLS (SMTP allows 512)
_MAX_LINES = 100  # lines of one reply (an EHLO lists a dozen extensions)


class ProbeError(LemattError):
    """The endpoint's certificate could not be read; the message says why."""


def client_context(key_type: KeyType) -> ssl.SSLContext:
    """A TLS 1.2 client context that reads any certificate and offers only ``key_type``'s
    suites (see the module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The chain is compared with the stored one byte for byte, not trusted: an expired or
    # self-signed old certificate must be read and reported, so no verification here.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_CIPHERS[key_type])
    return ctx


def _tls13_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def served_leaf(endpoint: Endpoint, sni: str, key_type: KeyType,
                      timeout: float) -> bytes:
    """The DER leaf ``endpoint`` serves for ``sni`` and ``key_type`` (see module contract)."""
    try:
        async with asyncio.timeout(timeout):
            try:
                return await _read_leaf(endpoint, sni, client_context(key_type), timeout)
            except ssl.SSLError as exc:
                if exc.reason not in _VERSION_REFUSED:
                    raise
            # A server that speaks only TLS 1.3 cannot be asked for a key type: take what
            # it serves, and check it only if it is of the type wanted.
            der = await _read_leaf(endpoint, sni, _tls13_context(), timeout)
            try:
                served_type = certificate_key_type(der)
            except CryptoError as exc:
                raise ProbeError(f"the server sent {exc}") from None
            if served_type != key_type:
                raise ProbeError(f"the server speaks only TLS 1.3, where lematt cannot ask "
                                 f"for the {key_type.upper()} certificate; it served "
                                 f"{served_type.upper()}")
            return der
    except TimeoutError:
        raise ProbeError(f"no TLS handshake within {round(timeout, 1):g} s") from None
    except ssl.SSLError as exc:
        reason = printable(exc.reason or str(exc), 200)
        if exc.reason in _NO_SHARED_SUITE:
            raise ProbeError(f"TLS handshake failed ({reason}): the server refused every "
                             f"{_SUITES[key_type]} suite; it has no {key_type.upper()} "
                             f"certificate for {sni}?") from None
        raise ProbeError(f"TLS handshake failed ({reason})") from None
    except (asyncio.IncompleteReadError, ConnectionResetError):
        raise ProbeError(f"the server closed the connection (asked for {sni}, "
                         f"{_SUITES[key_type]} suites)") from None
    except ConnectionRefusedError:
        raise ProbeError("cannot connect: connection refused") from None
    except socket.gaierror as exc:
        raise ProbeError(f"cannot connect: {printable(exc.strerror or str(exc), 200)}") \
            from None
    except OSError as exc:
        raise ProbeError(f"the connection failed: {printable(exc.strerror or str(exc), 200)}") \
            from None
    except ValueError as exc:  # a line over the reader's limit
        raise ProbeError(f"the server sent an overlong line ({printable(str(exc), 100)})") \
            from None


async def _read_leaf(endpoint: Endpoint, sni: str, ctx: ssl.SSLContext,
                     timeout: float) -> bytes:
    writer: asyncio.StreamWriter | None = None
    try:
        if endpoint.scheme in ("https", "tls"):
            _, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=ctx, server_hostname=sni,
                ssl_handshake_timeout=timeout, limit=_LINE_LIMIT)
        else:
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, limit=_LINE_LIMIT)
            if endpoint.scheme == "smtp":
                await _smtp_starttls(reader, writer)
            else:
                await _imap_starttls(reader, writer)
            await writer.start_tls(ctx, server_hostname=sni, ssl_handshake_timeout=timeout)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            raise ProbeError("the server sent no certificate")
        return bytes(der)
    finally:
        if writer is not None:
            # abort, not close: a polite TLS shutdown would wait on a peer that may never
            # answer, and nothing was sent that needs one.
            with suppress(Exception):
                writer.transport.abort()


async def _line(reader: asyncio.StreamReader) -> str:
    raw = await reader.readline()
    if not raw:
        raise ProbeError("the server closed the connection before STARTTLS")
    return raw.decode("latin-1").rstrip("\r\n")


async def _smtp_reply(reader: asyncio.StreamReader, expected: str) -> list[str]:
    """One SMTP reply (RFC 5321 4.2: "CODE-text" lines, the last "CODE text")."""
    lines: list[str] = []
    for _ in range(_MAX_LINES):
        line = await _line(reader)
        lines.append(line)
        if len(line) < 3 or not line[:3].isdigit():
            raise ProbeError(f"not an SMTP reply: '{printable(line, 120)}'")
        if line[3:4] != "-":
            if line[:3] != expected:
                raise ProbeError(f"the SMTP server answered '{printable(line, 120)}'")
            return lines
    raise ProbeError(f"an SMTP reply of more than {_MAX_LINES} lines")


async def _smtp_starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _smtp_reply(reader, "220")
    # RFC 5321 4.1.4: EHLO names the client; the address literal of this end is always true.
    local = writer.get_extra_info("sockname")
    address = local[0] if local else "127.0.0.1"
    literal = f"[IPv6:{address}]" if ":" in address else f"[{address}]"
    writer.write(f"EHLO {literal}\r\n".encode())
    extensions = await _smtp_reply(reader, "250")
    if not any(line[4:].strip().upper() == "STARTTLS" for line in extensions[1:]):
        raise ProbeError("the SMTP server does not offer STARTTLS")
    writer.write(b"STARTTLS\r\n")
    await _smtp_reply(reader, "220")


async def _imap_starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _line(reader)
    if not greeting.upper().startswith("* OK"):
        raise ProbeError(f"not an IMAP greeting: '{printable(greeting, 120)}'")
    writer.write(b"L1 STARTTLS\r\n")  # RFC 9051 6.2.1
    for _ in range(_MAX_LINES):
        line = await _line(reader)
        if line.startswith("L1 "):
            if line[3:].upper().startswith("OK"):
                return
            raise ProbeError(f"the IMAP server answered '{printable(line, 120)}'")
    raise ProbeError(f"no answer to STARTTLS within {_MAX_LINES} lines")
