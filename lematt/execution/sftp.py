"""Installing files on a host over SFTP, all of them or none.

Contract: ``install(sftp, files, remote_dir, host)`` writes (or links) every file under a
temporary name in ``remote_dir`` (``.<name>.lematt-tmp-<hex>``), owner-only while it is
written, then with its mode, fsynced where the server offers it; only when all are staged is
each renamed over its final name (posix-rename, or a careful rename for SFTPv3 servers
without it). Temporary names are removed on every failure path (shielded). Failures are
``RemoteError`` naming the host, the path and the cause (``reason``).
"""

from __future__ import annotations

import contextlib
import posixpath
import secrets
from collections.abc import Iterator, Sequence

import anyio
import asyncssh

from lematt.errors import RemoteError
from lematt.execution import UploadFile

TEMP_INFIX = ".lematt-tmp-"
CLEANUP_TIMEOUT = 5.0  # shielded removal of temporary names after a failure


def reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is sshd listening there?)"
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _errors(host: str, doing: str) -> Iterator[None]:
    try:
        yield
    except (asyncssh.Error, OSError) as exc:
        raise RemoteError(f"{host}: {doing}: {reason(exc)}") from exc


async def install(sftp: asyncssh.SFTPClient, files: Sequence[UploadFile], remote_dir: str,
              host: str) -> None:
    token = secrets.token_hex(4)
    pending: list[str] = []  # temporary names that may exist remotely
    try:
        staged = []
        for item in files:
            final = posixpath.join(remote_dir, item.name)
            temp = posixpath.join(remote_dir, f".{item.name}{TEMP_INFIX}{token}")
            pending.append(temp)
            await _stage(sftp, item, temp, host)
            staged.append((temp, final))
        for temp, final in staged:
            await _commit(sftp, temp, final, host)
            pending.remove(temp)
    finally:
        if pending:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                for temp in pending:
                    with contextlib.suppress(asyncssh.Error, OSError):
                        await sftp.remove(temp)


async def _stage(sftp: asyncssh.SFTPClient, item: UploadFile, temp: str, host: str) -> None:
    if item.symlink_target is not None:
        with _errors(host, f"creating symlink {temp} -> {item.symlink_target}"):
            await sftp.symlink(item.symlink_target, temp)
        return
    try:
        data = await anyio.Path(item.local).read_bytes()
    except OSError as exc:
        raise RemoteError(f"{host}: cannot read local file {item.local} for upload: "
                          f"{reason(exc)}") from exc
    with _errors(host, f"writing {temp}"):
        # Exclusive create, owner-only until complete: a key is never briefly readable.
        async with sftp.open(temp, "xb", asyncssh.SFTPAttrs(permissions=0o600)) as remote:
            await remote.write(data)
            await remote.chmod(item.mode)  # explicit: the server's umask shaped the create
            with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                await remote.fsync()


async def _commit(sftp: asyncssh.SFTPClient, temp: str, final: str, host: str) -> None:
    with _errors(host, f"renaming {temp} to {final}"):
        try:
            await sftp.posix_rename(temp, final)
            return
        except asyncssh.SFTPOpUnsupported:
            pass
        # SFTPv3 without the OpenSSH extension: plain rename refuses to replace, so move
        # the old file aside first and put it back if the new one cannot take its place.
        if not await sftp.exists(final):
            await sftp.rename(temp, final)
            return
        aside = f"{temp}-old"
        await sftp.rename(final, aside)
        try:
            await sftp.rename(temp, final)
        except asyncssh.SFTPError:
            with anyio.CancelScope(shield=True):
                await sftp.rename(aside, final)
            raise
        await sftp.remove(aside)
