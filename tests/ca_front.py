"""A TLS front in front of a real CA, for CA behaviour that no local CA produces on its own.

Why it exists: some things real CAs do cannot be provoked in Pebble 2.4 (it never hands an
existing order back for a second newOrder; Let's Encrypt's Boulder does, as RFC 8555 section
7.4 allows). The front forwards every request to the real CA unchanged - same path, same
body, the ``Host`` header of the front, so the CA builds every URL it returns on the front's
origin and the client keeps talking through it - and lets a test change what chosen requests
get back. Everything else is the real CA's answer.

Contract
--------
``CaFront(upstream_url, upstream_ca_bundle, workdir, port=..., rules=[...])`` is a context
manager: it makes a throwaway TLS CA with ``trustme`` (``front.ca_bundle`` is the file the
client must trust), listens on ``127.0.0.1:port`` in a thread, and stops on exit (bounded).
``front.directory_url`` is the upstream directory URL's path on the front's origin.
``front.requests`` lists ``(method, path)`` of every request seen, in order;
``front.count(method, path)`` counts those the CA answered with success.

A rule is a callable ``rule(front, request) -> Reply | None``: the first rule that returns a
``Reply`` answers instead of the CA; otherwise the request is forwarded. ``after`` callables
see each forwarded request with the CA's reply (to learn URLs, say). ``reuse_orders()`` is the
rule pair that hands back the first still-unfinalized order of the same account and
identifiers, as Boulder does (``state["reused"]`` and ``state["created"]`` count them).

This module imports no pytest and listens on loopback only.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trustme

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length",
               "proxy-connection", "upgrade", "te", "trailer"}
_UPSTREAM_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def jws(self) -> tuple[dict[str, Any], Any]:
        """(protected header, payload) of a JWS body; the payload is None for POST-as-GET."""
        data = json.loads(self.body)

        def decode(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        protected = json.loads(decode(data["protected"]))
        payload = json.loads(decode(data["payload"])) if data["payload"] else None
        return protected, payload


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Rule = Callable[["CaFront", Request], Reply | None]
After = Callable[["CaFront", Request, Reply], None]


class CaFront:
    def __init__(self, upstream_directory: str, upstream_ca_bundle: Path, workdir: Path, *,
                 port: int, rules: list[Rule] | None = None,
                 after: list[After] | None = None) -> None:
        up = urlsplit(upstream_directory)
        assert up.hostname is not None and up.port is not None
        self.upstream_host, self.upstream_port = up.hostname, up.port
        self.upstream_context = ssl.create_default_context(cafile=str(upstream_ca_bundle))
        self.port = port
        self.origin = f"https://127.0.0.1:{port}"
        self.directory_url = f"{self.origin}{up.path}"
        self.rules = list(rules or [])
        self.after = list(after or [])
        self.requests: list[tuple[str, str]] = []
        self.answered: list[tuple[str, str, int]] = []  # (method, path, status) forwarded
        self.state: dict[str, Any] = {}  # for rules
        self.lock = threading.Lock()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_bundle = workdir / "front-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._server_context)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- forwarding ----------------------------------------------------------------------
    def forward(self, request: Request) -> Reply:
        conn = http.client.HTTPSConnection(self.upstream_host, self.upstream_port,
                                           context=self.upstream_context,
                                           timeout=_UPSTREAM_TIMEOUT)
        try:
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in _HOP_BY_HOP and k.lower() != "host"}
            # The CA builds the URLs it returns from Host: they then point at the front.
            headers["Host"] = f"127.0.0.1:{self.port}"
            conn.request(request.method, request.path, body=request.body or None,
                         headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return Reply(resp.status, {k: v for k, v in resp.getheaders()
                                       if k.lower() not in _HOP_BY_HOP}, body)
        finally:
            conn.close()

    def handle(self, request: Request) -> Reply:
        with self.lock:
            self.requests.append((request.method, request.path))
        for rule in self.rules:
            reply = rule(self, request)
            if reply is not None:
                return reply
        reply = self.forward(request)
        with self.lock:
            self.answered.append((request.method, request.path, reply.status))
        for hook in self.after:
            hook(self, request, reply)
        return reply

    def count(self, method: str, path: str) -> int:
        """Requests the CA answered without an error (a badNonce retry is not counted)."""
        with self.lock:
            return sum(1 for m, p, status in self.answered
                       if (m, p) == (method, path) and status < 400)

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> CaFront:
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = front.handle(Request(self.command, self.path, dict(self.headers),
                                             body))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_POST = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.socket = self._server_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ca-front",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT)


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
