"""One certificate's ACME flow, independent of files and hosts.

Contract: ``await obtain(client, names, csr_der, solver, deadline=...)`` returns the PEM chain
the CA issued for ``names`` (RFC 8555 section 7.4):

1. new order (with ``replaces`` and ``profile`` when given, see ``AcmeClient.new_order``);
2. every authorization is read at once; one that is already valid is skipped (section
   7.1.3: the CA may reuse them); the others' http-01 challenges are presented with
   ``solver.present(identifier, token, key_authorization)``, answered, and polled until no
   longer pending. ``ChallengeError`` names each failed name with the CA's problem (as
   ``__cause__`` and in the text). Every ``present`` context is exited on every path; an
   authorization for a name that was not requested is a ``ChallengeError``;
3. finalize with ``csr_der``, poll the order to valid, download the chain (the one whose top
   certificate was issued by ``preferred_chain``, when the CA offers it).

``deadline`` is an ``anyio.current_time()`` value; past it, ``AcmeError`` says what timed out.
Several simultaneous failures become one ``ChallengeError`` listing each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import NoReturn, Protocol, TypeVar

import anyio

from lematt.acme.client import AcmeClient
from lematt.acme.messages import Authorization, Challenge, Order, Status
from lematt.errors import AcmeError, AcmeTimeoutError, ChallengeError, LemattError

HTTP_01 = "http-01"
_T = TypeVar("_T")
_R = TypeVar("_R")


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


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _one_error(leaves: Sequence[BaseException], group: BaseException | None = None) -> NoReturn:
    """Raise the LemattErrors of concurrent steps as one (the single one as itself)."""
    if len(leaves) == 1:
        single = leaves[0]
        single.__suppress_context__ = True  # keep its own __cause__ (the CA's problem)
        raise single from single.__cause__
    raise ChallengeError("; ".join(str(exc) for exc in leaves)) from group


async def _each(items: Sequence[_T], step: Callable[[_T], Awaitable[_R]]) -> list[_R]:
    """``step`` for every item at once; results in order; errors as ``_one_error``."""
    results: list[_R | None] = [None] * len(items)

    async def run(i: int, item: _T) -> None:
        results[i] = await step(item)

    try:
        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(run, i, item)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if not all(isinstance(exc, LemattError) for exc in leaves):
            raise
        _one_error(leaves, group)
    return results  # type: ignore[return-value]


def _http01(authz: Authorization) -> Challenge:
    if authz.status != Status.PENDING:
        raise _invalid(authz, f"the CA's authorization is {authz.status}")
    challenge = authz.challenge(HTTP_01)
    if challenge is None or challenge.token is None:
        offered = ", ".join(c.type for c in authz.challenges) or "none"
        raise ChallengeError(
            f"{authz.name}: the CA offers no http-01 challenge (offered: {offered}); "
            "lematt can only prove names over http-01 (wildcards need dns-01)"
        )
    return challenge


async def _authorize(client: AcmeClient, order: Order, solver: ChallengeSolver,
                     deadline: float, names: Sequence[str]) -> None:
    """Prove every name of a pending order.

    Authorizations that are already valid are skipped (RFC 8555 section 7.1.3: the CA may
    reuse them). The others' http-01 challenges are presented and answered at once, then each
    authorization is polled until it is no longer pending. (Polling the order instead would
    take one request per round for all names, but Pebble 2.4 deadlocks when orders are
    polled while their authorizations are being validated - seen in benchmarks/bulk.py at
    20 orders in flight.)
    """
    authzs = await _each(order.authorizations, client.get_authorization)
    for authz in authzs:
        # Only names we asked for are proven: an authorization for another name would make
        # lematt serve a key authorization (or start a forwarder) for a name not its own.
        if authz.name not in names:
            raise ChallengeError(f"the CA sent an authorization for {authz.name}, which was "
                                 f"not requested (requested: {', '.join(names)}); nothing "
                                 "was presented")
    todo = [(url, a, _http01(a)) for url, a in zip(order.authorizations, authzs, strict=True)
            if a.status != Status.VALID]
    if not todo:
        return
    async with contextlib.AsyncExitStack() as presented:
        for _, authz, challenge in todo:
            assert challenge.token is not None
            await presented.enter_async_context(solver.present(
                authz.identifier.value, challenge.token,
                client.key_authorization(challenge.token)))
        # Only a pending challenge is answered; a processing one is already being checked.
        await _each([c for _, _, c in todo if c.status == Status.PENDING],
                    lambda c: client.answer_challenge(c.url))
        final = await _each([url for url, _, _ in todo],
                             lambda url: client.poll_authorization(url, deadline))
    failed = [a for a in final if a.status != Status.VALID]
    if failed:
        _one_error([_invalid(a, f"the CA could not validate the http-01 challenge ({a.status})")
                    for a in failed])


async def obtain(
    client: AcmeClient,
    names: Sequence[str],
    csr_der: bytes,
    solver: ChallengeSolver,
    *,
    deadline: float,
    replaces: str | None = None,
    profile: str | None = None,
    preferred_chain: str | None = None,
) -> str:
    """Run one order for ``names`` to the end; return the PEM chain (leaf first)."""
    what = ", ".join(names)
    start = anyio.current_time()
    with anyio.move_on_after(deadline - start):
        order, order_url = await client.new_order(names, replaces=replaces, profile=profile)
        if order.status == Status.INVALID:
            raise AcmeError(f"the CA created the order for {what} as invalid: {order.error}")
        if order.status == Status.PENDING:
            await _authorize(client, order, solver, deadline, names)
        if order.status in (Status.PENDING, Status.READY):
            # Section 7.4: finalize once every authorization is valid (the order is "ready").
            order = await client.finalize(order_url, order.finalize, csr_der)
        if order.status != Status.VALID:
            order = await client.poll_order(order_url, deadline)
        if order.status != Status.VALID:
            reason = str(order.error) if order.error else f"the order is {order.status}"
            raise AcmeError(f"the CA did not issue the certificate for {what}: {reason}")
        if not order.certificate:
            raise AcmeError(f"the CA's valid order {order_url} for {what} has no certificate URL")
        return await client.download_certificate(order.certificate, preferred_chain)
    raise AcmeTimeoutError(
        f"timed out obtaining the certificate for {what} after {max(0.0, deadline - start):.0f} s; "
        "try again later"
    )
