"""A TLS front in front of a real CA: the fault proxy, for CA behaviour no local CA produces.

Why it exists: some things real CAs do cannot be provoked in Pebble 2.4 (it never hands an
existing order back for a second newOrder; Let's Encrypt's Boulder does, as RFC 8555 section
7.4 allows), and a hostile or broken CA (foreign URLs, forged chains, endless bodies, resets,
hostile problem texts) is exactly what no honest CA does. The front forwards every request to
the real CA unchanged - same path, same body, the client's ``Host`` header (the front's), so
the CA builds every URL it returns on the front's origin and the client keeps talking through
it - and lets a test change what chosen requests get back. Everything else is the real CA's answer.

Contract
--------
``CaFront(upstream_url, upstream_ca_bundle, workdir, port=0, rules=[...], rewrites=[...])``
is a context manager: it makes a throwaway TLS CA with ``trustme`` (``front.ca_bundle`` is the
file the client must trust), listens on ``127.0.0.1:port`` (0: a free port) in a thread, and
stops on exit (bounded; every stall ends then). ``front.directory_url`` is the upstream
directory URL's path on the front's origin. ``front.requests`` lists ``(method, path)`` of
every request seen, in order; ``front.count(method, path)`` counts those the CA answered with
success.

A rule is a callable ``rule(front, request) -> Reply | None``: the first rule that returns a
``Reply`` answers instead of the CA; otherwise the request is forwarded. ``after`` callables
see each forwarded request with the CA's reply (to learn URLs, say); then each ``rewrites``
callable ``rewrite(front, request, reply) -> Reply | None`` may replace the reply. A ``Reply``
can also misbehave on the wire: ``stall`` (seconds before answering), ``wire="reset"`` (the
connection is reset, no answer), ``"truncate"`` (Content-Length of the whole body, half of it
sent, then closed), ``"endless"`` (the body never ends: ``front.endless_sent`` counts the
bytes the client took before it hung up; at most ``MAX_ENDLESS`` are sent).

Two more listeners stand for foreign origins: ``front.foreign["https"]`` (TLS with the same
trusted certificate, another port) and ``front.foreign["http"]`` (cleartext). They forward like
the front, so a client that follows a URL there gets the CA's answers, and record every request
in ``front.foreign_requests`` - which a test asserts is empty. A request that reaches the front
under another host name (``localhost``, which its certificate also names) is recorded there
too.

``front.kind_of(request)`` names what a request is for - ``directory``, ``newNonce``,
``newAccount``, ``newOrder``, ``account``, ``order``, ``authz``, ``challenge``, ``finalize``,
``certificate`` - and for which names (learnt from the CA's replies to the orders);
(``tests.e2e.faults.kit.Fault`` acts on the requests of one kind for one name's orders.)
``front.csrs`` keeps the CSR each order was finalized with (by names), so a rewrite can forge
a certificate for lematt's own key.
``reuse_orders()`` is the rule pair that hands back the first still-unfinalized order of the
same account and identifiers, as Boulder does (``state["reused"]`` and ``state["created"]``
count them).

This module imports no pytest and listens on loopback only.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trustme

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length",
               "proxy-connection", "upgrade", "te", "trailer"}
_UPSTREAM_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0
MAX_STALL = 60.0  # seconds; a stall also ends when the front stops
MAX_ENDLESS = 256 << 20  # bytes an "endless" body sends at most
_ENDLESS_CHUNK = b"[" * 65536


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    origin: str = "front"  # "front", or "https"/"http" for a foreign listener

    def jws(self) -> tuple[dict[str, Any], Any]:
        """(protected header, payload) of a JWS body; the payload is None for POST-as-GET."""
        data = json.loads(self.body)
        protected = json.loads(_b64(data["protected"]))
        payload = json.loads(_b64(data["payload"])) if data["payload"] else None
        return protected, payload


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stall: float = 0.0
    wire: str = ""  # "", "reset", "truncate", "endless"

    def json(self) -> Any:
        return json.loads(self.body)

    def with_json(self, data: Any) -> Reply:
        return Reply(self.status, dict(self.headers), json.dumps(data).encode())


Rule = Callable[["CaFront", Request], Reply | None]
After = Callable[["CaFront", Request, Reply], None]
Rewrite = Callable[["CaFront", Request, Reply], Reply | None]


class CaFront:
    def __init__(self, upstream_directory: str, upstream_ca_bundle: Path, workdir: Path, *,
                 port: int = 0, rules: list[Rule] | None = None,
                 after: list[After] | None = None,
                 rewrites: list[Rewrite] | None = None) -> None:
        up = urlsplit(upstream_directory)
        assert up.hostname is not None and up.port is not None
        self.upstream_host, self.upstream_port = up.hostname, up.port
        self.upstream_context = ssl.create_default_context(cafile=str(upstream_ca_bundle))
        self.rules = list(rules or [])
        self.after = list(after or [])
        self.rewrites = list(rewrites or [])
        self.requests: list[tuple[str, str]] = []
        self.answered: list[tuple[str, str, int]] = []  # (method, path, status) forwarded
        self.foreign_requests: list[tuple[str, str, str]] = []  # (origin, method, path)
        self.state: dict[str, Any] = {}  # for rules
        self.kinds: dict[str, tuple[str, frozenset[str]]] = {}  # path -> (kind, names)
        self.csrs: dict[frozenset[str], bytes] = {}  # names -> DER CSR they were finalized with
        self.endless_sent = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_bundle = workdir / "front-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._server_context)
        # Bound now, so that the port (and every URL on it) is known before the front starts.
        self._servers = {
            "front": self._make_server(port, "front", tls=True),
            "https": self._make_server(0, "https", tls=True),
            "http": self._make_server(0, "http", tls=False),
        }
        self.port = self._servers["front"].server_address[1]
        self.origin = f"https://127.0.0.1:{self.port}"
        self.directory_url = f"{self.origin}{up.path}"
        self.foreign = {
            "https": f"https://127.0.0.1:{self._servers['https'].server_address[1]}",
            "http": f"http://127.0.0.1:{self._servers['http'].server_address[1]}",
        }
        self._threads: list[threading.Thread] = []

    # -- forwarding ----------------------------------------------------------------------
    def forward(self, request: Request) -> Reply:
        conn = http.client.HTTPSConnection(self.upstream_host, self.upstream_port,
                                           context=self.upstream_context,
                                           timeout=_UPSTREAM_TIMEOUT)
        try:
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in _HOP_BY_HOP and k.lower() != "host"}
            # The CA builds the URLs it returns from Host, and checks a JWS's "url" against
            # it (RFC 8555 section 6.4): with the client's own Host, both are the origin the
            # client used - the front's, or a foreign listener's when a client follows one.
            headers["Host"] = request.headers.get("Host") or f"127.0.0.1:{self.port}"
            conn.request(request.method, request.path, body=request.body or None,
                         headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return Reply(resp.status, {k: v for k, v in resp.getheaders()
                                       if k.lower() not in _HOP_BY_HOP}, body)
        finally:
            conn.close()

    def handle(self, request: Request) -> Reply:
        host = request.headers.get("Host", "")
        with self.lock:
            self.requests.append((request.method, request.path))
            if request.origin != "front":
                self.foreign_requests.append((request.origin, request.method, request.path))
            elif host != f"127.0.0.1:{self.port}":
                # The front's own port under another host name (its certificate also names
                # localhost): another origin all the same.
                self.foreign_requests.append((f"host {host}", request.method, request.path))
        for rule in self.rules:
            reply = rule(self, request)
            if reply is not None:
                return reply
        reply = self.forward(request)
        with self.lock:
            self.answered.append((request.method, request.path, reply.status))
        self._learn(request, reply)
        for hook in self.after:
            hook(self, request, reply)
        for rewrite in self.rewrites:
            reply = rewrite(self, request, reply) or reply
        return reply

    def count(self, method: str, path: str) -> int:
        """Requests the CA answered without an error (a badNonce retry is not counted)."""
        with self.lock:
            return sum(1 for m, p, status in self.answered
                       if (m, p) == (method, path) and status < 400)

    # -- what a request is for -----------------------------------------------------------
    def kind_of(self, request: Request) -> tuple[str, frozenset[str]]:
        """(kind, names of the order it belongs to); names are empty for account-wide
        requests, kind is "" for a request the front has not learnt."""
        for name in ("newNonce", "newAccount", "newOrder"):
            if request.path == directory_path(self, name):
                names: frozenset[str] = frozenset()
                if name == "newOrder" and request.method == "POST":
                    _, payload = request.jws()
                    names = frozenset(i["value"] for i in payload["identifiers"])
                return name, names
        if request.path == urlsplit(self.directory_url).path:
            return "directory", frozenset()
        with self.lock:
            return self.kinds.get(request.path, ("", frozenset()))

    def _note(self, url: object, kind: str, names: frozenset[str]) -> None:
        if isinstance(url, str):
            with self.lock:
                self.kinds[urlsplit(url).path] = (kind, names)

    def _learn(self, request: Request, reply: Reply) -> None:
        if request.method != "POST" or reply.status >= 400:
            return
        kind, names = self.kind_of(request)
        try:
            body = reply.json() if "json" in reply.headers.get("Content-Type", "") else None
        except ValueError:
            return
        if kind == "newAccount":
            self._note(reply.headers.get("Location"), "account", frozenset())
        if kind == "newOrder":
            self._note(reply.headers.get("Location"), "order", names)
        if kind == "finalize":
            _, payload = request.jws()
            with self.lock:
                self.csrs[names] = _b64(payload["csr"])
        if kind in ("newOrder", "order", "finalize") and isinstance(body, dict):
            for url in body.get("authorizations", []):
                self._note(url, "authz", names)
            self._note(body.get("finalize"), "finalize", names)
            self._note(body.get("certificate"), "certificate", names)
        if kind == "authz" and isinstance(body, dict):
            for challenge in body.get("challenges", []):
                self._note(challenge.get("url"), "challenge", names)

    def foreign_url(self, url: str, scheme: str = "https") -> str:
        """``url`` moved to the foreign listener of ``scheme`` (same path)."""
        parts = urlsplit(url)
        target = urlsplit(self.foreign[scheme])
        return urlunsplit((target.scheme, target.netloc, parts.path, parts.query, ""))

    # -- lifecycle -----------------------------------------------------------------------
    def _make_server(self, port: int, origin: str, *, tls: bool
                     ) -> http.server.ThreadingHTTPServer:
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = front.handle(Request(self.command, self.path, dict(self.headers),
                                             body, origin))
                if reply.stall:
                    front._stop.wait(min(reply.stall, MAX_STALL))
                if reply.wire == "reset":
                    self._reset()
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.wire == "endless":
                    self.send_header("Connection", "close")  # the body ends at EOF (never)
                    self.end_headers()
                    self._endless()
                    return
                if "Content-Length" not in reply.headers:  # a fault may declare its own
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if reply.wire == "truncate":
                    self.wfile.write(reply.body[: len(reply.body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(reply.body)

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.close()

            def _endless(self) -> None:
                self.close_connection = True
                sent = 0
                try:
                    while sent < MAX_ENDLESS and not front._stop.is_set():
                        self.wfile.write(_ENDLESS_CHUNK)
                        sent += len(_ENDLESS_CHUNK)
                except OSError:
                    pass  # the client hung up: what we wanted
                with front.lock:
                    front.endless_sent += sent

            do_GET = do_POST = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # resets and hung-up clients are what the faults are made of

        server = Server(("127.0.0.1", port), Handler)
        if tls:
            server.socket = self._server_context.wrap_socket(server.socket, server_side=True)
        return server

    def __enter__(self) -> CaFront:
        if not self._threads:
            for name, server in self._servers.items():
                thread = threading.Thread(target=server.serve_forever, name=f"ca-front-{name}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for server in self._servers.values():
            if self._threads:
                server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(_STOP_TIMEOUT)


def directory_path(front: CaFront, name: str) -> str:
    """The path of directory entry ``name`` (e.g. ``newOrder``) as the CA announces it."""
    if "directory" not in front.state:
        reply = front.forward(Request("GET", urlsplit(front.directory_url).path, {}, b""))
        front.state["directory"] = json.loads(reply.body)
    return urlsplit(front.state["directory"][name]).path


def reuse_orders() -> tuple[Rule, After]:
    """Answer a newOrder with the same account's earlier order for the same identifiers
    while that order has not been finalized (Boulder's order reuse; RFC 8555 section 7.4)."""

    def key(request: Request) -> tuple[str, frozenset[str]]:
        protected, payload = request.jws()
        names = frozenset(i["value"] for i in payload["identifiers"])
        return str(protected.get("kid")), names

    def rule(front: CaFront, request: Request) -> Reply | None:
        if request.method != "POST" or request.path != directory_path(front, "newOrder"):
            return None
        with front.lock:
            open_orders = front.state.setdefault("open_orders", {})
            earlier = open_orders.get(key(request))
            if earlier is None:
                return None
            front.state["reused"] = front.state.get("reused", 0) + 1
        location, body = earlier
        return Reply(200, {"Content-Type": "application/json", "Location": location}, body)

    def after(front: CaFront, request: Request, reply: Reply) -> None:
        if request.method != "POST":
            return
        with front.lock:
            open_orders = front.state.setdefault("open_orders", {})
            finalize_urls = front.state.setdefault("finalize_urls", {})
        if request.path == directory_path(front, "newOrder") and reply.status == 201:
            order = json.loads(reply.body)
            with front.lock:
                front.state["created"] = front.state.get("created", 0) + 1
                open_orders[key(request)] = (reply.headers["Location"], reply.body)
                finalize_urls[urlsplit(order["finalize"]).path] = key(request)
        elif request.path in finalize_urls:
            with front.lock:
                open_orders.pop(finalize_urls[request.path], None)

    return rule, after
