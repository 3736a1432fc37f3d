"""Remote steps over SSH (asyncssh): commands, forced-command sessions, atomic SFTP uploads.

Contract
--------
``SshPool`` (``async with``, one per run) owns one connection per destination: opened on first
use (concurrent first uses wait for the same open), reused, re-opened if it dropped, and all
closed when the pool exits (shielded, bounded). A destination that cannot be reached - refused,
timed out, authentication failed, unknown or changed host key - raises ``RemoteError`` saying
so, and keeps failing for the rest of the run without new attempts. Host keys are always
checked, against the destination's known_hosts files (see ``ssh_config``).

``SshRunner(pool, destination)`` is a ``Runner``: ``run`` returns a ``CommandResult`` (a
non-zero exit is a value; ``exit_status`` None = stopped at its timeout); ``open_session``
does the same for a key whose authorized_keys entry forces the command; ``background`` keeps a
process running for the body of an ``async with`` and, on every exit path, sends it EOF on
stdin and stops it if it does not end by itself; ``upload`` / ``upload_batch`` install files
atomically over SFTP (a host's certificates and keys staged together, renamed in one pass).
Failures to reach the host or to transfer are ``RemoteError`` naming host, path and cause.

Stopping remote commands
------------------------
Closing an SSH channel does not end a remote command without a pty, and sshd refuses the
"signal" channel request for root logins (no post-auth privilege separation) and forced
commands. So ``run``/``background`` start the command as
``printf '<marker> %s' "$$" >&2; exec "$SHELL" -c '<command>'``: the command is interpreted by
the login shell exactly as a plain exec request would be, and we learn the id of the process
group sshd made for the session (its ``setsid``). To stop it, one ``/bin/sh`` script on a
second channel of the same connection does on the host what ``local.stop_group`` does here:
SIGTERM (and SIGCONT) to the group, up to ``STOP_GRACE_SECONDS`` for all of it to end,
SIGKILL to what is left, then a bounded check that nothing of the group is left (zombies
do not count, read from /proc where the host has it); then the channel is closed. A
background command is checked the same way also when it ended by itself at EOF, so nothing
it started outlives it. The marker line is removed from stderr. This needs a POSIX-style
login shell (sh, bash, dash, zsh, ksh). A forced command gets no marker; on timeout its
channel is only closed.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import shlex
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio
import asyncssh

from lematt.errors import RemoteError
from lematt.execution import STOP_GRACE_SECONDS, CommandResult, UploadFile, tail
from lematt.execution.local import KILL_WAIT_SECONDS
from lematt.execution.sftp import install, reason
from lematt.execution.ssh_config import (
    SshDestination,
    has_recorded_key,
    host_key_problem,
    load_known_hosts,
)

CONNECT_TIMEOUT = 15.0
COMMAND_TIMEOUT = 120.0
KEEPALIVE_INTERVAL = 15.0
KEEPALIVE_COUNT_MAX = 3  # ~45 s of silence and the connection counts as dead
CLOSE_TIMEOUT = 5.0  # shielded waits for channels/connections/cleanup to finish
SESSION_LABEL = "(forced command)"  # CommandResult.command of open_session()
_OUTPUT_LIMIT = 64 * 1024  # bytes of each stream kept (a rolling tail)
_MARKER_WINDOW = 16 * 1024  # login-shell noise (.bashrc) tolerated before the marker


class _Tail:
    """In-memory sink for an asyncssh redirect: keeps the last ``_OUTPUT_LIMIT`` bytes.

    asyncssh writes into it synchronously as data arrives, so no reader task is needed and a
    chatty process never stalls on a full channel window. With ``token`` it also takes the
    process-group marker line (see the module docstring) out of the stream, remembering it.
    """

    def __init__(self, token: str | None = None) -> None:
        self.data = bytearray()
        self.pgid: int | None = None
        self.closed = False
        self._waiter: anyio.Event | None = None
        self._marker = None if token is None else re.compile(
            rb"lematt-pgid-" + token.encode() + rb" (\d+)\n")

    def write(self, data: bytes) -> None:
        self.data.extend(data)
        if self._marker is not None:
            found = self._marker.search(self.data)
            if found is not None:
                self.pgid = int(found.group(1))
                del self.data[found.start():found.end()]
                self._marker = None
            elif len(self.data) > _MARKER_WINDOW:
                self._marker = None  # a forced command: sshd never ran our wrapper
        if len(self.data) > _OUTPUT_LIMIT:
            del self.data[:-_OUTPUT_LIMIT]
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    async def changed(self) -> None:
        """Return after the next write or end of stream (asyncssh calls us on the loop)."""
        if self.closed:
            return
        self._waiter = anyio.Event()
        await self._waiter.wait()

    def fileno(self) -> int:
        # asyncssh treats an object without a real fd as a plain file-like sink.
        raise io.UnsupportedOperation("in-memory sink")

    def close(self) -> None:
        """Called by asyncssh at EOF; the data stays readable."""
        self.closed = True
        self._wake()


class RemoteProcess:
    """A running background command: its output so far and a way to wait for a line."""

    def __init__(self, proc: asyncssh.SSHClientProcess[bytes], out: _Tail, err: _Tail) -> None:
        self._proc = proc
        self._out = out
        self._err = err

    @property
    def exit_status(self) -> int | None:
        return self._proc.returncode

    def stderr_tail(self) -> str:
        return tail(bytes(self._err.data))

    async def first_line(self, timeout: float) -> str | None:
        """The first stdout line, or None if stdout ended or ``timeout`` passed first."""
        with anyio.move_on_after(timeout):
            while b"\n" not in self._out.data:
                if self._out.closed:
                    return None
                await self._out.changed()
            return bytes(self._out.data).split(b"\n", 1)[0].decode(errors="replace")
        return None


# Stops process group @G@ on the host (see the module docstring); prints "gone" or "left".
# POSIX sh only: parameter expansion instead of word splitting (zsh does not split), and a
# fractional sleep where the host's sleep takes one (GNU, BSD, busybox), else whole seconds.
_STOP_SCRIPT = """\
g=@G@
alive() {
  kill -0 -$g 2>/dev/null || return 1
  [ -r /proc/self/stat ] || return 0
  for f in /proc/[0-9]*/stat; do
    { read -r l < "$f"; } 2>/dev/null || continue
    r=${l##*) }; st=${r%% *}; r=${r#* }; r=${r#* }
    [ "${r%% *}" = "$g" ] && [ "$st" != Z ] && [ "$st" != X ] && return 0
  done
  return 1
}
settle() {
  i=0
  while alive && [ $i -lt $1 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i + 1)); done
}
if alive; then kill -TERM -$g; kill -CONT -$g; settle @TERM_ROUNDS@; fi 2>/dev/null
if alive; then kill -KILL -$g; settle @KILL_ROUNDS@; fi 2>/dev/null
if alive; then echo left; else echo gone; fi
"""


def _stop_command(pgid: int) -> str:
    script = (_STOP_SCRIPT.replace("@G@", str(pgid))
              .replace("@TERM_ROUNDS@", str(max(1, round(STOP_GRACE_SECONDS * 10))))
              .replace("@KILL_ROUNDS@", str(max(1, round(KILL_WAIT_SECONDS * 10)))))
    return f"/bin/sh -c {shlex.quote(script)}"


def _wrap(command: str, token: str) -> str:
    # $$ of the login shell is the session's process group (sshd setsid()s the child).
    return (f"printf 'lematt-pgid-{token} %s\\n' \"$$\" >&2; "
            f"exec \"${{SHELL:-/bin/sh}}\" -c {shlex.quote(command)}")


class SshPool:
    """One SSH connection per destination for one run; see the module docstring."""

    def __init__(self, *, connect_timeout: float = CONNECT_TIMEOUT,
                 command_timeout: float = COMMAND_TIMEOUT,
                 keepalive_interval: float = KEEPALIVE_INTERVAL,
                 keepalive_count_max: int = KEEPALIVE_COUNT_MAX) -> None:
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.connections_opened = 0  # for tests and the report: real SSH handshakes done
        self._conns: dict[tuple[object, ...], asyncssh.SSHClientConnection] = {}
        self._locks: dict[tuple[object, ...], anyio.Lock] = {}
        self._failures: dict[tuple[object, ...], str] = {}
        self._closed = False

    async def __aenter__(self) -> SshPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def runner(self, destination: SshDestination) -> SshRunner:
        """A ``Runner`` for ``destination`` that uses this pool's connection to it."""
        return SshRunner(self, destination)

    async def aclose(self) -> None:
        """Close every connection; shielded and bounded, so it also runs when cancelled."""
        self._closed = True
        conns = list(self._conns.values())
        self._conns.clear()
        with anyio.CancelScope(shield=True):
            for conn in conns:
                conn.close()
            with anyio.move_on_after(CLOSE_TIMEOUT):
                for conn in conns:
                    await conn.wait_closed()

    async def connection(self, destination: SshDestination) -> asyncssh.SSHClientConnection:
        """The open connection for ``destination``, opening it if needed (``RemoteError``)."""
        if self._closed:
            raise RuntimeError("SshPool used after it was closed")
        key = destination.connection_key()
        # setdefault has no await: two tasks always get the same lock.
        async with self._locks.setdefault(key, anyio.Lock()):
            if key in self._failures:
                raise RemoteError(self._failures[key])
            conn = self._conns.get(key)
            if conn is not None and not conn.is_closed():
                return conn
            try:
                conn = await self._open(destination)
            except RemoteError as exc:
                self._failures[key] = str(exc)
                raise
            self._conns[key] = conn
            self.connections_opened += 1
            return conn

    async def _open(self, dest: SshDestination) -> asyncssh.SSHClientConnection:
        who = f"{dest.written} ({dest.host_key()})"
        if not dest.known_hosts:
            raise RemoteError(
                f"{who}: UserKnownHostsFile none in {dest.config_path} would switch host key "
                "checking off, which lematt never does; point it at a known_hosts file")
        try:
            known, files = await anyio.to_thread.run_sync(load_known_hosts, dest.known_hosts)
        except (OSError, ValueError) as exc:
            raise RemoteError(f"{who}: cannot read known_hosts "
                              f"{', '.join(dest.known_hosts)}: {reason(exc)}") from exc
        try:
            # The asyncssh timeout covers TCP + handshake + auth; ours is only a backstop.
            with anyio.fail_after(self.connect_timeout + CLOSE_TIMEOUT):
                return await asyncssh.connect(
                    dest.host, port=dest.port, username=dest.user or (),
                    config=[str(dest.config_path)] if dest.config_path else [],
                    known_hosts=known, connect_timeout=self.connect_timeout,
                    keepalive_interval=self.keepalive_interval,
                    keepalive_count_max=self.keepalive_count_max)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise RemoteError(f"{who}: {host_key_problem(dest, known, files)}") from exc
        except asyncssh.KeyExchangeFailed as exc:
            # Recorded keys restrict the algorithms offered; a host that now has only other
            # key types fails key exchange instead of verification: a changed key too.
            if has_recorded_key(dest, known):
                raise RemoteError(f"{who}: {host_key_problem(dest, known, files)}") from exc
            raise RemoteError(f"{who}: key exchange failed: {reason(exc)}") from exc
        except asyncssh.PermissionDenied as exc:
            raise RemoteError(f"{who}: login as {dest.user} refused ({reason(exc)}); check "
                              "IdentityFile and the host's authorized_keys") from exc
        except TimeoutError as exc:
            raise RemoteError(f"{who}: no SSH connection within "
                              f"{self.connect_timeout:.0f} s (timed out)") from exc
        except (asyncssh.Error, OSError, ValueError) as exc:
            raise RemoteError(f"{who}: cannot connect: {reason(exc)}") from exc


class SshRunner:
    """Runs steps on one destination through a pool; ``name`` is the destination as written."""

    def __init__(self, pool: SshPool, destination: SshDestination) -> None:
        self.pool, self.destination, self.name = pool, destination, destination.written

    async def run(self, command: str, *, timeout: float | None = None,
                  input: bytes | None = None) -> CommandResult:
        """Run ``command`` (a shell string, values already quoted by the caller) with stdin at
        EOF, or ``input`` then EOF; ``timeout`` defaults to the pool's command timeout."""
        return await self._execute(command, timeout, input)

    async def open_session(self, *, timeout: float | None = None) -> CommandResult:
        """Open a session without a command: for keys with ``command="..."`` in
        authorized_keys, whose forced command then runs and reports its exit status."""
        return await self._execute(None, timeout)

    async def _start(self, command: str | None, out: _Tail, err: _Tail, token: str
                     ) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[bytes]]:
        conn = await self.pool.connection(self.destination)
        wire = None if command is None else _wrap(command, token)
        try:
            proc = await conn.create_process(wire, encoding=None, stdout=out, stderr=err)
        except (asyncssh.Error, OSError) as exc:
            raise RemoteError(f"{self.name}: cannot start `{command or SESSION_LABEL}`: "
                              f"{reason(exc)}") from exc
        return conn, proc

    async def _execute(self, command: str | None, timeout: float | None,
                       input: bytes | None = None) -> CommandResult:
        label = SESSION_LABEL if command is None else command
        limit = self.pool.command_timeout if timeout is None else timeout
        token = secrets.token_hex(8)
        out, err = _Tail(), _Tail(token)
        conn, proc = await self._start(command, out, err, token)
        finished = False
        try:
            with anyio.move_on_after(limit):
                if input:
                    # A command that does not read its input is not an error.
                    with contextlib.suppress(asyncssh.Error, OSError):
                        proc.stdin.write(input)
                        await proc.stdin.drain()
                with contextlib.suppress(asyncssh.Error, OSError):
                    proc.stdin.write_eof()  # like </dev/null: nothing waits for our input
                await proc.wait_closed()
                finished = True
        finally:
            if not finished:  # timed out, cancelled, or failed while waiting
                await self._stop(conn, proc, err.pgid)
        status = proc.returncode if finished else None
        if finished and status is None:
            raise RemoteError(f"{self.name}: `{label}`: the connection was lost before the "
                              "command reported an exit status")
        return CommandResult(self.name, label, status, tail(bytes(out.data)),
                             tail(bytes(err.data)))

    @contextlib.asynccontextmanager
    async def background(self, command: str, *, stdin_data: bytes = b""
                         ) -> AsyncIterator[RemoteProcess]:
        """Run ``command`` with its stdin open for the body (``stdin_data`` written first);
        on exit send EOF, give it ``STOP_GRACE_SECONDS`` to end, then stop its process group
        and close the channel. The body gets a ``RemoteProcess`` to watch its output."""
        token = secrets.token_hex(8)
        out, err = _Tail(), _Tail(token)
        conn, proc = await self._start(command, out, err, token)
        try:
            if stdin_data:
                try:
                    proc.stdin.write(stdin_data)
                    await proc.stdin.drain()
                except (asyncssh.Error, OSError) as exc:
                    raise RemoteError(f"{self.name}: cannot send input to `{command}`: "
                                      f"{reason(exc)}") from exc
            yield RemoteProcess(proc, out, err)
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(asyncssh.Error, OSError):
                    proc.stdin.write_eof()
                with anyio.move_on_after(STOP_GRACE_SECONDS):
                    await proc.wait_closed()
                # Also when it ended by itself: what it started may still run.
                if proc.returncode is None or err.pgid is not None:
                    await self._stop(conn, proc, err.pgid)

    async def _stop(self, conn: asyncssh.SSHClientConnection,
                    proc: asyncssh.SSHClientProcess[bytes], pgid: int | None) -> bool:
        """End a remote command and everything in its process group (the module docstring),
        then close the channel. Shielded and bounded: runs on timeouts and on cancellation
        alike. Returns whether the group is confirmed gone (False without a ``pgid``)."""
        gone = False
        with anyio.CancelScope(shield=True):
            if pgid is not None:
                with anyio.move_on_after(STOP_GRACE_SECONDS + KILL_WAIT_SECONDS
                                         + CLOSE_TIMEOUT):
                    with contextlib.suppress(asyncssh.Error, OSError):
                        result = await conn.run(_stop_command(pgid), check=False)
                        gone = str(result.stdout).strip() == "gone"
            proc.close()
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await proc.wait_closed()
        return gone

    async def upload(self, files: Sequence[UploadFile], remote_dir: str, *,
                     timeout: float | None = None) -> None:
        """Install ``files`` in ``remote_dir`` atomically, over SFTP: ``upload_batch`` with
        one batch."""
        await self.upload_batch([(files, remote_dir)], timeout=timeout)

    async def upload_batch(self, batches: Sequence[tuple[Sequence[UploadFile], str]], *,
                           timeout: float | None = None) -> None:
        """Install several (files, remote_dir) batches - a host's certificates and keys -
        over one SFTP session, together (``lematt.execution.sftp.install``).

        Temporary names an earlier run left for these files are removed first; then every
        file is written (or linked) under a temporary name in its directory
        (``.<name>.lematt-tmp-<hex>``), given its mode and fsynced where the server offers
        it; only when all are staged is each renamed over its final name (posix-rename), so
        a failure while staging replaces nothing. Temporary names are removed on every
        failure path (shielded). Each ``remote_dir`` must exist. Raises ``RemoteError``
        naming host, path and cause (``ValueError`` for a name that is not a plain file
        name).
        """
        for files, _ in batches:
            for item in files:
                if item.name in ("", ".", "..") or "/" in item.name:
                    raise ValueError(f"upload name {item.name!r} is not a plain file name")
        batches = [(files, remote_dir) for files, remote_dir in batches if files]
        if not batches:
            return
        where = ", ".join(dict.fromkeys(remote_dir for _, remote_dir in batches))
        limit = self.pool.command_timeout if timeout is None else timeout
        conn = await self.pool.connection(self.destination)
        done = False
        with anyio.move_on_after(limit):
            with self._errors(f"SFTP session for {where}"):
                async with conn.start_sftp_client() as sftp:
                    await install(sftp, batches, self.name)
            done = True
        if not done:
            raise RemoteError(f"{self.name}: upload to {where} timed out after "
                              f"{limit:.0f} s")

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (asyncssh.Error, OSError) as exc:
            raise RemoteError(f"{self.name}: {doing}: {reason(exc)}") from exc
