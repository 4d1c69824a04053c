"""An HTTP server on loopback that misbehaves on request, for the image-delivery tests.

Each path serves a Resource. Faults queued for a path are used one per request, in order:
answer a status instead (404, 503 with Retry-After...), cut the connection after N bytes of
the body, or stall after N bytes. Every request is logged, so a test can count downloads.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PIECE = 64 * 1024


@dataclass
class Resource:
    body: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = "Mon, 23 Nov 2026 08:00:00 GMT"
    ranges: bool = True  # honour Range requests (with If-Range)
    content_type: str = "application/octet-stream"


@dataclass
class Fault:
    status: int | None = None  # answer this instead of the resource
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # close the connection after this many body bytes
    stall_after: int | None = None  # stop sending, connection open, after this many bytes


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    status: int
    sent: int  # body bytes sent


class ImageServer:
    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.resources: dict[str, Resource] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.log: list[Request] = []
        self.delay = 0.0  # seconds between pieces: a slow server
        self.lock = threading.Condition()
        self.busy = 0  # requests being answered (a stalled one does not count)
        self.stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def full_downloads(self, path: str) -> int:
        size = len(self.resources[path].body)
        return sum(1 for r in self.requests(path) if r.status == 200 and r.sent == size)

    def requests(self, path: str) -> list[Request]:
        """The log of `path`, once every answer under way has been logged."""
        with self.lock:
            self.lock.wait_for(lambda: self.busy == 0, timeout=10)
            return [r for r in self.log if r.path == path]

    @contextmanager
    def running(self) -> Iterator[ImageServer]:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            self.httpd.shutdown()
            self.httpd.server_close()


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with server.lock:
                server.busy += 1
            try:
                self._answer()
            finally:
                with server.lock:
                    server.busy -= 1
                    server.lock.notify_all()

        def _answer(self) -> None:
            with server.lock:
                queue = server.faults.get(self.path, [])
                fault = queue.pop(0) if queue else Fault()
                resource = server.resources.get(self.path)
            asked = self.headers.get("Range")
            if fault.status is not None or resource is None:
                status = fault.status or 404
                body = f"<html><body>error {status}</body></html>\n".encode()
                self._head(status, {**fault.headers, "Content-Length": str(len(body))})
                self.wfile.write(body)
                self._log(asked, status, len(body))
                return
            body, status, extra = self._select(resource, asked)
            if status == 416:
                self._head(416, {"Content-Range": f"bytes */{len(resource.body)}"})
                self._log(asked, 416, 0)
                return
            headers = {"Content-Length": str(len(body)), "Content-Type": resource.content_type}
            if resource.etag:
                headers["ETag"] = resource.etag
            if resource.last_modified:
                headers["Last-Modified"] = resource.last_modified
            if resource.ranges:
                headers["Accept-Ranges"] = "bytes"
            self._head(status, {**headers, **extra})
            sent = self._send(body, fault, asked, status)
            if sent is not None:
                self._log(asked, status, sent)

        def _select(
            self, resource: Resource, asked: str | None
        ) -> tuple[bytes, int, dict[str, str]]:
            validator = self.headers.get("If-Range")
            fresh = validator is None or validator in (resource.etag, resource.last_modified)
            if not (resource.ranges and asked and asked.startswith("bytes=") and fresh):
                return resource.body, 200, {}
            first = int(asked[len("bytes=") :].split("-", 1)[0])
            total = len(resource.body)
            if first >= total:
                return b"", 416, {}
            span = {"Content-Range": f"bytes {first}-{total - 1}/{total}"}
            return resource.body[first:], 206, span

        def _send(self, body: bytes, fault: Fault, asked: str | None, status: int) -> int | None:
            """Bytes sent; None when a stall already logged the request."""
            sent = 0
            try:
                while sent < len(body):
                    if fault.cut_after is not None and sent >= fault.cut_after:
                        self.close_connection = True  # short of Content-Length: a cut
                        break
                    if fault.stall_after is not None and sent >= fault.stall_after:
                        self._log(asked, status, sent)  # now: it will send no more
                        with server.lock:
                            server.busy -= 1  # tests need not wait for it
                            server.lock.notify_all()
                        server.stop.wait(60)  # until the test ends
                        with server.lock:
                            server.busy += 1
                        self.close_connection = True
                        return None
                    limit = len(body)
                    for mark in (fault.cut_after, fault.stall_after):
                        if mark is not None and mark > sent:
                            limit = min(limit, mark)
                    piece = body[sent : min(sent + PIECE, limit)]
                    self.wfile.write(piece)
                    sent += len(piece)
                    if server.delay:
                        time.sleep(server.delay)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return sent

        def _head(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if status >= 400:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()

        def _log(self, asked: str | None, status: int, sent: int) -> None:
            with server.lock:
                server.log.append(Request(self.path, asked, status, sent))

    return Handler
