"""The ACME client's pure parts (against real and fake CAs: tests/e2e/test_acme_client.py)."""

from __future__ import annotations

from lematt.acme.transport import parse_retry_after


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    now = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example date)
    assert parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now=now) == 30.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") is None
