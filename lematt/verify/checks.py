"""Which endpoints must serve which stored certificate, and checking them all at once.

Contract:
- ``checks_for(actions, lines, key_types, layout, wanted)``: one ``Check`` per (endpoint of
  a ``verify`` list, line, key type) for the sections ``wanted`` accepts among each line's
  sections (``Actions.sections_for``), each once. The server name asked for is the
  endpoint's ``name`` (only lines carrying it are checked there) or the line's first name.
  The expected certificate is the stored leaf, read now; a missing or unreadable one is a
  check that fails with what to do. ``targets(...)`` is the same list before any file is
  read (``Target``: the check's identity), and ``check(target)`` reads one.
- ``run_checks(checks, timeout)``: every check concurrently (at most ``PARALLEL`` sockets),
  each tried up to ``TRIES`` times within ``timeout`` seconds until the endpoint serves the
  expected leaf (services reload asynchronously); returns one ``VerifyResult`` per check,
  in order. Never raises for what an endpoint does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from lematt.config import Actions, Section
from lematt.config.endpoints import Endpoint
from lematt.crypto import certificate_serial_and_expiry, leaf_der
from lematt.errors import LemattError
from lematt.model import CertLine, KeyType, Served, VerifyResult
from lematt.store.atomic import read_bytes
from lematt.store.layout import Layout
from lematt.verify.probe import ProbeError, served_leaf

TRIES = 5
PARALLEL = 32  # sockets open at once: a run may check hundreds of (endpoint, name) pairs


@dataclass(frozen=True)
class Check:
    section: str
    endpoint: Endpoint
    name: str  # server name (SNI) asked for
    key_type: KeyType
    expected: Served | None
    fingerprint: bytes = b""  # SHA-256 of the stored leaf's DER
    problem: str | None = None  # why there is no expected certificate
    cert_name: str = ""  # the stored certificate's file name in cert/ (store.served's key)


@dataclass(frozen=True)
class Target:
    """One check before the stored certificate is read: (endpoint, name, key type, path)
    is its identity; ``section`` the first section that asks for it; ``line`` whose
    certificate it is."""

    endpoint: Endpoint
    name: str
    key_type: KeyType
    path: str
    section: str
    line: CertLine

    @property
    def key(self) -> tuple[Endpoint, str, KeyType, str]:
        return (self.endpoint, self.name, self.key_type, self.path)


def targets(actions: Actions, lines: Sequence[CertLine], key_types: Sequence[KeyType],
            layout: Layout, wanted: Callable[[Section], bool]) -> list[Target]:
    found: dict[tuple[Endpoint, str, KeyType, str], Target] = {}
    for line in lines:
        for section in actions.sections_for(line.names):
            if not section.verify or not wanted(section):
                continue
            for endpoint in section.verify:
                if endpoint.name is not None and endpoint.name not in line.names:
                    continue
                name = endpoint.name or line.primary
                for key_type in key_types:
                    path = str(layout.paths(line, key_type).cert)
                    target = Target(endpoint, name, key_type, path, section.name, line)
                    found.setdefault(target.key, target)
    return list(found.values())


def checks_for(actions: Actions, lines: Sequence[CertLine], key_types: Sequence[KeyType],
               layout: Layout, wanted: Callable[[Section], bool]) -> list[Check]:
    return [check(t) for t in targets(actions, lines, key_types, layout, wanted)]


def check(target: Target) -> Check:
    check = _check(target.section, target.endpoint, target.name, target.key_type,
                   target.path)
    return replace(check, cert_name=Path(target.path).name)


def _check(section: str, endpoint: Endpoint, name: str, key_type: KeyType,
           path: str) -> Check:
    try:
        pem = read_bytes(path)
        if pem is None:
            return Check(section, endpoint, name, key_type, None,
                         problem=f"no certificate is stored at {path}; run lematt first")
        der = leaf_der(pem)
        serial, not_after = certificate_serial_and_expiry(der)
    except LemattError as exc:
        return Check(section, endpoint, name, key_type, None,
                     problem=f"the stored certificate {path} is unreadable ({exc})")
    return Check(section, endpoint, name, key_type, Served(serial, not_after),
                 hashlib.sha256(der).digest())


async def run_checks(checks: Sequence[Check], timeout: float) -> list[VerifyResult]:
    results: list[VerifyResult | None] = [None] * len(checks)
    limiter = anyio.CapacityLimiter(PARALLEL)

    async def one(index: int, check: Check) -> None:
        async with limiter:
            results[index] = await _verify(check, timeout)

    async with anyio.create_task_group() as tg:
        for index, check in enumerate(checks):
            tg.start_soon(one, index, check)
    return [r for r in results if r is not None]


async def _verify(check: Check, timeout: float) -> VerifyResult:
    endpoint = str(check.endpoint)
    if check.expected is None:
        return VerifyResult(endpoint, check.name, check.key_type, False, None,
                            error=check.problem)
    begun = anyio.current_time()
    deadline = begun + timeout
    spacing = timeout / TRIES
    served: Served | None = None
    error: str | None = None
    tries = 0
    for attempt in range(TRIES):
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            break
        tries += 1
        # One try may take half the window: a silent endpoint still gets a second try.
        try:
            der = await served_leaf(check.endpoint, check.name, check.key_type,
                                    min(remaining, max(spacing, timeout / 2)))
        except ProbeError as exc:
            served, error = None, str(exc)
        else:
            if hashlib.sha256(der).digest() == check.fingerprint:
                return VerifyResult(endpoint, check.name, check.key_type, True,
                                    check.expected, check.expected)
            try:
                served = Served(*certificate_serial_and_expiry(der))
                error = None
            except LemattError as exc:
                served, error = None, f"served {exc}"
        # Tries are spread over the window, not bunched: a reload takes its time.
        wait = begun + spacing * (attempt + 1) - anyio.current_time()
        if wait > 0 and anyio.current_time() + wait < deadline:
            await anyio.sleep(wait)
    if error is not None:
        error += f" ({tries} {'try' if tries == 1 else 'tries'} in {timeout:g} s)"
    return VerifyResult(endpoint, check.name, check.key_type, False, check.expected,
                        served, error)
