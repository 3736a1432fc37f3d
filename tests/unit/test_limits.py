"""lematt.acme.limits: token buckets driven by a fake clock (no real waiting)."""

from __future__ import annotations

import anyio
import pytest

from lematt.acme.limits import LETS_ENCRYPT_RATES, Rate, RequestRateLimiter, order_limiter
from lematt.errors import ConfigError


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeTime:
    """A clock the test moves by hand, and a sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _limiter(t: FakeTime, overrides: dict[str, float] | None = None) -> RequestRateLimiter:
    return RequestRateLimiter(overrides or {}, clock=t.clock, sleep=t.sleep)


def test_defaults_follow_lets_encrypt_overall_requests_table() -> None:
    assert LETS_ENCRYPT_RATES["newNonce"] == Rate(20.0, 10.0)
    assert LETS_ENCRYPT_RATES["newAccount"] == Rate(5.0, 15.0)
    assert LETS_ENCRYPT_RATES["newOrder"] == Rate(300.0, 200.0)
    assert LETS_ENCRYPT_RATES["directory"] == Rate(40.0, 40.0)
    assert LETS_ENCRYPT_RATES["*"] == Rate(250.0, 125.0)
    assert set(LETS_ENCRYPT_RATES) == {
        "directory",
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "renewalInfo",
        "*",
    }


@pytest.mark.anyio
async def test_within_burst_never_sleeps() -> None:
    t = FakeTime()
    limiter = _limiter(t)
    for _ in range(125):
        await limiter.acquire("*")
    for _ in range(10):
        await limiter.acquire("newNonce")
    assert t.sleeps == []


@pytest.mark.anyio
async def test_past_burst_waits_exactly_for_the_next_token() -> None:
    t = FakeTime()
    limiter = _limiter(t)
    for _ in range(10):
        await limiter.acquire("newNonce")
    await limiter.acquire("newNonce")
    assert t.sleeps == [pytest.approx(1 / 20)]
    # Time passing refills the bucket: after a second there are 20 tokens again (burst 10).
    t.now += 1.0
    for _ in range(10):
        await limiter.acquire("newNonce")
    assert len(t.sleeps) == 1


@pytest.mark.anyio
async def test_waiters_reserve_successive_slots() -> None:
    t = FakeTime()
    limiter = RequestRateLimiter({"newOrder": 2}, clock=t.clock, sleep=lambda s: _record_only(t, s))
    for _ in range(4):
        await limiter.acquire("newOrder")  # clock frozen: each waiter queues behind the last
    assert t.sleeps == [pytest.approx(0.5), pytest.approx(1.0)]


async def _record_only(t: FakeTime, seconds: float) -> None:
    t.sleeps.append(seconds)


@pytest.mark.anyio
async def test_unknown_endpoint_uses_star_bucket_and_overrides_apply() -> None:
    t = FakeTime()
    limiter = _limiter(t, {"*": 1})
    assert limiter.rate("authz") == Rate(1.0, 1.0)
    await limiter.acquire("something-else")
    await limiter.acquire("*")
    assert t.sleeps == [pytest.approx(1.0)]
    # Other buckets are independent of "*".
    await limiter.acquire("newOrder")
    assert len(t.sleeps) == 1


@pytest.mark.anyio
async def test_cancelled_waiter_gives_its_token_back() -> None:
    t = FakeTime()

    async def cancelled_sleep(seconds: float) -> None:
        t.sleeps.append(seconds)
        raise anyio.get_cancelled_exc_class()()

    limiter = RequestRateLimiter({"newAccount": 1}, clock=t.clock, sleep=cancelled_sleep)
    await limiter.acquire("newAccount")
    with pytest.raises(anyio.get_cancelled_exc_class()):
        await limiter.acquire("newAccount")
    with pytest.raises(anyio.get_cancelled_exc_class()):
        await limiter.acquire("newAccount")
    # The second waiter did not queue behind the cancelled first one.
    assert t.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]


@pytest.mark.anyio
async def test_infinite_rate_has_no_bucket() -> None:
    t = FakeTime()
    limiter = _limiter(t, {"newNonce": float("inf")})
    for _ in range(1000):
        await limiter.acquire("newNonce")
    assert t.sleeps == []


def test_bad_overrides_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown rate-limit endpoint 'newAuthz'"):
        RequestRateLimiter({"newAuthz": 5})
    for bad in (0, -1, float("nan")):
        with pytest.raises(ConfigError, match="positive"):
            RequestRateLimiter({"newOrder": bad})
    # The config module hands over pairs; both forms work.
    assert RequestRateLimiter((("newOrder", 3.0),)).rate("newOrder") == Rate(3.0, 3.0)


def test_order_limiter() -> None:
    assert order_limiter(4).total_tokens == 4
    with pytest.raises(ConfigError):
        order_limiter(0)
