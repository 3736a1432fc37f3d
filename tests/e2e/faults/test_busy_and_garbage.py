"""A CA that is busy, broken or stalls: each fault fails only the certificate it hits, with
one line, stores nothing for it, and the run's other certificate completes; a short
Retry-After is waited for and the certificate is issued.

Why the fault proxy: Pebble answers every request promptly and correctly; 503/429 with
Retry-After, an HTML error page, broken or endless bodies, resets and stalls come only from
an overloaded or broken CA (or what is between lematt and it), which no local CA can be made
to be. Each case changes one kind of request of the target's orders and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.ca_front import Reply
from tests.e2e.faults.conftest import REQUEST_TIMEOUT, TARGET, RunFaults
from tests.e2e.faults.kit import JSON, Fault, busy


@dataclass
class Case:
    id: str
    faults: list[Fault]
    expect: tuple[str, ...] = ()  # substrings of the target's FAILED line; () = renewed
    kind: str | None = None


def _truncated(front: object, request: object, reply: Reply) -> Reply:
    return Reply(reply.status, dict(reply.headers), reply.body, wire="truncate")


def _cut_json(front: object, request: object, reply: Reply) -> Reply:
    return Reply(reply.status, dict(reply.headers), reply.body[: len(reply.body) // 2])


CASES = [
    # Retry-After short enough to wait for: the certificate is issued after the retries.
    Case("503 Retry-After 1 s on newOrder, twice",
         [Fault("newOrder", TARGET, answer=busy(503, "1"), times=2)]),
    Case("429 rateLimited Retry-After 1 s on finalize",
         [Fault("finalize", TARGET, answer=busy(429, "1"), times=1)]),
    # Too long to wait for in a cron run: given up at once, with the CA's wish in the line.
    Case("503 Retry-After 3600 s on newOrder",
         [Fault("newOrder", TARGET, answer=busy(503, "3600"))],
         ("creating an order", "retry after 3600 s", "HTTP 503"), "ca"),
    Case("429 rateLimited with a Retry-After date in 2099",
         [Fault("newOrder", TARGET, answer=busy(429, "Wed, 21 Oct 2099 07:28:00 GMT"))],
         ("the CA answered rateLimited", "too many new orders"), "rateLimited"),
    Case("500 HTML page on the authorization",
         [Fault("authz", TARGET, answer=Reply(500, {"Content-Type": "text/html"},
                                              b"<html>\n<h1>Internal Server Error</h1>\n"))],
         ("fetching the authorization", "HTTP 500 without a problem document",
          "<html>\\n<h1>"), "ca"),
    Case("malformed JSON on finalize",
         [Fault("finalize", TARGET, answer=Reply(200, JSON, b'{"status": "valid", '))],
         ("is not JSON",), "ca"),
    Case("JSON cut in half on the authorization",
         [Fault("authz", TARGET, change=_cut_json)], ("is not JSON",), "ca"),
    Case("body cut short by a closed connection on the authorization",
         [Fault("authz", TARGET, change=_truncated)],
         ("fetching the authorization", "failed"), "network"),
    Case("JSON nested 100000 deep on newOrder",
         [Fault("newOrder", TARGET, answer=Reply(
             201, {**JSON, "Location": "/my-order/x"}, b"[" * 100_000 + b"]" * 100_000))],
         ("is not JSON",), "ca"),
    Case("connection reset on the challenge",
         [Fault("challenge", TARGET, answer=Reply(0, wire="reset"))],
         ("answering the challenge", "failed"), "network"),
    Case("stall on the certificate download",
         [Fault("certificate", TARGET, answer=Reply(200, stall=60))],
         (f"within {REQUEST_TIMEOUT} s",), "timeout"),
    Case("endless JSON body on the authorization",
         [Fault("authz", TARGET, answer=Reply(200, JSON, wire="endless"))],
         ("larger than 4096 KiB", "stopped reading"), "ca"),
    Case("endless certificate chain",
         [Fault("certificate", TARGET, answer=Reply(
             200, {"Content-Type": "application/pem-certificate-chain"}, wire="endless"))],
         ("larger than 1024 KiB",), "ca"),
    Case("10 GiB announced in Content-Length on newOrder",
         [Fault("newOrder", TARGET, answer=Reply(
             201, {**JSON, "Content-Length": str(10 << 30)}, b"{}"))],
         ("larger than 4096 KiB",), "ca"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_busy_or_broken_ca_fails_only_the_certificate_it_hits(
        run_faults: RunFaults, case: Case) -> None:
    scenario = run_faults(case.id, case.faults)
    assert all(f.hits >= 1 for f in case.faults), "the fault never fired"
    scenario.assert_contained()
    if not case.expect:
        assert scenario.result.returncode == 0, scenario.result.stderr
        scenario.assert_renewed(scenario.target)
    else:
        scenario.assert_target_failed(*case.expect, kind=case.kind)
    # An endless body is read only up to lematt's limit (4 MiB for JSON, 1 MiB for a
    # chain), then the connection is dropped: the front sent at most that plus what the
    # socket buffers took, not the 256 MiB it had to give.
    assert scenario.front.endless_sent < 32 << 20
