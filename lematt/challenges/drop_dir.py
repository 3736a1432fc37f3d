"""http-01 by files in ``challengeDropDir``, served by the user's own web server.

Contract: the key authorization is written atomically as ``<dir>/<token>`` (mode 0644, so a
web server running as another user can read it) and removed on exit under a shielded scope,
also when the order fails or the run is cancelled. ``durable=False`` (for the private token
directory that lematt's order processes share with its challenge server, which lives only as
long as the run) skips the fsyncs and the worker thread: the file is written and renamed into
place on the event loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from lematt.challenges import check_token
from lematt.errors import ChallengeError
from lematt.store.atomic import temp_name, write_atomic
from lematt.store.layout import PUBLIC_MODE


class DropDirSolver:
    def __init__(self, directory: Path, *, durable: bool = True) -> None:
        self.directory = directory
        self.durable = durable

    def prepare(self) -> None:
        """Create the drop dir if needed; a clear error if it cannot be used."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChallengeError(
                f"challengeDropDir {self.directory} cannot be created: {exc}") from exc

    @contextlib.asynccontextmanager
    async def present(self, identifier: str, token: str, key_authorization: str
                      ) -> AsyncIterator[None]:
        path = self.directory / check_token(token)
        data = key_authorization.encode()
        try:
            if self.durable:
                await anyio.to_thread.run_sync(write_atomic, path, data, PUBLIC_MODE)
            else:
                tmp = temp_name(path)
                tmp.write_bytes(data)
                os.replace(tmp, path)
        except OSError as exc:
            raise ChallengeError(
                f"cannot write the challenge for {identifier} into {self.directory}: {exc}"
            ) from exc
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(FileNotFoundError):
                path.unlink()
