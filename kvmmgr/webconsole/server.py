"""The browser console's server: noVNC's page and scripts, and at /websockify the page's
WebSocket, passed on byte for byte to QEMU's VNC over WebSocket. QEMU does the WebSocket
handshake, the framing and the VNC password; this server only serves files and splices.
What a browser sends is read as an adversary's: only the handshake's own headers go on to
QEMU, and no request names a file outside noVNC's folder, nor lists one."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kvmmgr.webconsole.plan import PAGE, WEBSOCKET_PATH

log = logging.getLogger("kvmmgr.webconsole")

# What QEMU's handshake reads; nothing else of a browser's request goes on to QEMU.
HANDSHAKE_HEADERS = (
    "Host", "Origin", "Upgrade", "Connection",
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
)  # fmt: skip
# The page connects by itself to the path beside it; resize=scale fits the screen to the tab.
START = f"/{PAGE}?autoconnect=true&resize=scale&path={WEBSOCKET_PATH.lstrip('/')}"
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0  # a client that sends no whole request in time is let go
CHUNK = 65536


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True  # a browser left open must not keep the server from stopping

    def __init__(self, listener: socket.socket, files: Path, upstream: tuple[str, int]) -> None:
        super().__init__(listener.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener  # bound by kvm-manager, which may bind any port; we may not
        self.files = files
        self.upstream = upstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line in the container's log, not a traceback."""
        log.warning("web console: %s: %s", client_address[0], sys.exc_info()[1])


class _Handler(SimpleHTTPRequestHandler):
    server: ConsoleServer
    server_version = "kvm-manager-console"
    sys_version = ""
    timeout = REQUEST_TIMEOUT

    def __init__(self, request: Any, client_address: Any, server: ConsoleServer) -> None:
        super().__init__(request, client_address, server, directory=str(server.files))

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == WEBSOCKET_PATH:
            self._websocket()
        elif path == "/":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", START)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            super().do_GET()

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(HTTPStatus.NOT_FOUND)

    def log_message(self, format: str, *args: Any) -> None:
        """Only what is worth the container's log: connections and failures, not each file."""

    def log_error(self, format: str, *args: Any) -> None:
        log.warning("web console: %s: %s", self.client_address[0], format % args)

    def _websocket(self) -> None:
        if self.headers.get("Upgrade", "").lower() != "websocket":
            self.send_error(HTTPStatus.BAD_REQUEST, f"{WEBSOCKET_PATH} takes WebSocket only")
            return
        try:
            upstream = socket.create_connection(self.server.upstream, CONNECT_TIMEOUT)
        except OSError as exc:
            self.send_error(HTTPStatus.BAD_GATEWAY, f"the VM's display is not there: {exc}")
            return
        self.close_connection = True
        with upstream:
            upstream.settimeout(None)
            self.connection.settimeout(None)  # a console may stay open, idle, for hours
            upstream.sendall(self._handshake())  # QEMU answers it: 101, or why not
            log.info("web console: %s connected", self.client_address[0])
            splice(self.rfile, self.connection, upstream)
            log.info("web console: %s left", self.client_address[0])

    def _handshake(self) -> bytes:
        """The browser's upgrade request as QEMU takes it: at its one path, "/"."""
        lines = ["GET / HTTP/1.1"]
        for name in HANDSHAKE_HEADERS:
            value = self.headers.get(name)
            if value is not None:  # the parser keeps no CR or LF in a value
                lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def splice(client_in: io.BufferedIOBase, client: socket.socket, upstream: socket.socket) -> None:
    """Both ways at once until either side ends. `client_in`: the client's buffered reader,
    which may hold bytes read past the request already."""
    back = threading.Thread(target=_pump, args=(upstream.recv, client), daemon=True)
    back.start()
    _pump(client_in.read1, upstream)
    back.join()


def _pump(read: Callable[[int], bytes], to: socket.socket) -> None:
    try:
        while data := read(CHUNK):
            to.sendall(data)
    except OSError:
        pass  # a side went away: the other is told below
    with contextlib.suppress(OSError):  # already gone
        to.shutdown(socket.SHUT_RDWR)
