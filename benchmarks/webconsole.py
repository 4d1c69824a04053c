"""What the web console's server costs, against a real VM: the test guest booted by
`kvm-manager run` with WEB_CONSOLE_PORT, and a VNC client speaking WebSocket from the pod
namespace. Each session connects, does the WebSocket handshake, then VNC's (no password),
and asks for one whole frame in raw encoding (720x400, 4 bytes a pixel: 1.1 MiB); it is
timed to its banner and to the frame's last byte. Through our server (127.0.0.1:PORT, its
/websockify) and, the baseline in the same run, straight to QEMU's own WebSocket listener
(127.0.0.2:5700), interleaved. The server's resident memory is read from /proc afterwards.
Medians.

    python -m benchmarks.webconsole [--runs 20]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from benchmarks.common import median, ms1, ratio, say, table
from benchmarks.metrics import memory_mib
from benchmarks.vms import GuestPods, guest_benchmark, wait_ready
from kvmmgr.system import proc
from kvmmgr.webconsole.plan import QEMU_WEBSOCKET, WEBSOCKET_PATH
from podlab.lab import PodLab

PORT = "6080"
BASELINE = "straight to QEMU's WebSocket (baseline)"
# One VNC session over WebSocket (RFC 6455 framing, RFC 6143 messages): the seconds to the
# RFB banner and to the last byte of one whole raw frame, and that frame's size.
CLIENT = r"""
import json, os, socket, struct, sys, time

class Session:
    def __init__(self, host, port, path):
        self.began = time.perf_counter()
        self.s = socket.create_connection((host, port), timeout=30)
        self.s.sendall((f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.s.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = bytearray()

    def _exactly(self, n):
        data, got = bytearray(n), 0
        view = memoryview(data)
        while got < n:
            chunk = self.s.recv_into(view[got:], n - got)
            assert chunk, "closed"
            got += chunk
        return bytes(data)

    def read(self, n):  # the stream of the server's frames' payloads
        while len(self.buffer) < n:
            first, second = self._exactly(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._exactly(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._exactly(8))[0]
            payload = self._exactly(size)
            if first & 0x0F in (1, 2, 0):
                self.buffer += payload
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def send(self, payload):  # one short binary frame, masked as a client's must be
        mask = os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(bytes([0x82, 0x80 | len(payload)]) + mask + masked)

def one(host, port, path):
    vnc = Session(host, port, path)
    assert vnc.read(12) == b"RFB 003.008\n"
    banner = time.perf_counter() - vnc.began
    vnc.send(b"RFB 003.008\n")
    count = vnc.read(1)[0]
    assert 1 in vnc.read(count), "the display asks for a password"
    vnc.send(b"\x01")
    assert vnc.read(4) == b"\0\0\0\0"
    vnc.send(b"\x01")  # shared
    width, height = struct.unpack(">HH", vnc.read(4))
    bpp = vnc.read(16)[0]
    vnc.read(struct.unpack(">I", vnc.read(4))[0])
    vnc.send(struct.pack(">BxHi", 2, 1, 0))  # raw encoding only
    vnc.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
    assert vnc.read(1) == b"\0"
    vnc.read(1)
    total = 0
    for _ in range(struct.unpack(">H", vnc.read(2))[0]):
        x, y, w, h, encoding = struct.unpack(">HHHHi", vnc.read(12))
        assert encoding == 0, encoding
        total += len(vnc.read(w * h * bpp // 8))
    frame = time.perf_counter() - vnc.began
    vnc.s.close()
    return banner, frame, total

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(json.dumps(one(host, port, path)))
"""


def session(lab: PodLab, host: str, port: int, path: str) -> tuple[float, float, int]:
    done = lab.net.pod.run(sys.executable, "-c", CLIENT, host, str(port), path, timeout=120)
    banner, frame, size = json.loads(done)
    return float(banner), float(frame), int(size)


def measure(pods: GuestPods, runs: int) -> str:
    routes = {
        "through the web console's server": ("127.0.0.1", int(PORT), WEBSOCKET_PATH),
        BASELINE: (*QEMU_WEBSOCKET, "/"),
    }
    times: dict[str, list[tuple[float, float, int]]] = {name: [] for name in routes}
    with pods.pod() as lab:
        env = pods.volumes(lab)
        vm = lab.start(WEB_CONSOLE_PORT=PORT, **env)
        wait_ready(vm)
        say(f"web console: {runs} VNC sessions each way, interleaved")
        for _ in range(runs):
            for name, (host, port, path) in routes.items():
                times[name].append(session(lab, host, port, path))
        (server,) = proc.pids_with_argument(None, f"--of={lab.volumes / 'run'}")
        memory = memory_mib(server)
    baseline = median([frame for _, frame, _ in times[BASELINE]])
    rows = []
    for name, sessions in times.items():
        frame = median([f for _, f, _ in sessions])
        banner = median([b for b, _, _ in sessions])
        size = sessions[-1][2]
        rate = f"{size / (frame * 2**20):.0f} MiB/s"
        rows.append([name, ms1(banner), ms1(frame), ratio(frame, baseline), rate])
    size = times[BASELINE][-1][2]
    return (
        f"A VNC session over WebSocket from the pod namespace, {runs} each way, interleaved: "
        f"the handshakes, then one whole raw frame ({size / 2**20:.1f} MiB):\n\n"
        + table(["route", "to the RFB banner", "to the whole frame", "vs QEMU", "throughput"], rows)
        + f"\n\nThe server's memory afterwards: {memory['VmRSS']:.0f} MiB resident, "
        f"{memory['VmHWM']:.0f} MiB at its peak."
    )


def main(argv: Sequence[str] | None = None) -> int:
    return guest_benchmark(argv, __doc__, "webconsole", 20, measure)


if __name__ == "__main__":
    sys.exit(main())
