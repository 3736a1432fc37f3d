"""URLs from the CA are followed only on its directory's origin, never from https to http:
a URL elsewhere fails that certificate with one line, and no request - signed or not - goes
there (the front's foreign listeners count every request they get; they would forward it to
the CA like the front does, so following one would succeed, and the test would see it).

Why the fault proxy: an honest CA gives URLs on its own origin; a compromised or
misconfigured one, or whatever rewrites its replies, is what sends lematt elsewhere. The
front moves exactly one URL of the target's orders to a foreign origin per case.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.ca_front import CaFront, Reply, Request
from tests.e2e.faults.conftest import TARGET, RunFaults
from tests.e2e.faults.kit import Case, Fault, edit_json, move_header

OFF_ORIGIN = "not on its directory's origin"
CLEARTEXT = "never sends requests to the CA in cleartext"


def _authz_elsewhere(front: CaFront, order: dict[str, Any]) -> None:
    order["authorizations"] = [front.foreign_url(u) for u in order["authorizations"]]


def _authz_on_localhost(front: CaFront, order: dict[str, Any]) -> None:
    # The same server under another host name is another origin (RFC 6454 section 4).
    order["authorizations"] = [u.replace("127.0.0.1", "localhost")
                               for u in order["authorizations"]]


def _challenge_in_cleartext(front: CaFront, authz: dict[str, Any]) -> None:
    for challenge in authz["challenges"]:
        challenge["url"] = front.foreign_url(challenge["url"], "http")


def _finalize_elsewhere(front: CaFront, order: dict[str, Any]) -> None:
    order["finalize"] = front.foreign_url(order["finalize"])


def _certificate_elsewhere(front: CaFront, order: dict[str, Any]) -> None:
    if "certificate" in order:
        order["certificate"] = front.foreign_url(order["certificate"])


CASES = [
    Case("Location of the new order", Fault("newOrder", TARGET, change=move_header("Location")),
         ("waiting for the order", OFF_ORIGIN)),
    Case("authorization URLs", Fault("newOrder", TARGET, change=edit_json(_authz_elsewhere)),
         ("fetching the authorization", OFF_ORIGIN, "caAllowedOrigins")),
    Case("authorization URLs on another host name of the same server",
         Fault("newOrder", TARGET, change=edit_json(_authz_on_localhost)),
         ("the CA sent the URL https://localhost:", OFF_ORIGIN)),
    Case("challenge URL in plain http",
         Fault("authz", TARGET, change=edit_json(_challenge_in_cleartext)), (CLEARTEXT,)),
    Case("finalize URL", Fault("newOrder", TARGET, change=edit_json(_finalize_elsewhere)),
         ("finalizing the order", OFF_ORIGIN)),
    Case("certificate URL",
         Fault(("finalize", "order"), TARGET, change=edit_json(_certificate_elsewhere)),
         ("downloading the certificate", OFF_ORIGIN)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_url_on_another_origin_fails_the_certificate_and_gets_no_request(
        run_faults: RunFaults, case: Case) -> None:
    scenario = run_faults(case.id, [case.fault])
    assert case.fault.hits >= 1, "the fault never fired"
    scenario.assert_contained()  # among others: no request reached a foreign origin
    scenario.assert_target_failed(*case.expect, "sent nothing there", kind="ca")


def _link_elsewhere(front: CaFront, request: Request, reply: Reply) -> Reply:
    headers = dict(reply.headers)
    headers["Link"] = (f'<{front.foreign["https"]}/certZ/x/1>;rel="up", '
                       f'<{front.foreign["http"]}/dir>;rel="index"')
    return Reply(reply.status, headers, reply.body)


def test_link_headers_to_other_origins_are_not_followed(run_faults: RunFaults) -> None:
    """RFC 8555 sections 7.4.2 and 7.1: Link "up" (more of the chain) and "index" (the
    directory). lematt follows neither - the chain is one download - so foreign links on
    every reply change nothing: the certificate is issued, nothing goes elsewhere."""
    fault = Fault(("newOrder", "authz", "challenge", "finalize", "order", "certificate"),
                  TARGET, change=_link_elsewhere)
    scenario = run_faults("link headers elsewhere", [fault])
    assert fault.hits >= 4
    scenario.assert_contained()
    assert scenario.result.returncode == 0, scenario.result.stderr
    scenario.assert_renewed(scenario.target)


def _nonces_on_localhost(front: CaFront, directory: dict[str, Any]) -> None:
    directory["newNonce"] = directory["newNonce"].replace("127.0.0.1", "localhost")


def test_allowed_origins_let_a_ca_spread_over_hosts(run_faults: RunFaults) -> None:
    """caAllowedOrigins lists a CA's other hosts: a directory whose newNonce is on another
    host name is followed there, and both certificates are issued. (Pebble ties signed
    requests to one host name - it checks the JWS "url" and the account URL prefix against
    its Host header - so the unsigned newNonce is the one URL it can serve on two.)"""
    fault = Fault("directory", None, method="GET", change=edit_json(_nonces_on_localhost))
    scenario = run_faults("allowed origin", [fault], extra_conf=lambda front: {
        "caAllowedOrigins": f"https://localhost:{front.port}"})
    # The run reads the directory before planning (the CA's facts: ARI, profiles) and again
    # when it orders: each read got the moved newNonce.
    assert fault.hits >= 1
    assert scenario.result.returncode == 0, scenario.result.stderr
    scenario.assert_renewed(scenario.target)
    scenario.assert_renewed(scenario.bystander)
    assert {(origin, method) for origin, method, _ in scenario.front.foreign_requests} \
        == {(f"host localhost:{scenario.front.port}", "HEAD")}


def test_an_account_url_on_another_origin_stops_the_run_with_one_line(
        run_faults: RunFaults) -> None:
    """The account URL is the kid of every later request and is remembered across runs:
    one on another origin is a run-wide error (one line, exit 1, the --json summary written,
    the account book not written), before any order."""
    fault = Fault("newAccount", None, change=move_header("Location"))
    scenario = run_faults("account elsewhere", [fault])
    assert fault.hits == 1
    assert scenario.result.returncode == 1
    lines = scenario.result.stderr.strip().splitlines()
    assert len(lines) == 1, scenario.result.stderr
    assert lines[0].startswith("lematt: registering the ACME account: the CA sent the URL "
                               f"{scenario.front.foreign['https']}/")
    assert OFF_ORIGIN in lines[0]
    assert scenario.summary["ok"] is False and OFF_ORIGIN in scenario.summary["error"]
    assert scenario.front.foreign_requests == []
    assert not (scenario.conf.parent / "account.key.accounts.json").exists()
    scenario.assert_nothing_stored(scenario.target)
    scenario.assert_nothing_stored(scenario.bystander)
