"""The VM's screen in a browser: WEB_CONSOLE_PORT serves noVNC's page and, at /websockify,
QEMU's VNC over WebSocket, behind the VNC password. Headless Chromium opens the page from
the node, through the pod IP, as a user's browser would through a Service; Tesseract reads
the guest's banner off its screenshot. One boot for every check."""

from __future__ import annotations

import pwd
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmmgr.system import proc
from podlab import browser, guest
from podlab.lab import KvmManager, PodLab
from tests.e2e.conftest import BOOT_TIMEOUT
from tests.privileges import QEMU_USER, qemu_problems, status

PORT = "6080"
PASSWORD = "s3cret!"
# What the test guest writes on its VGA screen (init.sh), as Tesseract reads it surely: it
# takes the VGA font's V for a U.
BANNER = "SCREEN READY"
LOOKS = 5  # screenshots taken before the banner counts as missing: virtual time is not real
# A raw request, as a browser or an attacker may send it: (status line, headers) back.
RAW_GET = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(sys.argv[3].encode())
    answer = b""
    while b"\\r\\n\\r\\n" not in answer and (chunk := s.recv(4096)):
        answer += chunk
print(answer.split(b"\\r\\n\\r\\n")[0].decode())
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PodLab, KvmManager]]:
    with PodLab(tmp_path_factory.mktemp("web-console"), guest.build()) as lab:
        vm = lab.start(WEB_CONSOLE_PORT=PORT, VNC_PASSWORD=PASSWORD)
        vm.console.wait_for(r"^KVMTEST_READY ", BOOT_TIMEOUT)
        yield lab, vm


def screen_text(lab: PodLab, password: str, out: Path, looks: int = LOOKS) -> str:
    """What a browser on the node shows of the page, read back; looked at again until the
    banner shows, as a user would wait for the screen to draw."""
    url = f"http://{lab.net.pod_ip}:{PORT}/vnc.html?autoconnect=true&resize=off"
    out.mkdir(parents=True, exist_ok=True)
    text = ""
    for look in range(looks):
        shot = browser.screenshot(lab.net.node, f"{url}&password={password}", out / f"{look}.png")
        text = browser.text_of(shot)
        if BANNER in text:
            break
    return text


def raw_get(lab: PodLab, request: str) -> str:
    return lab.net.node.run(sys.executable, "-c", RAW_GET, lab.net.pod_ip, PORT, request)


def test_the_browser_shows_the_guest_screen_behind_the_password(
    console: tuple[PodLab, KvmManager], tmp_path: Path
) -> None:
    lab, vm = console
    shown = screen_text(lab, PASSWORD, tmp_path)
    assert BANNER in shown, shown
    assert "connected" in vm.log.text  # through our server, not around it
    refused = screen_text(lab, "wrong", tmp_path / "wrong", looks=1)
    assert BANNER not in refused, refused


def test_the_server_serves_novnc_and_nothing_else(console: tuple[PodLab, KvmManager]) -> None:
    lab, _ = console
    start = raw_get(lab, "GET / HTTP/1.0\r\n\r\n")
    assert start.startswith("HTTP/1.0 302 ")
    assert "Location: /vnc.html?autoconnect=true&resize=scale&path=websockify" in start
    assert raw_get(lab, "GET /vnc.html HTTP/1.0\r\n\r\n").startswith("HTTP/1.0 200 ")
    for path in ("/app/", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
        assert raw_get(lab, f"GET {path} HTTP/1.0\r\n\r\n").startswith("HTTP/1.0 404 "), path
    plain = raw_get(lab, "GET /websockify HTTP/1.0\r\n\r\n")
    assert plain.startswith("HTTP/1.0 400 ")  # WebSocket only there


def test_the_websocket_is_qemus_vnc(console: tuple[PodLab, KvmManager]) -> None:
    """QEMU itself answers the handshake, at noVNC's path, and sends its RFB banner."""
    lab, _ = console
    handshake = (
        "GET /websockify HTTP/1.1\r\nHost: kvmtest\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nX-Injected: evil\r\n\r\n"
    )
    answer = raw_get(lab, handshake)
    assert answer.startswith("HTTP/1.1 101 Switching Protocols"), answer
    assert "Server: QEMU VNC" in answer
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer  # RFC 6455's example


def test_the_server_has_nothing_to_lose(console: tuple[PodLab, KvmManager]) -> None:
    """QEMU's user, no capability in any set, no_new_privs (QEMU's seccomp filter is QEMU's)."""
    lab, _ = console
    (pid,) = proc.pids_with_argument(None, f"--of={lab.volumes / 'run'}")
    fields = status(pid)
    assert [p for p in qemu_problems(fields) if not p.startswith("Seccomp")] == [], fields
    assert fields["Uid"].split()[0] == str(pwd.getpwnam(QEMU_USER).pw_uid)


def test_status_sees_the_server_gone_and_repair_restarts_it(
    console: tuple[PodLab, KvmManager],
) -> None:
    lab, _ = console
    env = {"WEB_CONSOLE_PORT": PORT, "VNC_PASSWORD": PASSWORD}
    assert lab.cli("status", **env).returncode == 0
    proc.terminate(proc.pids_with_argument(None, f"--of={lab.volumes / 'run'}"))
    broken = lab.cli("status", **env)
    assert broken.returncode != 0
    assert "web-console: the web console's server is not running" in broken.stdout
    repaired = lab.cli("status", "--repair", **env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "web-console: repaired (the web console's server is not running)" in repaired.stdout
    assert raw_get(lab, "GET /vnc.html HTTP/1.0\r\n\r\n").startswith("HTTP/1.0 200 ")
