"""http-01 served by lematt itself (``challengeListen``) for the duration of a run.

Contract: ``ChallengeServer.running(host, port)`` binds before it yields (a bind failure is a
``ChallengeError`` that says why) and stops when the block ends. It answers
``GET /.well-known/acme-challenge/<token>`` with the key authorization of a presented token
and 404 for everything else; tokens are held in memory only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from aiohttp import web

from lematt.challenges import CHALLENGE_PATH, check_token
from lematt.errors import ChallengeError


class ChallengeServer:
    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.path[len(CHALLENGE_PATH):] if request.path.startswith(
            CHALLENGE_PATH) else ""
        answer = self._tokens.get(token)
        if answer is None or request.query_string:
            return web.Response(status=404, text="not found\n")
        return web.Response(text=answer, content_type="text/plain")

    @contextlib.asynccontextmanager
    async def running(self, host: str, port: int) -> AsyncIterator[ChallengeServer]:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                why = "permission denied (ports below 1024 need root or " \
                      "cap_net_bind_service)" if exc.errno == 13 else exc.strerror
                raise ChallengeError(
                    f"challengeListen {host}:{port}: cannot listen: {why}") from exc
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    @contextlib.asynccontextmanager
    async def present(self, identifier: str, token: str, key_authorization: str
                      ) -> AsyncIterator[None]:
        self._tokens[check_token(token)] = key_authorization
        try:
            yield
        finally:
            self._tokens.pop(token, None)
