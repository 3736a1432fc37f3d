"""The fault suite's kit: ``Fault`` (what the fault proxy changes, for which requests) and
the replies and rewrites a broken or hostile CA gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.ca_front import CaFront, Reply, Request

JSON = {"Content-Type": "application/json"}
PROBLEM = {"Content-Type": "application/problem+json"}
ERR = "urn:ietf:params:acme:error:"
# What a hostile CA would like lematt to print: a forged success line and terminal escapes.
FORGED_LINE = "\n[TEST] renewed www.bank.test (EC): valid until 2099-01-01 (new key)\n"
ANSI = "\x1b[2J\x1b[1;31mALERT\x1b[0m\x1b]0;title\x07"


def problem(status: int, ptype: str, detail: str, headers: dict[str, str] | None = None,
            **extra: Any) -> Reply:
    body = {"type": ptype, "detail": detail, "status": status, **extra}
    return Reply(status, {**PROBLEM, **(headers or {})}, json.dumps(body).encode())


def busy(status: int, retry_after: str) -> Reply:
    """503 without a problem document, or 429 rateLimited (RFC 8555 section 6.6)."""
    if status == 429:
        return problem(429, f"{ERR}rateLimited", "too many new orders",
                       {"Retry-After": retry_after})
    return Reply(503, {"Content-Type": "text/plain", "Retry-After": retry_after},
                 b"Service Unavailable\n")


Change = Callable[[CaFront, Request, Reply], Reply]


def edit_json(edit: Callable[[CaFront, dict[str, Any]], None]) -> Change:
    """A rewrite that changes the CA's JSON reply in place."""
    def change(front: CaFront, request: Request, reply: Reply) -> Reply:
        data = reply.json()
        edit(front, data)
        return reply.with_json(data)
    return change


def move_header(name: str, scheme: str = "https") -> Change:
    """A rewrite that moves the URL in header ``name`` to a foreign origin."""
    def change(front: CaFront, request: Request, reply: Reply) -> Reply:
        headers = dict(reply.headers)
        headers[name] = front.foreign_url(headers[name], scheme)
        return Reply(reply.status, headers, reply.body)
    return change


@dataclass
class Fault:
    """A fault for the requests of ``kind`` (see ``CaFront.kind_of``) belonging to the orders
    of ``name`` (None: every such request), at most ``times`` times (None: always).

    Used as a rule (``answer``: a ``Reply``, or ``answer(front, request)``, given instead of
    the CA's) or as a rewrite (``change(front, request, reply)``: the CA's reply changed).
    ``hits`` counts the requests it acted on."""

    kind: str | tuple[str, ...]
    name: str | None = None
    answer: Reply | Callable[[CaFront, Request], Reply] | None = None
    change: Callable[[CaFront, Request, Reply], Reply] | None = None
    times: int | None = None
    method: str | None = "POST"
    hits: int = 0

    def _matches(self, front: CaFront, request: Request) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        kind, names = front.kind_of(request)
        kinds = (self.kind,) if isinstance(self.kind, str) else self.kind
        return kind in kinds and (self.name is None or self.name in names)

    def rule(self, front: CaFront, request: Request) -> Reply | None:
        if self.answer is None or not self._matches(front, request):
            return None
        with front.lock:
            self.hits += 1
        return self.answer(front, request) if callable(self.answer) else self.answer

    def rewrite(self, front: CaFront, request: Request, reply: Reply) -> Reply | None:
        if self.change is None or reply.status >= 400 or not self._matches(front, request):
            return None
        with front.lock:
            self.hits += 1
        return self.change(front, request, reply)


@dataclass
class Case:
    """One fault case of a parametrized test: its id, the fault, the texts lematt must say."""

    id: str
    fault: Fault
    expect: tuple[str, ...]
