"""A real webhook receiver for the tests: an HTTP server on loopback in a thread, which records
every request and answers by path:

    /ok/...              204
    /status/<code>/...   that status
    /flaky/<n>/...       500 to the first n requests of that path, then 200
    /redirect/...        302 to /ok/redirected
    /slow/<seconds>/...  waits, then 200
    /big/...             500 with a 1 MiB body
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: a server context, to answer https instead of http."""
        self.received: list[Received] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    receiver._seen[self.path] += 1
                    seen = receiver._seen[self.path]
                receiver._answer(self, seen)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, seen: int) -> None:
        parts = handler.path.strip("/").split("/")
        kind = parts[0]
        status, headers, body = 204, {}, b""
        if kind == "status":
            status = int(parts[1])
        elif kind == "flaky":
            status = 500 if seen <= int(parts[1]) else 200
        elif kind == "redirect":
            status, headers = 302, {"Location": "/ok/redirected"}
        elif kind == "slow":
            time.sleep(float(parts[1]))
            status = 200
        elif kind == "big":
            status, body = 500, b"x" * (1 << 20)
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if body:
            # the sender may have read what it wanted and gone
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                handler.wfile.write(body)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
