"""The guest agent client against the real qemu-ga (Debian's qemu-guest-agent, run here on
the host over a unix socket, every RPC that changes the system blocked), and against peers
that misbehave on purpose: a hostile guest's agent cannot be had for real, so a scripted
socket plays it. The path through QEMU's virtio-serial channel is shown by the e2e suite."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmmgr.guest.agent import GuestAgent, guest_info
from kvmmgr.vm.jsonlines import MAX_LINE, CommandFailed, ProtocolError

# What a test may never do to the machine it runs on.
BLOCKED = (
    "guest-shutdown,guest-exec,guest-file-open,guest-set-time,guest-fsfreeze-freeze,"
    "guest-fsfreeze-freeze-list,guest-fstrim,guest-suspend-disk,guest-suspend-ram,"
    "guest-suspend-hybrid,guest-set-vcpus,guest-set-user-password,guest-set-memory-blocks,"
    "guest-ssh-add-authorized-keys,guest-ssh-remove-authorized-keys"
)


@pytest.fixture
def host_agent(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("qemu-ga") is None:
        pytest.fail("qemu-ga is missing: scripts/bootstrap installs qemu-guest-agent")
    path = tmp_path / "qga.sock"
    process = subprocess.Popen(
        ["qemu-ga", "-m", "unix-listen", "-p", str(path), "-t", str(tmp_path),
         "-f", str(tmp_path / "qga.pid"), "-b", BLOCKED],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline, "qemu-ga did not open its socket"
            time.sleep(0.02)
        yield path
    finally:
        process.kill()
        process.wait()


def test_the_agent_tells_the_system_it_runs_on(host_agent: Path) -> None:
    with GuestAgent(host_agent) as agent:
        info = guest_info(agent)
    release = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().split("\n")
        if "=" in line
    )
    assert info.os_id == release["ID"].strip('"')
    assert info.os_name == release["PRETTY_NAME"].strip('"')
    assert info.hostname == socket.gethostname()
    assert info.agent_version.startswith("7.")
    loopback = next(i for i in info.interfaces if i.name == "lo")
    assert "127.0.0.1/8" in loopback.addresses


def test_a_refused_shutdown_is_an_error_not_a_success(host_agent: Path) -> None:
    with GuestAgent(host_agent) as agent, pytest.raises(CommandFailed, match="disabled"):
        agent.request_shutdown()


def test_sessions_one_after_another(host_agent: Path) -> None:
    for _ in range(3):
        with GuestAgent(host_agent) as agent:
            assert agent.execute("guest-ping") == {}


def _peer(tmp_path: Path, behave: Callable[[socket.socket], object]) -> Path:
    """A unix socket whose one client is handled by `behave`, in a thread."""
    path = tmp_path / "peer.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                behave(connection)

    threading.Thread(target=serve, daemon=True).start()
    return path


def _sync_id(connection: socket.socket) -> int:
    data = b""
    while b"\n" not in data:
        data += connection.recv(4096)
    request = json.loads(data.lstrip(b"\xff").split(b"\n")[0])
    assert request["execute"] == "guest-sync-delimited"
    return int(request["arguments"]["id"])


def test_stale_answers_and_noise_before_the_sync_are_skipped(tmp_path: Path) -> None:
    def behave(connection: socket.socket) -> None:
        token = _sync_id(connection)
        connection.sendall(b'{"return": {}}\n\xffgarbage\n\xff{"return": 12}\n')
        connection.sendall(b'\xff{"return": %d}\n' % token)
        connection.recv(4096)
        connection.sendall(b'{"return": {"host-name": "vm\\u001b[31m-0"}}\n')

    with GuestAgent(_peer(tmp_path, behave)) as agent:
        answer = agent.execute("guest-get-host-name")
    assert answer == {"host-name": "vm\x1b[31m-0"}


def test_a_guest_that_lies_about_types_and_prints_control_characters(tmp_path: Path) -> None:
    answers = iter(
        [
            {"return": {"version": ["not", "a", "string"]}},
            {"return": {"pretty-name": "Evil\x1b]0;owned\x07OS", "kernel-release": 7}},
            {"error": {"class": "CommandNotFound", "desc": "no"}},
            {"return": [{"name": "eth0", "ip-addresses": [{"ip-address": "1.2.3.4"}]}, "junk"]},
        ]
    )

    def behave(connection: socket.socket) -> None:
        connection.sendall(b'\xff{"return": %d}\n' % _sync_id(connection))
        for reply in answers:
            connection.recv(4096)
            connection.sendall(json.dumps(reply).encode() + b"\n")

    with GuestAgent(_peer(tmp_path, behave)) as agent:
        info = guest_info(agent)
    assert info.agent_version == "" and info.kernel == "" and info.hostname == ""
    assert info.os_name == "Evil?]0;owned?OS"
    assert [(i.name, i.addresses) for i in info.interfaces] == [("eth0", ())]


def test_an_agent_that_never_answers_times_out(tmp_path: Path) -> None:
    stop = threading.Event()
    path = _peer(tmp_path, lambda connection: stop.wait(10))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        GuestAgent(path, timeout=0.5)
    stop.set()
    assert time.monotonic() - started < 5


def test_an_endless_line_is_refused_not_buffered(tmp_path: Path) -> None:
    def behave(connection: socket.socket) -> None:
        _sync_id(connection)
        chunk = b"\xff" + b"x" * 65535
        with contextlib.suppress(OSError):  # the client hangs up on it
            for _ in range(MAX_LINE // len(chunk) + 64):
                connection.sendall(chunk)

    with pytest.raises(ProtocolError, match="longer than"):
        GuestAgent(_peer(tmp_path, behave))
