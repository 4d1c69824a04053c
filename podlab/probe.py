"""Network checks and tiny servers, run inside a namespace with `ip netns exec`.

Each check prints one JSON object on stdout and exits 0, whatever it found: the test decides
what is right. The servers print `ready` once listening, then serve until killed.

    probe tcp HOST PORT          connect; the first bytes the server sends, or the error
    probe udp HOST PORT          send a datagram; the reply, or none
    probe http URL               GET; status and body
    probe rfb HOST PORT          VNC: the RFB banner and the security types offered
    probe serve NAME PORT...     answer on TCP and UDP PORTs with "NAME proto/port from PEER"
    probe httpd DIR BIND PORT LOG  serve DIR over HTTP, one JSON line per request in LOG
    probe sniff IFACE SECONDS PORT...  count the UDP packets to PORTs on IFACE
    probe wait-http URL SECONDS  prints `ready`, then GETs URL until it answers 200: when
                                 (CLOCK_MONOTONIC, the same in every process), and tries
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TIMEOUT = 3.0


def tcp(host: str, port: int) -> dict[str, Any]:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
            conn.settimeout(TIMEOUT)
            try:
                banner = conn.recv(256).decode("latin-1")
            except TimeoutError:
                banner = ""
            return {"connected": True, "banner": banner}
    except OSError as exc:
        return {"connected": False, "error": type(exc).__name__}


def udp(host: str, port: int) -> dict[str, Any]:
    payload = f"probe-{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(payload.encode(), (host, port))
        try:
            data, peer = sock.recvfrom(65536)
        except OSError as exc:
            return {"reply": None, "error": type(exc).__name__}
    return {"reply": data.decode("latin-1"), "sent": payload, "from": peer[0]}


def http_get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return {"status": response.status, "body": response.read().decode("utf-8", "replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": ""}
    except OSError as exc:
        return {"status": None, "error": str(exc)}


def rfb(host: str, port: int) -> dict[str, Any]:
    """The start of the RFB handshake (RFC 6143 7.1): banner, then the security types."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
            conn.settimeout(TIMEOUT)
            banner = _recv_exactly(conn, 12)
            if not banner.startswith(b"RFB "):
                return {"banner": banner.decode("latin-1"), "security_types": None}
            conn.sendall(b"RFB 003.008\n")
            count = _recv_exactly(conn, 1)[0]
            types = list(_recv_exactly(conn, count)) if count else []
            return {"banner": banner.decode().strip(), "security_types": types}
    except OSError as exc:
        return {"banner": None, "error": type(exc).__name__}


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def serve(name: str, ports: list[int]) -> None:
    """Stand-in for a VM's services: each answer says who answered and whom it saw."""
    threads = []
    for port in ports:
        tcp_sock = socket.create_server(("0.0.0.0", port), reuse_port=False)
        udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_sock.bind(("0.0.0.0", port))
        threads.append(threading.Thread(target=_serve_tcp, args=(name, port, tcp_sock)))
        threads.append(threading.Thread(target=_serve_udp, args=(name, port, udp_sock)))
    for thread in threads:
        thread.daemon = True
        thread.start()
    print("ready", flush=True)
    threading.Event().wait()


def _serve_tcp(name: str, port: int, server: socket.socket) -> None:
    while True:
        conn, peer = server.accept()
        with contextlib.suppress(OSError), conn:
            conn.sendall(f"{name} tcp/{port} from {peer[0]}\n".encode())


def _serve_udp(name: str, port: int, server: socket.socket) -> None:
    while True:
        _, peer = server.recvfrom(65536)
        server.sendto(f"{name} udp/{port} from {peer[0]}".encode(), peer)


def sniff(iface: str, seconds: float, ports: list[int]) -> None:
    """Count the IPv4 UDP packets to `ports` seen on `iface` for `seconds` (a packet socket:
    everything the link carries, whoever it is for). Prints `ready`, then one JSON line."""
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    raw.bind((iface, 0))
    raw.settimeout(0.2)
    print("ready", flush=True)
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = raw.recv(65535)
        except TimeoutError:
            continue
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:  # IPv4, UDP
            continue
        udp = 14 + (frame[14] & 0x0F) * 4
        source, target = struct.unpack("!HH", frame[udp : udp + 4])
        if target in ports:
            sender = socket.inet_ntoa(frame[26:30])
            seen.append(f"{sender} {frame[6:12].hex(':')} udp {source}->{target}")
    print(json.dumps({"count": len(seen), "seen": seen[:10]}), flush=True)


ETH_P_ALL = 0x0003


def wait_http(url: str, seconds: float) -> None:
    """For timing a boot: the caller notes the monotonic clock when it starts the VM."""
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        try:
            with urllib.request.urlopen(url, timeout=0.25) as response:
                if response.status == 200:
                    print(json.dumps({"at": time.monotonic(), "tries": tries}), flush=True)
                    return
        except OSError:
            pass
        time.sleep(0.02)
    print(json.dumps({"at": None, "tries": tries}), flush=True)


class _LoggingHandler(SimpleHTTPRequestHandler):
    log_path: Path

    def log_message(self, format: str, *args: Any) -> None:
        record = {"client": self.client_address[0], "path": self.path, "line": format % args}
        with self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")


def httpd(directory: str, bind: str, port: int, log: str) -> None:
    handler = functools.partial(_LoggingHandler, directory=directory)
    _LoggingHandler.log_path = Path(log)
    server = ThreadingHTTPServer((bind, port), handler)
    print("ready", flush=True)
    server.serve_forever()


def main(argv: list[str]) -> int:
    kind, args = argv[0], argv[1:]
    if kind == "serve":
        serve(args[0], [int(p) for p in args[1:]])
    elif kind == "httpd":
        httpd(args[0], args[1], int(args[2]), args[3])
    elif kind == "sniff":
        sniff(args[0], float(args[1]), [int(p) for p in args[2:]])
    elif kind == "wait-http":
        wait_http(args[0], float(args[1]))
    else:
        checks = {"tcp": tcp, "udp": udp, "rfb": rfb}
        result = http_get(args[0]) if kind == "http" else checks[kind](args[0], int(args[1]))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
