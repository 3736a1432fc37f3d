"""The remote http-01 redirector (forwarder/leforward.py), run as a real process on loopback
(its parsers and imports, without a process: tests/unit/test_forwarder.py).

Every forwarder here listens on 127.0.0.4 (away from the Pebble rig on 127.0.0.1..3) on a port
the kernel picks (``--listen 127.0.0.4:0``), which the READY line reports: no port races. Requests
are raw bytes over a socket, so each redirect rule is checked on the wire. Every wait is bounded
by a timeout; nothing sleeps to synchronise. A fixture kills any forwarder a test leaves behind
and fails that test, so no process outlives the suite.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import forwarder

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAM = REPO_ROOT / "forwarder" / "leforward.py"
HOST = "127.0.0.4"
# Only written into Location headers: nothing here connects to it, so no port offset.
BASE = "http://127.0.0.1:5002"
TOKEN = "kZ3o_Qp-9xYw2LmNbV4cT7rE1uI8oPaSdFgHjKlZxCv"  # 43 characters, like a real ACME token
CHALLENGE = "/.well-known/acme-challenge/" + TOKEN
WAIT = 20.0  # seconds: upper bound of every wait for a process or a socket


class Forwarder:
    """A started forwarder process: its READY address, stdin, and stderr (kept in a file)."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.ready_line = b""
        self.port = 0

    def wait_ready(self) -> bytes:
        """The first stdout line (b"" if stdout ended first), read with a deadline."""
        deadline = time.monotonic() + WAIT
        fd = self.proc.stdout.fileno()
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no READY line within {WAIT} s; stderr: {self.stderr()}"
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return data
                data += chunk
        self.ready_line = data
        match = re.fullmatch(rb"READY (\S+):([0-9]+)\n", data)
        if match:
            self.port = int(match.group(2))
        return data

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close_stdin(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()

    def wait(self) -> int:
        return self.proc.wait(timeout=WAIT)

    def rest_of_stdout(self) -> bytes:
        """Whatever the process wrote to stdout after the READY line (call after it exited)."""
        return self.proc.stdout.read()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """``spawn(args, command=None, stdin=PIPE)``: start leforward.py (or ``command``) + ``args``."""
    started: list[Forwarder] = []

    def start(args: list[str], command: list[str] | None = None,
              stdin: int = subprocess.PIPE) -> Forwarder:
        stderr_path = tmp_path / f"stderr-{len(started)}.txt"
        argv = (command or [sys.executable, str(PROGRAM)]) + args
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr,
                                    cwd=REPO_ROOT, start_new_session=True)
        fwd = Forwarder(proc, stderr_path)
        started.append(fwd)
        return fwd

    yield start
    leftovers = []
    for fwd in started:
        if fwd.proc.poll() is None:
            leftovers.append(fwd.proc.args)
            os.killpg(fwd.proc.pid, signal.SIGKILL)
            fwd.proc.wait(timeout=WAIT)
        for stream in (fwd.proc.stdin, fwd.proc.stdout):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()
    assert not leftovers, f"forwarder processes were still running: {leftovers}"


def start_ready(spawn, *extra: str, base: str = BASE) -> Forwarder:
    fwd = spawn(["--baseurl", base, "--listen", f"{HOST}:0", *extra])
    line = fwd.wait_ready()
    assert fwd.port, f"expected READY, got {line!r}; stderr: {fwd.stderr()}"
    return fwd


def stop(fwd: Forwarder) -> None:
    """Close stdin (the SSH session ends) and require a clean exit with nothing more on stdout."""
    fwd.close_stdin()
    assert fwd.wait() == 0, fwd.stderr()
    assert fwd.rest_of_stdout() == b""


def exchange(port: int, request: bytes, source: str | None = None) -> bytes:
    """Send raw ``request`` bytes and return everything received until the server closes."""
    with socket.create_connection((HOST, port), timeout=WAIT,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(request)
        return read_to_eof(sock)


def read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep, f"incomplete response: {response!r}"
    status_line, *fields = head.decode("ascii").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), status_line
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def get(target: str, method: str = "GET") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: www.example.test\r\n\r\n".encode()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forwarder]:
    """One forwarder for the request-rule tests (they do not change its state)."""
    stderr_path = tmp_path_factory.mktemp("forwarder") / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, str(PROGRAM), "--baseurl", BASE + "/",
                                 "--listen", f"{HOST}:0", "--max-seconds", "600"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                start_new_session=True)
    fwd = Forwarder(proc, stderr_path)
    try:
        assert fwd.wait_ready().startswith(b"READY "), fwd.stderr()
        yield fwd
        stop(fwd)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=WAIT)
        proc.stdout.close()


# --- redirect rules, one test each ---------------------------------------------------------------

def test_challenge_get_redirects_to_baseurl(shared: Forwarder) -> None:
    status, headers, body = parse(exchange(shared.port, get(CHALLENGE)))
    assert status == 301
    # The trailing slash of --baseurl must not double up in the Location.
    assert headers["location"] == f"{BASE}/.well-known/acme-challenge/{TOKEN}"
    assert headers["content-length"] == "0"
    assert headers["connection"] == "close"
    assert body == b""


def test_challenge_head_redirects_without_body(shared: Forwarder) -> None:
    status, headers, body = parse(exchange(shared.port, get(CHALLENGE, "HEAD")))
    assert (status, headers["location"], body) == (301, BASE + CHALLENGE, b"")


def test_http10_request_and_leading_empty_line_are_served(shared: Forwarder) -> None:
    status, headers, _ = parse(exchange(shared.port, f"GET {CHALLENGE} HTTP/1.0\r\n\r\n".encode()))
    assert (status, headers["location"]) == (301, BASE + CHALLENGE)
    status, _, _ = parse(exchange(shared.port, b"\r\n" + get(CHALLENGE)))
    assert status == 301


def test_request_is_logged_on_stderr(shared: Forwarder) -> None:
    exchange(shared.port, get(CHALLENGE))
    assert f'"GET {CHALLENGE} HTTP/1.1" 301' in shared.stderr()


@pytest.mark.parametrize("target", [
    "/",
    "/index.html",
    "/.well-known/acme-challenge/",
    "/.well-known/acme-challenge",
    "/.well-known/acme-challenge/" + "a" * 257,
    "/.well-known/acme-challenge/tok.en",
    "/.well-known/acme-challenge/token=",
    "/.well-known/acme-challenge/tok/en",
    "/.well-known/acme-challenge/tok/",
    "//.well-known/acme-challenge/" + TOKEN,
    "/.WELL-KNOWN/acme-challenge/" + TOKEN,
    "/.well-known/other/" + TOKEN,
    "*",
], ids=["root", "other-path", "no-token", "no-slash", "token-too-long", "dot-in-token",
        "padding", "extra-segment", "trailing-slash", "double-slash", "case", "other-well-known",
        "asterisk"])
def test_other_paths_are_404(shared: Forwarder, target: str) -> None:
    status, headers, _ = parse(exchange(shared.port, get(target)))
    assert status == 404
    assert "location" not in headers


@pytest.mark.parametrize("target", [
    "/.well-known/acme-challenge/../../etc/passwd",
    "/.well-known/acme-challenge/..",
    "/.well-known/../.well-known/acme-challenge/" + TOKEN,
    "/.well-known/acme-challenge/./" + TOKEN,
])
def test_dot_segments_are_404(shared: Forwarder, target: str) -> None:
    assert parse(exchange(shared.port, get(target)))[0] == 404


@pytest.mark.parametrize("target", [
    "/.well-known/acme-challenge/%2e%2e",
    "/.well-known/acme-challenge/%2E%2E%2Fetc",
    "/.well-known/acme-challenge/a%2fb",
    "/.well-known%2facme-challenge/" + TOKEN,
    "/.well-known/acme-challenge/tok%41",
])
def test_percent_encoded_targets_are_404(shared: Forwarder, target: str) -> None:
    assert parse(exchange(shared.port, get(target)))[0] == 404


@pytest.mark.parametrize("suffix", ["?x=1", "?", "#frag"])
def test_query_and_fragment_are_404(shared: Forwarder, suffix: str) -> None:
    assert parse(exchange(shared.port, get(CHALLENGE + suffix)))[0] == 404


@pytest.mark.parametrize("target", [
    "http://www.example.test" + CHALLENGE,
    "https://www.example.test" + CHALLENGE,
    "www.example.test:80",
])
def test_absolute_and_authority_form_targets_are_404(shared: Forwarder, target: str) -> None:
    assert parse(exchange(shared.port, get(target)))[0] == 404


@pytest.mark.parametrize("length", [1100, 8100, 20000],
                         ids=["over-limit", "near-buffer", "over-buffer"])
def test_over_long_request_line_is_404_and_closed(shared: Forwarder, length: int) -> None:
    target = "/.well-known/acme-challenge/" + "a" * length
    status, headers, _ = parse(exchange(shared.port, get(target)))
    assert status == 404
    assert headers["connection"] == "close"
    assert "<request line " in shared.stderr()  # refused for its length, not parsed


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get", "CONNECT"])
def test_other_methods_are_405(shared: Forwarder, method: str) -> None:
    status, headers, _ = parse(exchange(shared.port, get(CHALLENGE, method)))
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert "location" not in headers


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    f"GET {CHALLENGE}\r\n\r\n".encode(),  # HTTP/0.9 style, no version
    f"GET  {CHALLENGE} HTTP/1.1\r\n\r\n".encode(),
    f"GET {CHALLENGE} HTTP/1.1 extra\r\n\r\n".encode(),
    f"GET {CHALLENGE} HTTQ/1.1\r\n\r\n".encode(),
    f"G(T {CHALLENGE} HTTP/1.1\r\n\r\n".encode(),
    f"GET {CHALLENGE}\x1b[2J HTTP/1.1\r\n\r\n".encode(),
    "GET /caf\xe9 HTTP/1.1\r\n\r\n".encode("latin-1"),
    f"GET {CHALLENGE} HTTP/1.1\r\nNoColonHere\r\n\r\n".encode(),
    f"GET {CHALLENGE} HTTP/1.1\r\nHost : x\r\n\r\n".encode(),
    f"GET {CHALLENGE} HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n".encode(),
    f"GET {CHALLENGE} HTTP/1.1\r\nHost: x".encode(),  # client ends mid-head
], ids=["garbage", "no-version", "double-space", "four-words", "bad-protocol", "bad-method-char",
        "control-char", "non-ascii", "field-without-colon", "space-before-colon", "obs-fold",
        "truncated"])
def test_malformed_requests_are_400(shared: Forwarder, request_bytes: bytes) -> None:
    with socket.create_connection((HOST, shared.port), timeout=WAIT) as sock:
        sock.sendall(request_bytes)
        sock.shutdown(socket.SHUT_WR)  # so the truncated request really ends there
        status, headers, _ = parse(read_to_eof(sock))
    assert status == 400
    assert "location" not in headers


def test_control_characters_are_escaped_in_the_log(shared: Forwarder) -> None:
    exchange(shared.port, b"GET /\x1b]0;pwned\x07 HTTP/1.1\r\n\r\n")
    log = shared.stderr()
    assert "\x1b" not in log and "\x07" not in log
    assert "\\x1b]0;pwned\\x07" in log


def test_other_http_versions_are_505(shared: Forwarder) -> None:
    assert parse(exchange(shared.port, f"GET {CHALLENGE} HTTP/2.0\r\n\r\n".encode()))[0] == 505


def test_too_many_or_too_long_header_fields_are_431(shared: Forwarder) -> None:
    many = "".join(f"X-Field-{i}: {i}\r\n" for i in range(100))
    request = f"GET {CHALLENGE} HTTP/1.1\r\n{many}\r\n".encode()
    assert parse(exchange(shared.port, request))[0] == 431
    long_field = f"GET {CHALLENGE} HTTP/1.1\r\nX-Long: {'v' * 9000}\r\n\r\n".encode()
    assert parse(exchange(shared.port, long_field))[0] == 431
    total = "".join(f"X-Field-{i}: {'v' * 500}\r\n" for i in range(40))
    assert parse(exchange(shared.port, f"GET {CHALLENGE} HTTP/1.1\r\n{total}\r\n".encode()))[0] \
        == 431


# --- concurrency and timeouts ---------------------------------------------------------------------

def test_slow_client_does_not_stall_a_concurrent_request(shared: Forwarder) -> None:
    request = get(CHALLENGE)
    with socket.create_connection((HOST, shared.port), timeout=WAIT) as slow:
        slow.sendall(request[:20])  # a request line cut in the middle, connection held open
        idle = socket.create_connection((HOST, shared.port), timeout=WAIT)  # sends nothing
        try:
            status, headers, _ = parse(exchange(shared.port, request, source="127.0.0.5"))
            assert (status, headers["location"]) == (301, BASE + CHALLENGE)
        finally:
            idle.close()
        # The slow connection was kept, not dropped: finishing its request still gets the answer.
        slow.sendall(request[20:])
        assert parse(read_to_eof(slow))[0] == 301


def test_client_that_never_finishes_its_head_gets_408(spawn) -> None:
    fwd = start_ready(spawn, "--request-timeout", "1")
    with socket.create_connection((HOST, fwd.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /.well-known/acme-challenge/")
        status, headers, _ = parse(read_to_eof(sock))
    assert (status, headers["connection"]) == (408, "close")
    stop(fwd)


# --- READY line, lifetime, exit statuses ----------------------------------------------------------

def test_ready_line_names_the_bound_address_and_is_all_of_stdout(spawn) -> None:
    with socket.socket() as probe:  # a free port, to check READY echoes an explicit one
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    fwd = spawn(["--baseurl", BASE, "--listen", f"{HOST}:{port}"])
    assert fwd.wait_ready() == f"READY {HOST}:{port}\n".encode()
    assert forwarder.parse_ready_line(fwd.ready_line.decode()) == (HOST, port)
    assert parse(exchange(port, get(CHALLENGE)))[0] == 301
    stop(fwd)  # also checks that nothing but READY went to stdout


def test_ipv6_listen_address(spawn) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    fwd = spawn(["--baseurl", BASE, "--listen", "[::1]:0"])
    line = fwd.wait_ready()
    assert re.fullmatch(rb"READY \[::1\]:[0-9]+\n", line), line
    with socket.create_connection(("::1", fwd.port), timeout=WAIT) as sock:
        sock.sendall(get(CHALLENGE))
        assert parse(read_to_eof(sock))[0] == 301
    stop(fwd)


def test_stdin_end_of_file_ends_it_and_frees_the_port(spawn) -> None:
    fwd = start_ready(spawn)
    stop(fwd)
    assert "stdin reached end-of-file" in fwd.stderr()
    with socket.socket() as again:  # nothing listens there any more
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((HOST, fwd.port))
        again.listen(1)


def test_socket_stdin_end_of_file_ends_it(spawn) -> None:
    """An SSH channel is often a socket, not a pipe."""
    ours, theirs = socket.socketpair()
    with ours:
        fwd = spawn(["--baseurl", BASE, "--listen", f"{HOST}:0"], stdin=theirs.fileno())
        theirs.close()
        assert fwd.wait_ready().startswith(b"READY ")
        ours.sendall(b"ignored input\n")
        assert parse(exchange(fwd.port, get(CHALLENGE)))[0] == 301
    assert fwd.wait() == 0
    assert "stdin reached end-of-file" in fwd.stderr()


def test_non_blocking_stdin_is_not_mistaken_for_end_of_file(spawn) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # shared descriptor flags, as another process could set them
    try:
        fwd = spawn(["--baseurl", BASE, "--listen", f"{HOST}:0"], stdin=read_end)
    finally:
        os.close(read_end)
    try:
        assert fwd.wait_ready().startswith(b"READY ")
        assert parse(exchange(fwd.port, get(CHALLENGE)))[0] == 301
        assert fwd.proc.poll() is None
    finally:
        os.close(write_end)
    assert fwd.wait() == 0
    assert "stdin reached end-of-file" in fwd.stderr()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_signals_end_it_with_status_0(spawn, signum: signal.Signals) -> None:
    fwd = start_ready(spawn)
    fwd.proc.send_signal(signum)
    assert fwd.wait() == 0
    assert f"received {signum.name}" in fwd.stderr()


def test_max_seconds_ends_it_while_stdin_stays_open(spawn) -> None:
    fwd = start_ready(spawn, "--max-seconds", "1")
    assert fwd.wait() == 0
    assert "reached --max-seconds 1" in fwd.stderr()
    fwd.close_stdin()


def test_null_stdin_is_end_of_file_unless_the_watch_is_off(spawn) -> None:
    ends = spawn(["--baseurl", BASE, "--listen", f"{HOST}:0"], stdin=subprocess.DEVNULL)
    assert ends.wait_ready().startswith(b"READY ")
    assert ends.wait() == 0
    stays = spawn(["--baseurl", BASE, "--listen", f"{HOST}:0", "--no-stdin-watch"],
                  stdin=subprocess.DEVNULL)
    stays.wait_ready()
    assert parse(exchange(stays.port, get(CHALLENGE)))[0] == 301  # still up after stdin EOF
    stays.proc.terminate()
    assert stays.wait() == 0


def test_port_in_use_fails_with_status_1_and_says_so(spawn) -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        fwd = spawn(["--baseurl", BASE, "--listen", f"{HOST}:{port}"])
        assert fwd.wait_ready() == b""  # no READY line at all
        assert fwd.wait() == 1
    assert f"port {port} is in use" in fwd.stderr()


@pytest.mark.parametrize("baseurl", [
    "ftp://central.example.test",
    "central.example.test",
    "http://",
    "http:central.example.test",
    "http://central.example.test/path",
    "http://central.example.test/.well-known/acme-challenge/",
    "http://central.example.test/?q=1",
    "http://central.example.test#frag",
    "http://user:pw@central.example.test",
    "http://central.example.test:0",
    "http://central.example.test:65536",
    "http://central.example.test:http",
    "http://central.example.test:",
    "http://central example.test",
    "http://central.example.test\r\nSet-Cookie: x=1",
    "http://cëntral.example.test",
    "http://under_score.example.test",
    "http://-leading.example.test",
    "http://[::1",
    "http://[not-ipv6]",
    "http://[fe80::1%25eth0]",
    "http://central.example.test\\@evil.test",
    "",
])
def test_bad_baseurl_is_a_usage_error(baseurl: str) -> None:
    result = subprocess.run([sys.executable, str(PROGRAM), "--baseurl", baseurl,
                             "--listen", f"{HOST}:0"], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=WAIT)
    assert result.returncode == 2, result.stderr
    assert b"--baseurl" in result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize("args", [
    ["--listen", "127.0.0.4"],
    ["--listen", "::1:80"],
    ["--listen", "localhost:80"],
    ["--listen", ":65536"],
    ["--listen", ":-1"],
    ["--listen", "[::1%lo]:80"],
    ["--listen", "[127.0.0.4]:80"],
    ["--max-seconds", "0"],
    ["--max-seconds", "-5"],
    ["--max-seconds", "nan"],
    ["--max-seconds", "soon"],
    ["--request-timeout", "inf"],
    ["--unknown-flag"],
    ["--max-sec", "5"],  # no abbreviations: a typo must not silently mean something
], ids=lambda args: " ".join(args))
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = subprocess.run([sys.executable, str(PROGRAM), "--baseurl", BASE, *args],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT)
    assert result.returncode == 2, result.stderr
    assert result.stdout == b""


def test_missing_baseurl_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, str(PROGRAM)], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=WAIT)
    assert result.returncode == 2
    assert b"--baseurl" in result.stderr


@pytest.mark.parametrize(("baseurl", "warned"), [
    ("http://central.example.test:8080", True),
    ("http://central.example.test", False),
    ("https://central.example.test:443", False),
    ("http://central.example.test:443", False),
])
def test_port_warning_for_ports_other_than_80_and_443(spawn, baseurl: str, warned: bool) -> None:
    fwd = start_ready(spawn, base=baseurl)
    stop(fwd)
    assert ("Let's Encrypt follows redirects only to ports 80 and 443" in fwd.stderr()) == warned
    assert ("warning" in fwd.stderr()) == warned


def test_ip_address_baseurl_is_warned_about(spawn) -> None:
    fwd = start_ready(spawn, base="http://127.0.0.1")
    stop(fwd)
    assert "does not follow redirects to IP addresses" in fwd.stderr()


# --- the ways it is run: standard library only ---------------------------------------------------

def test_runs_isolated_without_site_packages(spawn) -> None:
    fwd = spawn(["--baseurl", BASE, "--listen", f"{HOST}:0"],
                command=[sys.executable, "-I", "-S", str(PROGRAM)])
    assert fwd.wait_ready().startswith(b"READY "), fwd.stderr()
    assert parse(exchange(fwd.port, get(CHALLENGE)))[0] == 301
    stop(fwd)


def test_runs_as_python_m_forwarder(spawn) -> None:
    fwd = spawn(["--baseurl", BASE, "--listen", f"{HOST}:0"],
                command=[sys.executable, "-m", "forwarder"])
    assert fwd.wait_ready().startswith(b"READY "), fwd.stderr()
    stop(fwd)


def test_runs_from_stdin_through_remote_command(spawn) -> None:
    """The SSH path: the program arrives on stdin, then the same stdin is its lifeline."""
    command, prefix = forwarder.remote_command(["--baseurl", BASE, "--listen", f"{HOST}:0"],
                                               python=sys.executable)
    assert prefix == forwarder.program_bytes() == PROGRAM.read_bytes()
    fwd = spawn([], command=["/bin/sh", "-c", command])
    fwd.proc.stdin.write(prefix)
    fwd.proc.stdin.flush()  # and stdin stays open, as lematt keeps the SSH channel open
    assert fwd.wait_ready().startswith(b"READY "), fwd.stderr()
    status, headers, _ = parse(exchange(fwd.port, get(CHALLENGE)))
    assert (status, headers["location"]) == (301, BASE + CHALLENGE)
    fwd.proc.stdin.write(b"bytes after the program are ignored\n")
    fwd.proc.stdin.flush()
    assert parse(exchange(fwd.port, get(CHALLENGE)))[0] == 301
    stop(fwd)


def test_remote_command_quotes_every_argument(spawn) -> None:
    hostile = "http://x'; touch pwned; echo '$(id)`id`"
    command, prefix = forwarder.remote_command(["--baseurl", hostile], python=sys.executable)
    fwd = spawn([], command=["/bin/sh", "-c", command])
    fwd.proc.stdin.write(prefix)
    fwd.close_stdin()
    assert fwd.wait() == 2
    assert hostile in fwd.stderr()  # reached leforward verbatim, as one argument
    assert not (REPO_ROOT / "pwned").exists()


def test_truncated_program_on_stdin_exits_2(spawn) -> None:
    command, prefix = forwarder.remote_command(["--baseurl", BASE], python=sys.executable)
    fwd = spawn([], command=["/bin/sh", "-c", command])
    fwd.proc.stdin.write(prefix[:1000])
    fwd.close_stdin()
    assert fwd.wait() == 2
    assert fwd.wait_ready() == b""
    assert f"expected {len(prefix)} program bytes on stdin, got 1000" in fwd.stderr()


def _python38() -> str | None:
    """A Python 3.8 interpreter if this machine has one (pyenv or PATH), else None."""
    candidates = [shutil.which("python3.8")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=WAIT)
        candidates += sorted(str(p) for p in Path(root.stdout.strip()).glob(
            "versions/3.8*/bin/python3.8"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=WAIT)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
            return candidate
    return None


def test_runs_on_python_3_8_through_remote_command(spawn) -> None:
    python = _python38()
    if python is None:
        pytest.skip("no Python 3.8 interpreter on this machine")
    command, prefix = forwarder.remote_command(["--baseurl", BASE, "--listen", f"{HOST}:0"],
                                               python=python)
    fwd = spawn([], command=["/bin/sh", "-c", command])
    fwd.proc.stdin.write(prefix)
    fwd.proc.stdin.flush()
    assert fwd.wait_ready().startswith(b"READY "), fwd.stderr()
    assert parse(exchange(fwd.port, get(CHALLENGE)))[0] == 301
    assert parse(exchange(fwd.port, get("/.well-known/acme-challenge/%2e%2e")))[0] == 404
    stop(fwd)
