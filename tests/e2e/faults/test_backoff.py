"""A CA that answers rateLimited with a long Retry-After: the certificate's persistent
back-off waits at least that long (longer than its own first minute), and a Retry-After
far in the future is taken as a week at most.

Why the fault proxy: Pebble has no rate limits; a 429 rateLimited with Retry-After is what
Let's Encrypt sends when an account or a domain has used its limit.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.faults.conftest import TARGET, RunFaults
from tests.e2e.faults.kit import Fault, busy

WEEK = 7 * 86400


@pytest.mark.parametrize(("retry_after", "wait"), [
    ("3600", 3600),
    ("Wed, 01 Jan 2098 00:00:00 GMT", WEEK),
], ids=["an hour", "a date decades away"])
def test_a_rate_limited_order_waits_for_the_cas_retry_after(
        run_faults: RunFaults, retry_after: str, wait: int) -> None:
    fault = Fault("newOrder", TARGET, answer=busy(429, retry_after))
    scenario = run_faults(f"backoff {retry_after}", [fault])
    assert fault.hits == 1  # a Retry-After longer than lematt waits: not retried in the run
    scenario.assert_contained()
    scenario.assert_target_failed("rateLimited", kind="rateLimited")
    assert scenario.target_json()["failure"]["retry_after"] >= min(wait, 3600)
    book = json.loads((scenario.conf.parent / "test" / ".backoff.json").read_text())
    (entry,) = book["certificates"].values()
    assert (entry["failures"], entry["kind"]) == (1, "rateLimited")
    assert entry["until"] - entry["last"] == pytest.approx(wait, abs=120)
