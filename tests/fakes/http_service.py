"""A scriptable local HTTP service on 127.0.0.1 for the annotation clients' tests.

Routes map (method, path) to a list of canned answers served in order (the last one repeats), each a
real-format payload with status, headers, an optional delay (for timeouts) and optional truncation
(the Content-Length promises more than is sent) or trickling (the body comes in small pieces with
pauses). ETag / Last-Modified are honoured with 304 when the answer sets them. Every request is
recorded (method, path, query, headers, body) for assertions.

`closed_port()` and `SilentServer` stand for dead services: nothing listening (connection refused),
and a server that accepts connections and never answers.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Answer:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    truncate_to: int | None = None  # send only this many body bytes, while Content-Length says all
    trickle_s: float = 0.0  # pause between 1 KiB pieces of the body (each piece restarts a read timeout)

    @classmethod
    def json(cls, payload: Any, status: int = 200, **kwargs: Any) -> Answer:
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return cls(json.dumps(payload).encode(), status, headers, **kwargs)

    @classmethod
    def text(cls, text: str | bytes, status: int = 200, gzipped: bool = False, **kwargs: Any) -> Answer:
        body = text.encode() if isinstance(text, str) else text
        if gzipped:
            body = gzip.compress(body, mtime=0)
        headers = {"Content-Type": "text/plain; charset=utf-8", **kwargs.pop("headers", {})}
        return cls(body, status, headers, **kwargs)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Responder = Callable[[Seen], Answer]


class FakeService:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Answer] | Responder] = {}
        self.served: dict[tuple[str, str], int] = {}
        self.requests: list[Seen] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, path: str, *answers: Answer, method: str = "GET") -> FakeService:
        self.routes[(method, path)] = list(answers)
        self.served[(method, path)] = 0
        return self

    def route_fn(self, path: str, responder: Responder, method: str = "GET") -> FakeService:
        """A computed answer (pagination, GraphQL): the responder sees the parsed request."""
        self.routes[(method, path)] = responder
        self.served[(method, path)] = 0
        return self

    def count(self, path: str, method: str = "GET") -> int:
        return self.served.get((method, path), 0)

    def __enter__(self) -> FakeService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, seen: Seen) -> Answer:
        key = (seen.method, seen.path)
        route = self.routes.get(key)
        if route is None:
            return Answer.text(f"no route for {seen.method} {seen.path}", status=404)
        index = self.served[key]
        self.served[key] = index + 1
        if callable(route):
            return route(seen)
        return route[min(index, len(route) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                parsed = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(
                    self.command, parsed.path, parse_qs(parsed.query), dict(self.headers.items()), body
                )
                service.requests.append(seen)
                answer = service._answer(seen)
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                etag, modified = answer.headers.get("ETag"), answer.headers.get("Last-Modified")
                not_modified = (etag and self.headers.get("If-None-Match") == etag) or (
                    modified and not etag and self.headers.get("If-Modified-Since") == modified
                )
                try:
                    if not_modified and answer.status == 200:
                        self.send_response(304)
                        for name in ("ETag", "Last-Modified"):
                            if name in answer.headers:
                                self.send_header(name, answer.headers[name])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    if answer.truncate_to is not None:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        payload = (
                            answer.body if answer.truncate_to is None else answer.body[: answer.truncate_to]
                        )
                        pieces = [payload] if not answer.trickle_s else _pieces(payload, 1024)
                        for piece in pieces:
                            self.wfile.write(piece)
                            self.wfile.flush()
                            time.sleep(answer.trickle_s)
                    if answer.truncate_to is not None:
                        self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    self.close_connection = True

            do_GET = _serve
            do_POST = _serve
            do_HEAD = _serve

        return Handler


def _pieces(payload: bytes, size: int) -> list[bytes]:
    return [payload[start : start + size] for start in range(0, len(payload), size)]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers: a hung service."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:  # closed by __exit__
                return
            self.accepted.append(connection)  # held open, never read or written

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.socket.close()
        for connection in self.accepted:
            connection.close()
