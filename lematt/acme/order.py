"""One certificate's ACME flow, independent of files and hosts.

Contract: ``await obtain(client, names, csr_der, solver, deadline=...)`` returns the PEM chain
the CA issued for ``names`` (RFC 8555 section 7.4):

1. new order;
2. every authorization at once in one task group: an authorization that is already valid is
   skipped (section 7.1.3: the CA may reuse them); otherwise its http-01 challenge is presented
   with ``solver.present(identifier, token, key_authorization)``, answered, and polled while
   presented. An invalid authorization raises ``ChallengeError`` naming the name and carrying
   the CA's problem (as ``__cause__`` and in the text). The first failure cancels the other
   authorizations, and every ``present`` context is exited on the way out;
3. finalize with ``csr_der``, poll the order to valid, download the chain.

``deadline`` is an ``anyio.current_time()`` value; past it, ``AcmeError`` says what timed out.
Several simultaneous failures become one ``ChallengeError`` listing each.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import anyio

from lematt.acme.client import AcmeClient
from lematt.acme.messages import Authorization, Status
from lematt.errors import AcmeError, ChallengeError, LemattError

HTTP_01 = "http-01"


class ChallengeSolver(Protocol):
    """Makes ``http://<identifier>/.well-known/acme-challenge/<token>`` answer
    ``key_authorization`` while the context is entered (RFC 8555 section 8.3)."""

    def present(
        self, identifier: str, token: str, key_authorization: str
    ) -> AbstractAsyncContextManager[None]: ...


def _invalid(authz: Authorization, why: str) -> ChallengeError:
    problem = authz.problem()
    detail = f": {problem.short_type}: {problem.detail}" if problem is not None else ""
    err = ChallengeError(f"{authz.name}: {why}{detail}")
    err.__cause__ = problem
    return err


async def _authorize(
    client: AcmeClient, url: str, solver: ChallengeSolver, deadline: float
) -> None:
    authz = await client.get_authorization(url)
    if authz.status == Status.VALID:
        return  # reused by the CA: nothing to prove again (RFC 8555 section 7.1.3)
    if authz.status != Status.PENDING:
        raise _invalid(authz, f"the CA's authorization is {authz.status}")
    challenge = authz.challenge(HTTP_01)
    if challenge is None or challenge.token is None:
        offered = ", ".join(c.type for c in authz.challenges) or "none"
        raise ChallengeError(
            f"{authz.name}: the CA offers no http-01 challenge (offered: {offered}); "
            "lematt can only prove names over http-01 (wildcards need dns-01)"
        )
    key_auth = client.key_authorization(challenge.token)
    async with solver.present(authz.identifier.value, challenge.token, key_auth):
        if challenge.status == Status.PENDING:
            # Only a pending challenge is answered; a processing one is already being checked.
            await client.answer_challenge(challenge.url)
        try:
            authz = await client.poll_authorization(url, deadline)
        except AcmeError as exc:
            raise AcmeError(f"{authz.name}: {exc}") from exc
    if authz.status != Status.VALID:
        raise _invalid(authz, f"the CA could not validate the http-01 challenge ({authz.status})")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _authorize_all(
    client: AcmeClient, urls: Sequence[str], solver: ChallengeSolver, deadline: float
) -> None:
    try:
        async with anyio.create_task_group() as tg:
            for url in urls:
                tg.start_soon(_authorize, client, url, solver, deadline)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if not all(isinstance(exc, LemattError) for exc in leaves):
            raise
        if len(leaves) == 1:
            single = leaves[0]
            single.__suppress_context__ = True  # keep its own __cause__ (the CA's problem)
            raise single from single.__cause__
        raise ChallengeError("; ".join(str(exc) for exc in leaves)) from group


async def obtain(
    client: AcmeClient,
    names: Sequence[str],
    csr_der: bytes,
    solver: ChallengeSolver,
    *,
    deadline: float,
) -> str:
    """Run one order for ``names`` to the end; return the PEM chain (leaf first)."""
    what = ", ".join(names)
    start = anyio.current_time()
    with anyio.move_on_after(deadline - start):
        order, order_url = await client.new_order(names)
        if order.status == Status.INVALID:
            raise AcmeError(f"the CA created the order for {what} as invalid: {order.error}")
        if order.status in (Status.PENDING, Status.READY):
            await _authorize_all(client, order.authorizations, solver, deadline)
            # Section 7.4: finalize once every authorization is valid (the order is "ready").
            order = await client.finalize(order_url, order.finalize, csr_der)
        if order.status != Status.VALID:
            order = await client.poll_order(order_url, deadline)
        if order.status != Status.VALID:
            reason = str(order.error) if order.error else f"the order is {order.status}"
            raise AcmeError(f"the CA did not issue the certificate for {what}: {reason}")
        if not order.certificate:
            raise AcmeError(f"the CA's valid order {order_url} for {what} has no certificate URL")
        return await client.download_certificate(order.certificate)
    raise AcmeError(
        f"timed out obtaining the certificate for {what} after {max(0.0, deadline - start):.0f} s; "
        "try again later"
    )
