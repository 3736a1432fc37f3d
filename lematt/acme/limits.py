"""Limits passed down to the ACME code as objects, never globals.

Contract:

* ``RequestRateLimiter``: one token bucket per ACME endpoint name ("directory", "newNonce",
  "newAccount", "newOrder", "revokeCert", "renewalInfo", and "*" for every other URL).
  ``await limiter.acquire(name)`` returns at once while the bucket holds a token (no sleep, no
  lock, a few float operations), otherwise it sleeps exactly until its reserved token refills.
  Unknown names use the "*" bucket. Defaults follow Let's Encrypt's published per-endpoint
  "overall requests" limits; ``overrides`` ({name: requests per second}, or pairs) replace the
  rate of a bucket, with a burst of max(1, rate). ``share`` (0-1] scales every rate and burst:
  the order processes of a sharded run (``--processes``) split the limits between them.
* ``order_limiter(parallel)``: the ``anyio.CapacityLimiter`` that bounds orders in flight
  (``--parallel``).

Each limiter belongs to one run (one event loop); there is no module-level mutable state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import anyio

from lematt.errors import ConfigError
from lematt.model import ENDPOINT_NAMES


@dataclass(frozen=True)
class Rate:
    """Sustained requests per second and burst size of one bucket."""

    per_second: float
    burst: float


# Let's Encrypt "Overall Requests Limit" table (requests per second per IP, burst), from
# https://letsencrypt.org/docs/rate-limits/ ("Last updated: April 1, 2025"), read 2026-11-27
# from stored copies: the revoke-cert, renewal-info, /acme/* and /directory rows as in
# letsencrypt/website PR #1881 (which set /directory's burst to 40); the new-nonce, new-account
# and new-order rows as quoted from that page by a third-party mirror of the table. Past these
# the CA answers 503 with Retry-After (same page), which the client also honours.
LETS_ENCRYPT_RATES: Mapping[str, Rate] = MappingProxyType(
    {
        "newNonce": Rate(20.0, 10.0),
        "newAccount": Rate(5.0, 15.0),
        "newOrder": Rate(300.0, 200.0),
        "revokeCert": Rate(10.0, 100.0),
        "renewalInfo": Rate(1000.0, 100.0),
        "*": Rate(250.0, 125.0),
        "directory": Rate(40.0, 40.0),
    }
)


class _Bucket:
    """A token bucket; ``tokens`` may go negative: each waiter reserves its own token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate.per_second
        self.burst = rate.burst
        self.tokens = rate.burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token; return how long to wait for it (0.0 when it was there)."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def _validated(overrides: Mapping[str, float] | Iterable[tuple[str, float]]) -> dict[str, Rate]:
    result: dict[str, Rate] = {}
    for name, value in dict(overrides).items():
        if name not in ENDPOINT_NAMES:
            raise ConfigError(
                f"unknown rate-limit endpoint {name!r}; use one of {', '.join(ENDPOINT_NAMES)}"
            )
        per_second = float(value)
        if not per_second > 0 or math.isnan(per_second):
            raise ConfigError(
                f"rate limit for {name!r} must be a positive number of requests per second"
            )
        result[name] = Rate(per_second, max(1.0, per_second))
    return result


class RequestRateLimiter:
    """Per-endpoint token buckets shared by every request of one run."""

    def __init__(
        self,
        overrides: Mapping[str, float] | Iterable[tuple[str, float]] = (),
        *,
        defaults: Mapping[str, Rate] = LETS_ENCRYPT_RATES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        share: float = 1.0,
    ) -> None:
        rates = {**defaults, **_validated(overrides)}
        if "*" not in rates:
            raise ConfigError("the rate limits need a '*' entry for the remaining endpoints")
        if share != 1.0:
            # One of several order processes of a run: together they keep to the limits.
            rates = {name: Rate(rate.per_second * share, max(1.0, rate.burst * share))
                     for name, rate in rates.items()}
        now = clock()
        self._clock = clock
        self._sleep = sleep
        self._buckets = {
            name: _Bucket(rate, now)
            for name, rate in rates.items()
            if math.isfinite(rate.per_second)
        }
        self._rates = dict(rates)

    def rate(self, endpoint: str) -> Rate:
        return self._rates.get(endpoint, self._rates["*"])

    async def acquire(self, endpoint: str) -> None:
        """Wait (only if needed) until one more request to ``endpoint`` fits the limit."""
        bucket = self._buckets.get(endpoint if endpoint in self._rates else "*")
        if bucket is None:  # an infinite rate has no bucket at all
            return
        wait = bucket.take(self._clock())
        if wait <= 0.0:
            return
        try:
            await self._sleep(wait)
        except BaseException:
            # Cancelled while waiting: give the reserved token back for the others.
            bucket.tokens += 1.0
            raise


def order_limiter(parallel: int) -> anyio.CapacityLimiter:
    """The limiter on orders in flight at once (``--parallel``)."""
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, not {parallel}")
    return anyio.CapacityLimiter(parallel)
