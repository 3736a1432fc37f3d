"""The ACME client: the operations of RFC 8555 for one account, over ``lematt.acme.transport``.

Contract: ``async with AcmeClient.open(directory_url, account_key, ...) as client:`` opens a
transport (one session, the directory read) and yields the client; every request follows the
transport's rules (timeouts, rate limits, nonces, retries, problem documents).

* The account: ``ensure_account`` uses a remembered account URL without a request, else
  registers; a CA that answers a known key with an empty body is asked for the account
  itself; when the CA no longer knows a remembered account (``accountDoesNotExist``), the key
  is registered again once and the request resent.
* Orders: new order, authorizations, challenges, finalize, polls under a deadline, download.
* Every URL the CA gives is followed only on the directory's origin or one in
  ``allowed_origins`` (``lematt.acme.origins``, enforced by the transport); an account URL
  on another origin is refused when it is learnt. Link headers are not followed at all
  (lematt needs neither alternate chains nor the ``up`` link: the chain is one download).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from lematt.acme.jws import AccountKey, AccountSigner, b64url
from lematt.acme.limits import RequestRateLimiter
from lematt.acme.messages import Account, Authorization, Challenge, Directory, Order, Status
from lematt.acme.transport import (
    DEFAULT_USER_AGENT,
    MAX_CHAIN_BODY,
    Reply,
    Transport,
    open_transport,
)
from lematt.errors import AcmeError


def _account_status(reply: Reply) -> Status | None:
    """The account status in a reply body, or None when the body has no account object."""
    try:
        data = json.loads(reply.body) if reply.body.strip() else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or "status" not in data:
        return None
    return Account.from_json(data, reply.url).status


class AcmeClient:
    """An ACME account session (construct with ``open``)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._contact_email: str | None = None
        self._remember: Callable[[str], None] | None = None
        self._account_lock = anyio.Lock()
        transport.on_account_gone = self._account_gone

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        directory_url: str,
        account_key: AccountKey | AccountSigner,
        *,
        ca_bundle: str | os.PathLike[str] | None = None,
        rate_limiter: RequestRateLimiter | None = None,
        request_timeout: float = 30.0,
        user_agent: str = DEFAULT_USER_AGENT,
        kid: str | None = None,
        allowed_origins: tuple[str, ...] = (),
    ) -> AsyncIterator[AcmeClient]:
        signer = (
            account_key if isinstance(account_key, AccountSigner) else AccountSigner(account_key)
        )
        if kid is not None:
            signer.kid = kid
        async with open_transport(directory_url, signer, ca_bundle=ca_bundle,
                                  rate_limiter=rate_limiter, request_timeout=request_timeout,
                                  user_agent=user_agent,
                                  allowed_origins=allowed_origins) as transport:
            yield cls(transport)

    @property
    def directory(self) -> Directory:
        return self._t.directory

    @property
    def kid(self) -> str | None:
        return self._t.signer.kid

    @property
    def thumbprint(self) -> str:
        return self._t.signer.thumbprint

    def key_authorization(self, token: str) -> str:
        """RFC 8555 section 8.1 key authorization for this account."""
        return self._t.signer.key_authorization(token)

    # --- ACME operations ---------------------------------------------------------------------

    async def ensure_account(
        self,
        contact_email: str | None,
        *,
        known_url: str | None = None,
        remember: Callable[[str], None] | None = None,
    ) -> str:
        """Use the account at ``known_url`` (no request: it is verified by the first signed
        request), or register this key (RFC 8555 section 7.3); return the account URL (kid).

        ``remember`` is called with every URL learnt by registering, also when a later
        request finds that the CA no longer knows the account and it is registered again."""
        self._contact_email = contact_email
        self._remember = remember
        if known_url is not None:
            self._t.signer.kid = known_url
            return known_url
        return await self._register()

    async def _register(self) -> str:
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if self._contact_email:
            payload["contact"] = [f"mailto:{self._contact_email}"]
        what = "registering the ACME account"
        # RFC 8555 section 7.3: 201 for a new account, 200 for the existing one of this key.
        reply = await self._t.post(self._t.directory.new_account, payload, what, use_jwk=True)
        kid = reply.location()
        # The account URL is our kid in every later request and is remembered across runs:
        # one on another origin is refused now, not at the first request that reads it.
        self._t.origins.check(kid, what)
        self._t.signer.kid = kid
        status = _account_status(reply)
        if status is None:
            # Some CAs answer a known key with 200 and an empty body (acme2certifier sends
            # ``{}``): read the account itself (POST-as-GET, section 7.3.3 / 6.3).
            status = _account_status(await self._t.post(
                kid, None, f"reading the account {kid}", recover_account=False))
        if status is not None and status != Status.VALID:
            self._t.signer.kid = None
            raise AcmeError(f"the ACME account {kid} is {status}; use a new account key")
        # No status even then: the CA accepted our key and gave us a URL - be liberal.
        if self._remember is not None:
            self._remember(kid)
        return kid

    async def _account_gone(self, stale_kid: str) -> None:
        """The CA said the account ``stale_kid`` does not exist: register again, once for all
        requests that learn it at the same time."""
        async with self._account_lock:
            if self._t.signer.kid == stale_kid:
                await self._register()

    async def new_order(self, names: Sequence[str]) -> tuple[Order, str]:
        """Create an order for ``names`` (RFC 8555 section 7.4); return it and its URL."""
        self._need_account()
        payload = {"identifiers": [{"type": "dns", "value": name} for name in names]}
        reply = await self._t.post(
            self._t.directory.new_order, payload, f"creating an order for {', '.join(names)}"
        )
        url = reply.location()
        return Order.from_json(reply.json(), url), url

    async def get_authorization(self, url: str) -> Authorization:
        reply = await self._t.post(url, None, f"fetching the authorization {url}")
        return Authorization.from_json(reply.json(), url)

    async def answer_challenge(self, url: str) -> Challenge:
        """Tell the CA the challenge is ready: POST ``{}`` (RFC 8555 section 7.5.1)."""
        reply = await self._t.post(url, {}, f"answering the challenge {url}")
        return Challenge.from_json(reply.json(), url)

    async def poll_authorization(self, url: str, deadline: float) -> Authorization:
        """Poll until the authorization is no longer pending (RFC 8555 section 7.5.1); the
        first request goes out after a short delay, then the delays double."""
        return await self._t.poll(
            url,
            deadline,
            Authorization.from_json,
            lambda a: a.status != Status.PENDING,
            f"waiting for the authorization {url}",
        )

    async def finalize(self, order_url: str, finalize_url: str, csr_der: bytes) -> Order:
        """Send the CSR (RFC 8555 section 7.4); return the order as the CA now sees it."""
        reply = await self._t.post(
            finalize_url, {"csr": b64url(csr_der)}, f"finalizing the order {order_url}"
        )
        return Order.from_json(reply.json(), order_url)

    async def poll_order(self, url: str, deadline: float) -> Order:
        """Poll until the order is neither pending nor processing (RFC 8555 section 7.4)."""
        return await self._t.poll(
            url,
            deadline,
            Order.from_json,
            lambda o: o.status not in (Status.PENDING, Status.PROCESSING),
            f"waiting for the order {url}",
        )

    async def download_certificate(self, url: str) -> str:
        """The PEM chain, leaf first (RFC 8555 section 7.4.2)."""
        reply = await self._t.post(
            url,
            None,
            f"downloading the certificate {url}",
            accept="application/pem-certificate-chain",
            limit=MAX_CHAIN_BODY,
        )
        try:
            text = reply.body.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise AcmeError(
                f"the CA's certificate at {url} is not a PEM chain "
                f"(Content-Type {reply.content_type or 'missing'}); try again later"
            )
        return text

    def _need_account(self) -> None:
        if self._t.signer.kid is None:
            raise AcmeError("no ACME account yet: call ensure_account() before ordering")
