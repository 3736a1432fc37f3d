"""--processes without processes: how jobs and rate limits are split between order processes
(the order processes themselves, against the real Pebble: tests/e2e/test_shards.py)."""

from __future__ import annotations

from lematt.acme.limits import RequestRateLimiter
from lematt.model import CertLine, Found, Job
from lematt.orders.processes import deal


def test_jobs_are_dealt_in_whole_lines() -> None:
    jobs = [Job(CertLine(n, (f"l{n}.example.com",)), kt, "missing", Found(None))
            for n in range(1, 6) for kt in ("rsa", "ec")]
    groups = deal(jobs, 2)
    assert [sorted({j.line.lineno for j in g}) for g in groups] == [[1, 3, 5], [2, 4]]
    assert all(len(g) == 2 * len({j.line.lineno for j in g}) for g in groups)
    assert len(deal(jobs[:2], 4)) == 1  # never an order process without jobs


def test_order_processes_split_the_rate_limits() -> None:
    whole = RequestRateLimiter({"newOrder": 10, "*": 100})
    half = RequestRateLimiter({"newOrder": 10, "*": 100}, share=0.5)
    assert half.rate("newOrder").per_second == whole.rate("newOrder").per_second / 2
    assert half.rate("anything").burst == whole.rate("anything").burst / 2
