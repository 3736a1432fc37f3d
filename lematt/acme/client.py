"""The ACME client: the operations of RFC 8555 for one account, over ``lematt.acme.transport``.

Contract: ``async with AcmeClient.open(directory_url, account_key, ...) as client:`` opens a
transport (one session, the directory read) and yields the client; every request follows the
transport's rules (timeouts, rate limits, nonces, retries, problem documents).

* The account: ``ensure_account`` uses a remembered account URL without a request, else
  registers; a CA that answers a known key with an empty body is asked for the account
  itself; when the CA no longer knows a remembered account (``accountDoesNotExist``), the key
  is registered again once and the request resent.
  Registration sends the external account binding when one is configured (RFC 8555
  7.3.4) and agrees to the terms of service only when told to.
* Orders: new order (with ``replaces``, RFC 9773 section 5, dropped and sent again when the CA
  refuses it; with ``profile``, draft-ietf-acme-profiles), authorizations, challenges,
  finalize, polls under a deadline, download (choosing among the CA's alternate chains by
  the issuer of the top certificate, RFC 8555 section 7.4.2).
* Every URL the CA gives is followed only on the directory's origin or one in
  ``allowed_origins`` (``lematt.acme.origins``, enforced by the transport); an account URL
  on another origin is refused when it is learnt. Of the Link headers only
  ``rel="alternate"`` of a certificate is followed, and only with ``preferredChain`` (under
  the same origin rule and chain size cap).
* ARI: ``renewal_info(cert_id)`` GETs the certificate's RenewalInfo (RFC 9773 section 4.1).
* The account itself: ``account()``, ``update_contact``, ``deactivate`` (section 7.3.2, 7.3.6),
  ``change_key`` (7.3.5), ``lookup_account`` (newAccount with onlyReturnExisting, 7.3.1);
  ``revoke`` (7.6).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from lematt.acme.jws import (
    AccountKey,
    AccountSigner,
    b64url,
    eab_binding,
    key_change_inner,
)
from lematt.acme.limits import RequestRateLimiter
from lematt.acme.messages import (
    Account,
    Authorization,
    Challenge,
    Directory,
    Order,
    RenewalInfo,
    Status,
)
from lematt.acme.transport import (
    DEFAULT_USER_AGENT,
    MAX_CHAIN_BODY,
    Reply,
    Transport,
    open_transport,
)
from lematt.errors import AcmeError, AcmeProblem

_ERROR = "urn:ietf:params:acme:error:"
# Alternate chains followed at most per download (Let's Encrypt offers one or two).
MAX_ALTERNATES = 5
# RFC 5280 section 5.3.1 CRLReason codes a subscriber may give (RFC 8555 section 7.6); the
# others are the CA's own (cACompromise, certificateHold, removeFromCRL, aACompromise).
REVOCATION_REASONS = {"unspecified": 0, "keyCompromise": 1, "affiliationChanged": 3,
                      "superseded": 4, "cessationOfOperation": 5, "privilegeWithdrawn": 9}


def _refuses_replaces(problem: AcmeProblem) -> bool:
    """Whether a newOrder failed because of its ``replaces`` field: ``alreadyReplaced``
    (RFC 9773 section 7.4), a 409 Conflict, or a malformed request that says so (a CA that
    does not know the certificate, or does not take the field)."""
    if problem.type == f"{_ERROR}alreadyReplaced" or problem.status == 409:
        return True
    return problem.type == f"{_ERROR}malformed" and "replace" in problem.detail.lower()


def _links(reply: Reply, rel: str) -> list[str]:
    """The URLs of a reply's ``Link`` headers with relation ``rel`` (RFC 8288)."""
    getall = getattr(reply.headers, "getall", None)
    values = getall("Link", []) if getall is not None else [reply.headers.get("Link", "")]
    urls = []
    for value in values:
        for part in value.split(","):
            target, _, params = part.strip().partition(";")
            rels = [p.strip() for p in params.split(";")]
            if target.startswith("<") and target.endswith(">") and (
                    f'rel="{rel}"' in rels or f"rel={rel}" in rels):
                urls.append(target[1:-1])
    return urls


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
        self._eab: tuple[str, str] | None = None
        self._agree_tos = True
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
        eab: tuple[str, str] | None = None,
        agree_tos: bool = True,
    ) -> str:
        """Use the account at ``known_url`` (no request: it is verified by the first signed
        request), or register this key (RFC 8555 section 7.3); return the account URL (kid).

        ``remember`` is called with every URL learnt by registering, also when a later
        request finds that the CA no longer knows the account and it is registered again.
        ``eab`` is (key id, base64url HMAC key) for external account binding; ``agree_tos``
        sends ``termsOfServiceAgreed``."""
        self._contact_email = contact_email
        self._remember = remember
        self._eab = eab
        self._agree_tos = agree_tos
        if known_url is not None:
            self._t.signer.kid = known_url
            return known_url
        return await self._register()

    async def _register(self) -> str:
        payload: dict[str, Any] = {}
        if self._agree_tos:
            payload["termsOfServiceAgreed"] = True
        if self._contact_email:
            payload["contact"] = [f"mailto:{self._contact_email}"]
        if self._eab is not None:
            payload["externalAccountBinding"] = eab_binding(
                self._eab[0], self._eab[1], self._t.signer.jwk, self._t.directory.new_account)
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

    async def new_order(self, names: Sequence[str], *, replaces: str | None = None,
                        profile: str | None = None) -> tuple[Order, str]:
        """Create an order for ``names`` (RFC 8555 section 7.4); return it and its URL.

        ``replaces`` (the certID of the certificate this order renews) is sent only when the
        CA offers renewalInfo (RFC 9773 section 5); a CA that refuses it gets the same order
        once more without it. ``profile`` is sent as is (draft-ietf-acme-profiles)."""
        self._need_account()
        payload: dict[str, Any] = {
            "identifiers": [{"type": "dns", "value": name} for name in names]}
        if profile is not None:
            payload["profile"] = profile
        what = f"creating an order for {', '.join(names)}"
        if replaces and self._t.directory.renewal_info:
            try:
                reply = await self._t.post(self._t.directory.new_order,
                                           {**payload, "replaces": replaces}, what)
            except AcmeProblem as problem:
                if not _refuses_replaces(problem):
                    raise
                # Section 5: the order still renews the certificate; only the link to the
                # old one (and the CA's rate-limit exemption for it) is lost.
                reply = await self._t.post(self._t.directory.new_order, payload, what)
        else:
            reply = await self._t.post(self._t.directory.new_order, payload, what)
        url = reply.location()
        return Order.from_json(reply.json(), url), url

    async def renewal_info(self, cert_id: str) -> tuple[RenewalInfo, float | None]:
        """The CA's RenewalInfo for the certificate ``cert_id`` (RFC 9773 section 4.1) and
        its Retry-After in seconds (None when absent or unreadable)."""
        base = self._t.directory.renewal_info
        if not base:
            raise AcmeError("the CA's directory has no renewalInfo")
        url = f"{base.rstrip('/')}/{cert_id}"
        reply = await self._t.unsigned("GET", url, f"fetching the renewal info {url}")
        return RenewalInfo.from_json(reply.json(), url), reply.retry_after()

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

    async def download_certificate(self, url: str, preferred_chain: str | None = None) -> str:
        """The PEM chain, leaf first (RFC 8555 section 7.4.2). With ``preferred_chain``, the
        CA's alternate chains (``Link: rel="alternate"``) are read too, up to
        ``MAX_ALTERNATES``, and the first whose top certificate was issued by that common
        name is returned, if it certifies the same leaf; otherwise the default chain."""
        from lematt import crypto

        reply = await self._t.post(url, None, f"downloading the certificate {url}",
                                   accept="application/pem-certificate-chain",
                                   limit=MAX_CHAIN_BODY)
        chain = self._chain(reply, url)
        if preferred_chain is None or crypto.top_issuer_cn(chain) == preferred_chain:
            return chain
        leaf = crypto.leaf_der(chain)
        for alternate in _links(reply, "alternate")[:MAX_ALTERNATES]:
            other = self._chain(await self._t.post(
                alternate, None, f"downloading the alternate chain {alternate}",
                accept="application/pem-certificate-chain", limit=MAX_CHAIN_BODY), alternate)
            if crypto.leaf_der(other) == leaf and crypto.top_issuer_cn(other) == preferred_chain:
                return other
        return chain

    def _chain(self, reply: Reply, url: str) -> str:
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

    # --- the account itself --------------------------------------------------------------

    async def lookup_account(self) -> str | None:
        """The URL of the account of this key, or None when the CA has none (newAccount with
        ``onlyReturnExisting``, RFC 8555 section 7.3.1); registers nothing."""
        try:
            reply = await self._t.post(self._t.directory.new_account,
                                       {"onlyReturnExisting": True},
                                       "looking up the account of this key", use_jwk=True,
                                       recover_account=False)
        except AcmeProblem as problem:
            if problem.type == f"{_ERROR}accountDoesNotExist":
                return None
            raise
        return reply.location()

    async def account(self) -> Account:
        """The account object (POST-as-GET to the account URL, section 7.3.3)."""
        kid = self._need_account()
        reply = await self._t.post(kid, None, f"reading the account {kid}",
                                   recover_account=False)
        return Account.from_json(reply.json(), kid)

    async def update_contact(self, contacts: Sequence[str]) -> Account:
        """Replace the account's contact URLs (section 7.3.2)."""
        kid = self._need_account()
        reply = await self._t.post(kid, {"contact": list(contacts)},
                                   f"updating the contact of the account {kid}",
                                   recover_account=False)
        return Account.from_json(reply.json(), kid)

    async def deactivate(self) -> Account:
        """Deactivate the account (section 7.3.6); the CA refuses its key from then on."""
        kid = self._need_account()
        reply = await self._t.post(kid, {"status": "deactivated"},
                                   f"deactivating the account {kid}", recover_account=False)
        return Account.from_json(reply.json(), kid)

    async def change_key(self, new_key: AccountKey) -> None:
        """Roll the account over to ``new_key`` (section 7.3.5); from then on this client
        signs with it. Raises (and keeps the old key) when the CA does not confirm."""
        kid = self._need_account()
        url = self._t.directory.key_change
        if not url:
            raise AcmeError("the CA's directory has no keyChange: it does not support "
                            "account key rollover")
        new_signer = AccountSigner(new_key, kid)
        inner = key_change_inner(new_signer, url, kid, self._t.signer.jwk)
        await self._t.post(url, inner, f"rolling the account {kid} over to a new key",
                           recover_account=False)
        self._t.signer = new_signer

    async def revoke(self, cert_der: bytes, reason: str) -> None:
        """Revoke a certificate of this account (section 7.6) with an RFC 5280 reason."""
        self._need_account()
        url = self._t.directory.revoke_cert
        if not url:
            raise AcmeError("the CA's directory has no revokeCert")
        await self._t.post(url, {"certificate": b64url(cert_der),
                                 "reason": REVOCATION_REASONS[reason]},
                           "revoking the certificate", recover_account=False)

    def _need_account(self) -> str:
        kid = self._t.signer.kid
        if kid is None:
            raise AcmeError("no ACME account yet: call ensure_account() before ordering")
        return kid
