"""Installing files on a host over SFTP, all of them or none.

Contract: ``install(sftp, batches, host)`` installs several batches (files, remote_dir) - a
host's certificates and its keys - together: first it removes the temporary names of these
files that an earlier run left in those directories when its connection dropped or it was
killed; then it writes (or links) every file of every batch under a temporary name in its
directory (``.<name>.lematt-tmp-<hex>``), owner-only while it is written, then with its
mode, fsynced where the server offers it; only when all are staged is each renamed over its
final name (posix-rename, or a careful rename for SFTPv3 servers without it), in one final
pass, a pair's files (``UploadFile.pair``: a key and its certificate) one right after the
other. So a failure while staging replaces nothing, and a certificate and its key are
renamed moments apart instead of one upload step apart. Temporary names are removed on
every failure path (shielded) and, if lematt was killed, by the next run that reaches the
host. Failures are ``RemoteError`` naming the host, the path and the cause (``reason``).
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import secrets
from collections.abc import Iterator, Sequence

import anyio
import asyncssh

from lematt import failpoint
from lematt.errors import RemoteError
from lematt.execution import UploadFile

TEMP_INFIX = ".lematt-tmp-"
CLEANUP_TIMEOUT = 5.0  # shielded removal of temporary names after a failure
Batch = tuple[Sequence[UploadFile], str]  # files and the remote directory they go to


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


async def install(sftp: asyncssh.SFTPClient, batches: Sequence[Batch], host: str) -> None:
    """Install every batch's files in its directory: stale temporary names of these files
    (left by an earlier run that lost its connection) removed, everything staged, then all
    renamed in one final pass."""
    token = secrets.token_hex(4)
    pending: list[str] = []  # temporary names that may exist remotely
    try:
        for files, remote_dir in batches:
            await _remove_stale(sftp, files, remote_dir, host)
        staged: list[tuple[str, str, str]] = []
        for files, remote_dir in batches:
            for item in files:
                final = posixpath.join(remote_dir, item.name)
                temp = posixpath.join(remote_dir, f".{item.name}{TEMP_INFIX}{token}")
                pending.append(temp)
                await _stage(sftp, item, temp, host)
                staged.append((item.pair, temp, final))
        failpoint.hit("sftp.staged")
        # A pair's certificate and key are renamed one right after the other (sorted by
        # pair, stable): a connection lost now leaves at most one pair half switched.
        staged.sort(key=lambda entry: entry[0])
        for number, (pair, temp, final) in enumerate(staged):
            await _commit(sftp, temp, final, host)
            pending.remove(temp)
            if number + 1 == len(staged) or staged[number + 1][0] != pair:
                failpoint.hit("sftp.pair")
    finally:
        if pending:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                for temp in pending:
                    with contextlib.suppress(asyncssh.Error, OSError):
                        await sftp.remove(temp)


def _stale(name: str, ours: set[str]) -> bool:
    """Whether ``name`` is a temporary name this upload would use for one of ``ours``:
    ``.<file>.lematt-tmp-<8 hex>`` (or its ``-old`` aside of an SFTPv3 rename)."""
    if not name.startswith(".") or TEMP_INFIX not in name:
        return False
    base, _, tail = name[1:].rpartition(TEMP_INFIX)
    return base in ours and re.fullmatch(r"[0-9a-f]{8}(-old)?", tail) is not None


async def _remove_stale(sftp: asyncssh.SFTPClient, files: Sequence[UploadFile],
                        remote_dir: str, host: str) -> None:
    ours = {item.name for item in files}
    with _errors(host, f"listing {remote_dir}"):
        names = await sftp.listdir(remote_dir)
    for name in names:
        if isinstance(name, str) and _stale(name, ours):
            path = posixpath.join(remote_dir, name)
            with _errors(host, f"removing the stale {path}"), \
                    contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(path)


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
