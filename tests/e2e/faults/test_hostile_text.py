"""What the CA writes is data, never output or a path: hostile tokens are refused before they
reach a file or a URL, and hostile problem texts are printed escaped - a newline in a detail
cannot forge a "[TEST] renewed ..." line, an ANSI escape cannot reach the terminal - on
stderr and in the --json summary alike.

Why the fault proxy: Pebble's tokens are always base64url and its problem texts plain; a
hostile or broken CA (or what rewrites its replies) is the only source of these.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.ca_front import CaFront
from tests.e2e.faults.conftest import TARGET, RunFaults, Scenario
from tests.e2e.faults.kit import ANSI, ERR, FORGED_LINE, Case, Fault, edit_json, problem

HOSTILE_TOKENS = {
    "parent directory": "../x",
    "too long": "A" * 257,
    "not base64url": "abc+/=",
    "empty": "",
    "newline": "tok\nen",
}


def _set_token(token: str) -> Any:
    def edit(front: CaFront, authz: dict[str, Any]) -> None:
        for challenge in authz["challenges"]:
            challenge["token"] = token
    return edit


@pytest.mark.parametrize("token", list(HOSTILE_TOKENS.values()), ids=list(HOSTILE_TOKENS))
def test_a_hostile_token_is_refused_before_it_reaches_a_file(
        run_faults: RunFaults, token: str) -> None:
    fault = Fault("authz", TARGET, change=edit_json(_set_token(token)))
    scenario = run_faults(f"token {token[:20]}", [fault])
    assert fault.hits >= 1
    scenario.assert_contained()  # among others: nothing new in the drop dir, no ../x
    line = scenario.assert_target_failed("the CA sent an invalid token",
                                         "nothing was written or served", kind="validation")
    assert "\n" not in line


def _assert_escaped(scenario: Scenario) -> str:
    """The target's failure is one escaped line; no forged line and no escape anywhere."""
    out = scenario.result.stdout + scenario.result.stderr
    assert "\x1b" not in out and "\x07" not in out
    assert not any(line.startswith("[TEST] renewed www.bank.test") for line in out.splitlines())
    line = scenario.target_failure()
    assert "\\n[TEST] renewed www.bank.test" in line
    assert "\\x1b[2J\\x1b[1;31mALERT" in line
    message = scenario.target_json()["failure"]["message"]
    assert message.isprintable() and "\\x1b[2J" in message
    return line


def _invalid_authz(front: CaFront, authz: dict[str, Any]) -> None:
    authz["status"] = "invalid"
    for challenge in authz["challenges"]:
        challenge["status"] = "invalid"
        challenge["error"] = {"type": f"{ERR}unauthorized{ANSI}",
                              "detail": f"nope{FORGED_LINE}{ANSI}", "status": 403}


CASES = [
    Case("problem detail on newOrder",
         Fault("newOrder", TARGET, answer=problem(
             400, f"{ERR}malformed", f"bad order{FORGED_LINE}{ANSI}",
             subproblems=[{"type": f"{ERR}rejectedIdentifier", "detail": f"no{ANSI}",
                           "identifier": {"type": "dns", "value": f"x.test{FORGED_LINE}"}}])),
         ("creating an order", "the CA answered malformed: bad order\\n[TEST]",
          "; x.test\\n[TEST] renewed")),
    Case("challenge error in the authorization",
         Fault("authz", TARGET, change=edit_json(_invalid_authz)),
         ("the CA's authorization is invalid", "unauthorized\\x1b[2J", "nope\\n[TEST]")),
    Case("title only, in a 403 on finalize",
         Fault("finalize", TARGET, answer=problem(
             403, f"{ERR}unauthorized", "", title=f"go away{FORGED_LINE}{ANSI}")),
         ("finalizing the order", "go away\\n[TEST]")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_problem_text_is_printed_escaped(run_faults: RunFaults, case: Case) -> None:
    scenario = run_faults(case.id, [case.fault])
    assert case.fault.hits >= 1
    scenario.assert_contained()
    line = scenario.assert_target_failed(*case.expect)
    assert line == _assert_escaped(scenario)


def _other_name(front: CaFront, authz: dict[str, Any]) -> None:
    authz["identifier"]["value"] = "www.bank.test"


def test_an_authorization_for_a_name_not_requested_is_refused(run_faults: RunFaults) -> None:
    """An authorization is proven only for a name of the order: one for another name would
    make lematt serve a key authorization (or start a forwarder) for a name not its own."""
    fault = Fault("authz", TARGET, change=edit_json(_other_name))
    scenario = run_faults("authz for another name", [fault])
    assert fault.hits >= 1
    scenario.assert_contained()
    scenario.assert_target_failed(
        "the CA sent an authorization for www.bank.test, which was not requested",
        "nothing was presented", kind="validation")
