"""Fixtures for the whole suite; the suite's layout.

``tests/unit/``  no network, no subprocess, no real service (``tests/unit/conftest.py`` makes
                 any attempt fail); the whole directory runs in a few seconds.
``tests/e2e/``   real Pebble, acme2certifier and sshd (``lematt.testing``), lematt run as a
                 process, the forwarder as a process; the service fixtures live in
                 ``tests/e2e/conftest.py`` so that only these tests can start a service.
``tests/fakes.py``, ``tests/ca_front.py``  stand-ins and a TLS front for e2e tests (test-only).

Fixtures
--------
``anyio_backend``  session: ``"asyncio"`` for every ``@pytest.mark.anyio`` test.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """lematt runs on asyncio only (aiohttp, asyncssh). anyio's plugin would otherwise also
    run every ``@pytest.mark.anyio`` test under trio wherever trio happens to be installed."""
    return "asyncio"
