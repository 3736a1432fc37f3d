"""The ACME transport: one aiohttp session to one CA, and the rules every request follows.

Contract: ``async with open_transport(directory_url, signer, ...) as transport:`` opens ONE
aiohttp session (TLS trusting ``ca_bundle`` only when given, else the system roots), reads the
directory (RFC 8555 section 7.1.1, no hard-coded paths) and closes the session on every exit.

* Every request goes only to the directory's origin or an allowed one (``OriginPolicy``,
  checked in ``send``, which every request passes through): a URL from the CA on another
  origin, or plain http from an https CA, is an ``AcmeError`` and nothing is sent there.
* Every request has a timeout (``request_timeout``, which covers reading the body) and passes
  the ``RequestRateLimiter``. A body is read incrementally up to a limit (``MAX_JSON_BODY``;
  ``MAX_CHAIN_BODY`` for a certificate chain): a larger or endless one is an ``AcmeError``
  once the limit is passed, so memory stays bounded. Bodies are not decompressed (lematt asks
  for ``identity``): a small compressed body cannot expand into a large one.
* Nonces come from a pool fed by every ``Replay-Nonce`` header; ``newNonce`` is asked (HEAD)
  only when the pool is empty (section 7.2).
* ``post`` sends a JWS (section 6.2; ``payload=None`` is POST-as-GET, section 6.3);
  ``badNonce`` is retried up to ``MAX_BAD_NONCE_RETRIES`` times with a fresh nonce (6.5);
  429 and 503 are retried up to ``MAX_BUSY_RETRIES`` times after their Retry-After (seconds or
  HTTP-date, section 6.6); a Retry-After longer than ``MAX_RETRY_AFTER`` is not waited for:
  the problem is raised at once, since a cron run should not sit on a long rate limit;
  ``accountDoesNotExist`` for a kid-signed request calls ``on_account_gone`` once and resends.
* Every other problem document becomes ``AcmeProblem`` (with ``context`` saying what lematt
  was doing); network errors, timeouts and non-ACME replies become ``AcmeError`` naming the URL.
* ``poll`` starts soon (0.05 s), backs off to 2 s, honours Retry-After (capped at 10 s) and
  never runs past ``deadline`` (an ``anyio.current_time()`` value): then ``AcmeError``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import os
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urljoin

import aiohttp
import anyio

from lematt import __version__
from lematt.acme.jws import AccountSigner
from lematt.acme.limits import RequestRateLimiter
from lematt.acme.messages import Directory, parse_problem
from lematt.acme.origins import OriginPolicy
from lematt.errors import AcmeError, AcmeNetworkError, AcmeProblem, AcmeTimeoutError

DEFAULT_USER_AGENT = f"lematt/{__version__} aiohttp/{aiohttp.__version__}"
MAX_BAD_NONCE_RETRIES = 10
MAX_BUSY_RETRIES = 4
MAX_RETRY_AFTER = 60.0
BUSY_WAIT_WITHOUT_RETRY_AFTER = 1.0
POLL_FIRST_DELAY = 0.05
POLL_MAX_DELAY = 2.0
POLL_MAX_RETRY_AFTER = 10.0
NONCE_POOL_SIZE = 64
# ACME JSON bodies are a few kB; an order with many names stays far below this. A CA
# sending more is broken or hostile, and an endless body must not grow lematt's memory.
MAX_JSON_BODY = 4 << 20
# A PEM chain is a few kB (Let's Encrypt: leaf + one intermediate, about 4 kB).
MAX_CHAIN_BODY = 1 << 20

BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
ACCOUNT_DOES_NOT_EXIST = "urn:ietf:params:acme:error:accountDoesNotExist"
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{1,512}")  # RFC 8555 section 6.5.1: base64url
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Reply:
    """One HTTP answer, fully read."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise AcmeError(
                f"the CA's reply from {self.url} (HTTP {self.status}) is not JSON: "
                f"{self.body[:120]!r}; check the directory URL"
            ) from None

    def location(self) -> str:
        value = self.headers.get("Location")
        if not value:
            raise AcmeError(f"the CA's reply from {self.url} has no Location header (RFC 8555 7.1)")
        # RFC 9110 section 10.2.2: a relative reference is resolved against the request URL.
        # Where it points is checked like every URL, when a request is sent there.
        return urljoin(self.url, value.strip())

    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait for a Retry-After value, delay-seconds or HTTP-date (RFC 9110 10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if _DIGITS_RE.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def _read_body(resp: aiohttp.ClientResponse, url: str, limit: int, head: str) -> bytes:
    """The body, read as it arrives and never past ``limit`` bytes (else ``AcmeError``)."""
    def too_big() -> AcmeError:
        return AcmeError(f"{head}the CA's reply from {url} is larger than {limit >> 10} KiB; "
                         "lematt stopped reading it (a broken or hostile CA)")

    if resp.content_length is not None and resp.content_length > limit:
        raise too_big()
    body = bytearray()
    # iter_any hands over what arrived; aiohttp pauses reading the socket while its buffer
    # is full, so at most the limit plus one buffer is ever held.
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_big()
    return bytes(body)


def _ssl_context(ca_bundle: str | os.PathLike[str] | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise AcmeError(
            f"cannot load the CA bundle {ca_bundle}: {exc}; check caBundle in lematt.conf"
        ) from None


class Transport:
    """Signed and unsigned requests to one CA over one session (made by ``open_transport``)."""

    def __init__(self, session: aiohttp.ClientSession, directory: Directory,
                 signer: AccountSigner, rate_limiter: RequestRateLimiter,
                 request_timeout: float, origins: OriginPolicy | None = None) -> None:
        self._session = session
        self.directory = directory
        self.origins = origins if origins is not None else OriginPolicy(directory.url)
        self.signer = signer
        self._limiter = rate_limiter
        self._timeout = request_timeout
        self._nonces: deque[str] = deque(maxlen=NONCE_POOL_SIZE)
        # Set by the account layer: what to do when the CA no longer knows our kid.
        self.on_account_gone: Callable[[str], Awaitable[None]] | None = None

    async def send(
        self, method: str, url: str, *, data: bytes | None = None, accept: str | None = None,
        limit: int = MAX_JSON_BODY, what: str = "",
    ) -> Reply:
        """One HTTP exchange: origin check, rate limit, timeout, body limit, nonce harvest,
        library errors mapped. The one way lematt sends anything to the CA."""
        # The URL as aiohttp will use it, parsed once: what was checked is what is sent to.
        target = self.origins.check(url, what)
        head = f"{what}: " if what else ""
        await self._limiter.acquire(self.directory.endpoint_name(url))
        # No compressed bodies: lematt reads a body only up to a limit, and a decompressor
        # would let a few kB grow into gigabytes before that limit is seen.
        headers = {"Accept-Encoding": "identity"}
        if data is not None:
            headers["Content-Type"] = "application/jose+json"  # RFC 8555 section 6.2
        if accept is not None:
            headers["Accept"] = accept
        try:
            async with self._session.request(
                method, target, data=data, headers=headers, allow_redirects=False
            ) as resp:
                body = await _read_body(resp, url, limit, head)
                reply = Reply(url, resp.status, resp.headers, body)
        except TimeoutError:
            raise AcmeTimeoutError(
                f"{head}no answer from the CA at {url} within {self._timeout:g} s; "
                "the CA may be overloaded or unreachable, try again later"
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AcmeError(
                f"{head}the TLS certificate of the CA at {url} is not trusted "
                f"({exc.certificate_error}); for a private CA set caBundle in lematt.conf"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise AcmeNetworkError(
                f"{head}cannot connect to the CA at {url}: {exc.os_error.strerror or exc}; "
                "check the directory URL and this machine's network"
            ) from None
        except aiohttp.ClientError as exc:
            raise AcmeNetworkError(
                f"{head}talking to the CA at {url} failed: {exc or type(exc).__name__}; "
                "try again later"
            ) from None
        nonce = reply.headers.get("Replay-Nonce")
        if nonce and _NONCE_RE.fullmatch(nonce):
            self._nonces.append(nonce)
        return reply

    async def _busy_wait(self, reply: Reply, problem: AcmeProblem | None, what: str) -> None:
        """Sleep for a 429/503's Retry-After, or raise if it is longer than we wait."""
        wait = reply.retry_after()
        if wait is None:
            wait = BUSY_WAIT_WITHOUT_RETRY_AFTER
        if wait > MAX_RETRY_AFTER:
            raise self._error(reply, problem, f"{what} (the CA asks to retry after {wait:.0f} s)")
        await anyio.sleep(wait)

    def _error(self, reply: Reply, problem: AcmeProblem | None, what: str) -> Exception:
        if problem is not None:
            return dataclasses.replace(problem, context=what, retry_after=reply.retry_after())
        return AcmeError(
            f"{what}: the CA at {reply.url} answered HTTP {reply.status} without a problem "
            f"document: {reply.body[:200]!r}"
        )

    def _problem(self, reply: Reply) -> AcmeProblem | None:
        # RFC 8555 section 6.7: errors come as application/problem+json.
        if reply.content_type != "application/problem+json":
            return None
        return parse_problem(reply.json(), status=reply.status, url=reply.url)

    async def unsigned(self, method: str, url: str, what: str) -> Reply:
        """GET or HEAD (directory, newNonce) with the 429/503 retry."""
        for attempt in range(MAX_BUSY_RETRIES + 1):
            reply = await self.send(method, url, what=what)
            if reply.status < 400:
                return reply
            problem = self._problem(reply) if method != "HEAD" else None
            if reply.status in (429, 503) and attempt < MAX_BUSY_RETRIES:
                await self._busy_wait(reply, problem, what)
                continue
            raise self._error(reply, problem, what)
        raise AssertionError("unreachable")

    async def _nonce(self) -> str:
        if not self._nonces:
            await self.unsigned("HEAD", self.directory.new_nonce, "getting a nonce")
            if not self._nonces:
                raise AcmeError(
                    f"the CA's newNonce at {self.directory.new_nonce} sent no Replay-Nonce"
                )
        return self._nonces.pop()  # the newest nonce is the least likely to have expired

    async def post(
        self,
        url: str,
        payload: dict[str, Any] | None,
        what: str,
        *,
        use_jwk: bool = False,
        accept: str | None = None,
        recover_account: bool = True,
        limit: int = MAX_JSON_BODY,
    ) -> Reply:
        """A signed POST (``payload=None``: POST-as-GET) with badNonce and 429/503 retries;
        an account the CA no longer knows is registered again once (``recover_account``)."""
        bad_nonces = busy = 0
        registered_again = not recover_account
        # ``send`` refuses a foreign URL anyway; checking first also spends no nonce on it.
        self.origins.check(url, what)
        while True:
            nonce = await self._nonce()
            kid = self.signer.kid
            body = self.signer.sign(url, nonce, payload, use_jwk=use_jwk)
            reply = await self.send("POST", url, data=body, accept=accept, limit=limit,
                                    what=what)
            if reply.status < 400:
                return reply
            problem = self._problem(reply)
            if problem is not None and problem.type == BAD_NONCE:
                # RFC 8555 section 6.5: retry with the fresh nonce the error carried.
                if bad_nonces < MAX_BAD_NONCE_RETRIES:
                    bad_nonces += 1
                    continue
                raise self._error(
                    reply, problem, f"{what} (gave up after {bad_nonces} badNonce retries)"
                )
            if reply.status in (429, 503) and busy < MAX_BUSY_RETRIES:
                busy += 1
                await self._busy_wait(reply, problem, what)
                continue
            if (problem is not None and problem.type == ACCOUNT_DOES_NOT_EXIST
                    and not use_jwk and kid is not None and not registered_again
                    and self.on_account_gone is not None):
                # A remembered account URL the CA has forgotten (a test CA restarted, an
                # account removed): register the key again and resend (RFC 8555 7.3.1).
                registered_again = True
                await self.on_account_gone(kid)
                continue
            raise self._error(reply, problem, what)

    async def poll(
        self,
        url: str,
        deadline: float,
        parse: Callable[[Any, str], _T],
        done: Callable[[_T], bool],
        what: str,
    ) -> _T:
        start = anyio.current_time()
        delay = POLL_FIRST_DELAY
        with anyio.move_on_after(deadline - start):
            # Callers poll right after an answer that said "not yet" (the challenge or the
            # finalize reply): asking again at once would only cost a request and a nonce.
            await anyio.sleep(delay)
            delay *= 2
            while True:
                reply = await self.post(url, None, what)
                obj = parse(reply.json(), url)
                if done(obj):
                    return obj
                wait = delay
                retry_after = reply.retry_after()
                if retry_after is not None:
                    # RFC 8555 section 7.5.1 / 7.4: the server may say when to poll again.
                    wait = max(wait, min(retry_after, POLL_MAX_RETRY_AFTER))
                delay = min(delay * 2, POLL_MAX_DELAY)
                await anyio.sleep(wait)
        raise AcmeTimeoutError(
            f"timed out {what} after {max(0.0, deadline - start):.0f} s; "
            "the CA is slow or the validation hangs, try again later"
        )


@asynccontextmanager
async def open_transport(
    directory_url: str,
    signer: AccountSigner,
    *,
    ca_bundle: str | os.PathLike[str] | None = None,
    rate_limiter: RequestRateLimiter | None = None,
    request_timeout: float = 30.0,
    user_agent: str = DEFAULT_USER_AGENT,
    allowed_origins: tuple[str, ...] = (),
) -> AsyncIterator[Transport]:
    """Open the session, read the directory, yield the transport, always close the session.

    ``allowed_origins``: origins besides the directory's that the CA may send URLs on."""
    origins = OriginPolicy(directory_url, allowed_origins)
    connector = aiohttp.TCPConnector(ssl=_ssl_context(ca_bundle))
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # ACME uses no cookies; a real jar would filter and parse them on every request.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=request_timeout),
        # RFC 8555 section 6.1: clients must send a User-Agent.
        headers={"User-Agent": user_agent},
    )
    try:
        limiter = rate_limiter if rate_limiter is not None else RequestRateLimiter()
        placeholder = Directory(directory_url, "", "", "")
        transport = Transport(session, placeholder, signer, limiter, request_timeout, origins)
        reply = await transport.unsigned("GET", directory_url, "reading the ACME directory")
        transport.directory = Directory.from_json(reply.json(), directory_url)
        yield transport
    finally:
        with anyio.CancelScope(shield=True):
            await session.close()
