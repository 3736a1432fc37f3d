"""Run-wide limits against a CA that never finishes, and account errors as one line.

* A CA that keeps every order pending would hold a cron run for (orders / parallel) x
  orderTimeout. ``runTimeout`` (lematt.conf) or ``--deadline`` ends the orders: every
  unfinished certificate fails with a timeout, its token files are removed (shielded
  cleanup), nothing is stored, and the run ends with exit 1 and its summary.
* The account request that gives up after repeated badNonce is a run-wide error: one line,
  exit 1, the --json summary written - no ExceptionGroup traceback.

Why the fault proxy: Pebble validates promptly and rejects only a share of nonces (5 % by
default); a CA stuck in "pending", or rejecting every nonce of newAccount, is one that only
the front can play.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.ca_front import CaFront, Request
from tests.e2e.faults.conftest import RunFaults
from tests.e2e.faults.kit import ERR, Fault, edit_json, problem

DEADLINE = 4  # seconds; far below orderTimeout (60 s in the fault suite's configs)


def _forever_pending(front: CaFront, authz: dict[str, Any]) -> None:
    authz["status"] = "pending"
    for challenge in authz["challenges"]:
        challenge["status"] = "pending"
        challenge.pop("validated", None)


@pytest.mark.parametrize("how", ["runTimeout", "--deadline", "--deadline --processes 2"])
def test_the_run_deadline_ends_orders_that_never_finish(run_faults: RunFaults,
                                                        how: str) -> None:
    fault = Fault("authz", None, change=edit_json(_forever_pending))
    if how == "runTimeout":
        scenario = run_faults("deadline conf", [fault], extra_conf={"runTimeout": DEADLINE})
    else:
        # The flag wins over lematt.conf; with order processes, the main process stops them
        # (their stdin closes) and fails what they did not answer.
        scenario = run_faults(f"deadline {how}", [fault],
                              args=("--deadline", str(DEADLINE), *how.split()[1:]),
                              extra_conf={"runTimeout": 3600})
    assert fault.hits >= 2
    result = scenario.result
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert len(failed) == 2, result.stderr
    for name in (scenario.target, scenario.bystander):
        (line,) = [f for f in failed if f.startswith(f"[TEST] FAILED: {name} (EC): ")]
        assert "not finished when the run's deadline passed (runTimeout in lematt.conf, " \
               "or --deadline)" in line
        scenario.assert_nothing_stored(name)
    kinds = {c["failure"]["kind"] for c in scenario.summary["certificates"]}
    assert kinds == {"timeout"}
    scenario.assert_no_token_left()
    assert scenario.front.foreign_requests == []


def _bad_nonce(counter: itertools.count[int]) -> Any:
    def answer(front: CaFront, request: Request) -> Any:
        return problem(400, f"{ERR}badNonce", "JWS has an invalid anti-replay nonce",
                       {"Replay-Nonce": f"fault-nonce-{next(counter)}"})
    return answer


def test_an_account_request_that_gives_up_on_bad_nonces_is_one_line(
        run_faults: RunFaults) -> None:
    fault = Fault("newAccount", None, answer=_bad_nonce(itertools.count()))
    scenario = run_faults("account badnonce", [fault])
    result = scenario.result
    assert fault.hits == 11  # the first try and 10 retries (MAX_BAD_NONCE_RETRIES)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "lematt: registering the ACME account (gave up after 10 badNonce retries): the CA "
        "answered badNonce: JWS has an invalid anti-replay nonce"], result.stderr
    assert scenario.summary["ok"] is False
    assert scenario.summary["failure"]["problem"] == f"{ERR}badNonce"
    scenario.assert_nothing_stored(scenario.target)
