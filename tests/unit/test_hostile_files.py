"""Hostile input files: the config drive's inputs, resolv.conf, and the files kvm-manager keeps
on volumes (the remembered interfaces, the base's and the overlay's records). Whatever they
hold, the start ends in one line naming the file and what is wrong (a ConfigError, exit
status 2), in bounded time and memory, before anything changes. Each case runs the start's
read-only path (`startup.prepare`, on the loopback interface: no root, no kernel change)
under tracemalloc; a few run through `python -m kvmmgr plan` with their peak RSS measured."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from kvmmgr import startup
from kvmmgr.config import load_settings
from kvmmgr.errors import EXIT_CONFIG, ConfigError, KvmManagerError
from kvmmgr.guest.inputs import MAX_INPUT
from kvmmgr.image import transfer
from kvmmgr.image.cachelock import CacheLock
from kvmmgr.image.records import BaseRecord, as_json
from kvmmgr.plan import Plan
from tests.hostile import (
    DEEP_BLOCK,
    DEEP_FLOW,
    DEEP_JSON,
    WIDE_JSON,
    dangling,
    directory,
    fifo,
    gzip_bomb,
    laughs,
    link_to,
    loop,
    zeros_gzip,
)

SECONDS = 5.0  # loose bounds: the machine is shared, and a second is what these take at most
PEAK = 64 << 20  # bytes traced in-process; the largest input is 16 MiB
CHILD_PEAK = 100 << 20  # peak RSS of `kvm-manager plan`, the interpreter and its imports in it
HANG = 20  # seconds after which a case that blocks (a FIFO's open) is stopped and fails

REPO = Path(__file__).resolve().parents[2]
GOOD = {
    "userdata": b"#cloud-config\nruncmd: [[echo, hi]]\n",
    "metadata": b"role: db\n",
    "resolv.conf": b"nameserver 10.96.0.10\nsearch default.svc.cluster.local\n",
}


@dataclass(frozen=True)
class Pod:
    """A pod's files in a temporary directory, and the environment that points at them."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "HOSTNAME": "vm-0",
            "POD_IFACE": "lo",  # there in every namespace, with an IPv4 address
            "IMG_SOURCE": "http://images.example/base.qcow2",
            "IMAGE_DIR": str(self.root / "image"),
            "RUN_DIR": str(self.root / "run"),
            "RESOLV_CONF": str(self.root / "resolv.conf"),
            "USERDATA_PATH": str(self.root / "userdata"),
            "METADATA_PATH": str(self.root / "metadata"),
            "NETWORKDATA_PATH": str(self.root / "networkdata"),
            "VENDORDATA_PATH": str(self.root / "vendordata"),
            "QEMU_USER": "10107:10107",  # as given: no user database needed
            "VM_ACCEL": "tcg",
            "VM_MEMORY": "256",
        }

    def path(self, name: str) -> Path:
        """Where each file goes: the inputs at the top, kvm-manager's own in its volumes."""
        folder = "run" if name == "pod-interfaces.json" else "image" if ".qcow2" in name else ""
        return self.root / folder / name

    def prepare(self, **env: str) -> Plan:
        return startup.prepare(load_settings({**self.env, **env}))


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    for folder in ("image", "run"):
        (tmp_path / folder).mkdir()
    for name, data in GOOD.items():
        (tmp_path / name).write_bytes(data)
    # A base and the VM's disk, as an earlier start left them, so that their records are read.
    for disk in ("base.qcow2", "vm-0.qcow2"):
        (tmp_path / "image" / disk).write_bytes(b"")
    return Pod(tmp_path)


@contextmanager
def bounded() -> Iterator[None]:
    """Within SECONDS and PEAK; a call that blocks is interrupted after HANG seconds."""

    def hung(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"still blocked after {HANG} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG)
    tracemalloc.start()
    started = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert elapsed < SECONDS, f"took {elapsed:.1f} s"
    assert peak < PEAK, f"peak {peak / (1 << 20):.0f} MiB"


def refused(pod: Pod, name: str, says: str, **env: str) -> str:
    """The start refuses, in one line naming the file and saying `says`, within bounds."""
    with bounded(), pytest.raises(ConfigError) as caught:
        pod.prepare(**env)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert len(message) < 400, message
    assert str(pod.path(name)) in message or name in message, message
    assert says in message, message
    return message


# --- files that are not files ----------------------------------------------------------------


NOT_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "FIFO": (fifo, "is a FIFO"),
    "directory": (directory, "is a directory"),
    "/dev/zero": (link_to("/dev/zero"), "is a character device"),
    "/dev/urandom": (link_to("/dev/urandom"), "is a character device"),
    "symlink loop": (loop, "Too many levels of symbolic links"),
    "dangling symlink": (dangling, "a symbolic link to a missing file"),
}
FILES = (
    "userdata", "metadata", "networkdata", "vendordata", "resolv.conf", "pod-interfaces.json",
    ".base.qcow2.json", ".vm-0.qcow2.json",
)  # fmt: skip


@pytest.mark.parametrize("kind", NOT_FILES)
@pytest.mark.parametrize("name", FILES)
def test_what_is_not_a_regular_file_is_refused_unread(pod: Pod, name: str, kind: str) -> None:
    make, says = NOT_FILES[kind]
    path = pod.path(name)
    path.unlink(missing_ok=True)
    make(path)
    refused(pod, name, says)


def test_a_config_map_key_is_a_symlink_and_is_read(pod: Pod) -> None:
    data = pod.root / "..data"
    data.mkdir()
    for name, content in GOOD.items():
        (data / name).write_bytes(content)
        pod.path(name).unlink()
        pod.path(name).symlink_to(f"..data/{name}")
    assert pod.prepare().config_drive is not None


# --- what a hostile user writes in them ------------------------------------------------------


def mime(*parts: bytes, boundary: bytes = b"B") -> bytes:
    head = b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="%s"\n\n' % boundary
    body = b"".join(b"--%s\n%s\n" % (boundary, part) for part in parts)
    return head + body + b"--%s--\n" % boundary


CLOUD_PART = b"Content-Type: text/cloud-config\n\nruncmd: [ls]"


def nested_mime(levels: int) -> bytes:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="B%d"\n\n--B%d\n' % (n, n) for n in range(levels)
    )
    tail = b"".join(b"\n--B%d--\n" % n for n in reversed(range(levels)))
    return b"MIME-Version: 1.0\n" + head + CLOUD_PART + tail


@dataclass(frozen=True)
class Content:
    name: str  # the file
    data: bytes | Callable[[], bytes]
    says: str
    env: tuple[tuple[str, str], ...] = ()


CLOUD = b"#cloud-config\n"
CONTENTS = {
    # user-data, as cloud-init would read it
    "user-data: billion laughs": Content("userdata", CLOUD + laughs(), "each alias counted"),
    "user-data: 100k nested lists": Content("userdata", CLOUD + DEEP_FLOW, "nest"),
    "user-data: 2000 nested maps": Content("userdata", CLOUD + DEEP_BLOCK, "nests deeper"),
    "user-data: recursive alias": Content("userdata", CLOUD + b"a: &a [*a]\n", "its own anchor"),
    "user-data: 100k-digit integer": Content(
        "userdata", CLOUD + b"a: " + b"9" * 100_000, "4300 digits"
    ),
    "user-data: a date past its month": Content("userdata", CLOUD + b"a: 2024-02-30\n", "day"),
    "user-data: a Python tag": Content(
        "userdata", CLOUD + b"a: !!python/object/apply:os.system [id]\n", "python/object"
    ),
    "user-data: a key twice": Content(
        "userdata", CLOUD + b"runcmd: [a]\nruncmd: [b]\n", "line 3: invalid #cloud-config YAML"
    ),
    "user-data: not UTF-8": Content("userdata", CLOUD + b"a: \xff\xfe\n", "UTF-8"),
    "user-data: a NUL byte": Content("userdata", CLOUD + b"a: b\0c\n", "unacceptable character"),
    "user-data: over 16 MiB": Content(
        "userdata", lambda: b"#!/bin/sh\n" + b"#" * MAX_INPUT, "larger than 16 MiB"
    ),
    "user-data: gzip bomb": Content("userdata", gzip_bomb, "unpacks to more than 16 MiB"),
    "user-data: gzip cut short": Content(
        "userdata",
        gzip.compress(CLOUD + b"".join(b"k%d: v\n" % n for n in range(999)))[:999],
        "cut short",
    ),
    "user-data: gzip and garbage": Content(
        "userdata", gzip.compress(CLOUD) + b"garbage", "damaged"
    ),
    "user-data: gzip of a bad #cloud-config": Content(
        "userdata", gzip.compress(CLOUD + laughs()), "each alias counted"
    ),
    "user-data: MIME of 100k parts": Content(
        "userdata", mime(*[CLOUD_PART] * 100_000), "more than 200000 lines"
    ),
    "user-data: MIME of 2000 parts": Content(
        "userdata", mime(*[b"Content-Type: text/x-shellscript\n\n:"] * 2000), "1000 MIME parts"
    ),
    "user-data: MIME nested 5000 deep": Content("userdata", nested_mime(5000), "32 multiparts"),
    "user-data: MIME of 16 MiB of newlines": Content(
        "userdata", lambda: mime(b"Content-Type: text/plain\n\n" + b"\n" * (15 << 20)), "lines"
    ),
    "user-data: MIME part of laughs": Content(
        "userdata", mime(b"Content-Type: text/cloud-config\n\n" + laughs()), "MIME part 2"
    ),
    # metadata, which the drive writes again as JSON (or YAML)
    "metadata: billion laughs": Content("metadata", laughs(), "each alias counted"),
    "metadata: a long scalar repeated": Content(
        "metadata", b"a: &a " + b"x" * (1 << 20) + b"\nb: [" + b"*a, " * 20 + b"*a]\n", "16 Mi"
    ),
    "metadata: 100k nested lists": Content("metadata", DEEP_FLOW, "nest"),
    "metadata: nested maps": Content("metadata", DEEP_BLOCK, "nests deeper"),
    "metadata: recursive alias": Content("metadata", b"a: &a {b: *a}\n", "its own anchor"),
    "metadata: 100k-digit integer": Content("metadata", b"a: " + b"1" * 100_000, "digits"),
    "metadata: a key twice": Content("metadata", b"hostname: a\nhostname: b\n", "given twice"),
    "metadata: a number as a key": Content(
        "metadata", b"1: a\nb: c\n", "the key 1 (int) is not text"
    ),
    "metadata: a date as a key": Content("metadata", b"2024-01-01: a\n", "(date) is not text"),
    "metadata: a list": Content("metadata", b"- a\n- b\n", "expected a mapping"),
    "metadata: JSON nested 500 deep": Content("metadata", DEEP_JSON, "nests deeper"),
    "metadata: 1M-value flow list": Content(
        "metadata", b"a: [" + b"0," * (1 << 20) + b"]", "values"
    ),
    # network data: JSON for configdrive, YAML for nocloud
    "network data: JSON nested 100k deep": Content("networkdata", DEEP_FLOW, "values"),
    "network data: JSON nested 500 deep": Content("networkdata", DEEP_JSON, "nests deeper"),
    "network data: JSON of 200k values": Content("networkdata", WIDE_JSON, "100000 values"),
    "network data: JSON NaN": Content("networkdata", b'{"links": NaN}', "NaN is not JSON"),
    "network data: JSON key twice": Content("networkdata", b'{"a": 1, "a": 2}', "given twice"),
    "network data: JSON not UTF-8": Content("networkdata", b'{"a": "\xff"}', "utf-8"),
    "network data: JSON 5000-digit number": Content(
        "networkdata", b'{"a": ' + b"1" * 5000 + b"}", "4300 digits"
    ),
    "network data: YAML laughs": Content(
        "networkdata", laughs(), "each alias", (("CONFIG_DRIVE_FORMAT", "nocloud"),)
    ),
    "network data: YAML nested": Content(
        "networkdata", DEEP_BLOCK, "nests deeper", (("CONFIG_DRIVE_FORMAT", "nocloud"),)
    ),
    # vendor data, checked like user-data
    "vendor data: billion laughs": Content("vendordata", CLOUD + laughs(), "each alias"),
    "vendor data: gzip bomb": Content("vendordata", gzip_bomb, "unpacks to more than"),
    # resolv.conf
    "resolv.conf: a 16 MiB line": Content(
        "resolv.conf", lambda: b"search " + b"x" * (16 << 20) + b"\n", "larger than 64 KiB"
    ),
    "resolv.conf: 100k search domains": Content(
        "resolv.conf",
        b"search " + b" ".join(b"d%d.example" % n for n in range(100_000)),
        "larger than 64 KiB",
    ),
    "resolv.conf: not UTF-8": Content(
        "resolv.conf", b"nameserver 10.0.0.1\nsearch \xff\n", "line 2"
    ),
    "resolv.conf: a NUL byte": Content("resolv.conf", b"search a\0b\n", "a NUL byte"),
    "resolv.conf: a 60k-character nameserver": Content(
        "resolv.conf", b"nameserver " + b"1" * 60_000 + b"\n", "is not an IP address"
    ),
    # kvm-manager's own files, on volumes: the remembered interfaces
    "interfaces: JSON nested 100k deep": Content("pod-interfaces.json", DEEP_FLOW, "values"),
    "interfaces: JSON nested 500 deep": Content("pod-interfaces.json", DEEP_JSON, "nests"),
    "interfaces: 200k values": Content("pod-interfaces.json", WIDE_JSON, "values"),
    "interfaces: a list": Content("pod-interfaces.json", b"[1, 2]", "where an object"),
    "interfaces: Infinity": Content(
        "pod-interfaces.json", b'{"eth0": {"index": Infinity}}', "Infinity is not JSON"
    ),
    "interfaces: not UTF-8": Content("pod-interfaces.json", b'{"\xff": 1}', "utf-8"),
    "interfaces: over 1 MiB": Content(
        "pod-interfaces.json", lambda: b" " * (2 << 20) + b"{}", "larger than 1 MiB"
    ),
    # ...and the records beside the base and the VM's disk
    "base record: JSON nested 100k deep": Content(".base.qcow2.json", DEEP_FLOW, "values"),
    "base record: JSON nested 500 deep": Content(".base.qcow2.json", DEEP_JSON, "nests"),
    "base record: a string": Content(".base.qcow2.json", b'"x"', "where an object"),
    "base record: not UTF-8": Content(".base.qcow2.json", b'{"source": "\xff"}', "utf-8"),
    "base record: a key twice": Content(
        ".base.qcow2.json", b'{"size": 0, "size": 1}', "given twice"
    ),
    "overlay record: JSON nested 100k deep": Content(".vm-0.qcow2.json", DEEP_FLOW, "values"),
    "overlay record: over 1 MiB": Content(
        ".vm-0.qcow2.json", lambda: b" " * (2 << 20), "larger than 1 MiB"
    ),
}


def _bytes(data: bytes | Callable[[], bytes]) -> bytes:
    return data() if callable(data) else data


@pytest.mark.parametrize("case", CONTENTS)
def test_hostile_content_is_refused_in_one_line_in_bounds(pod: Pod, case: str) -> None:
    content = CONTENTS[case]
    pod.path(content.name).write_bytes(_bytes(content.data))
    refused(pod, content.name, content.says, **dict(content.env))


def _record(pod: Pod, **changes: object) -> bytes:
    stat = pod.path("base.qcow2").stat()
    record = BaseRecord(None, stat.st_size, stat.st_mtime_ns, None, "qcow2")
    return json.dumps({**json.loads(as_json(record)), **changes}).encode()


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"size": "0"}, "size is '0': expected int"),
        ({"size": True}, "size is True: expected int"),
        ({"sha256": 5}, "sha256 is 5"),
        ({"sha256": "ab" * 31}, "64 hex digits"),
        ({"format": "vmdk"}, "format is 'vmdk': expected qcow2 or raw"),
        ({"format": ["qcow2"]}, "format is ['qcow2']"),
        ({"data_disks": [1, 2]}, "data_disks is [1, 2]"),
        ({"appliance": []}, "appliance is []"),
        ({"mtime_ns": None}, "mtime_ns is None"),
    ],
)
def test_a_record_that_does_not_hold_up_is_refused(
    pod: Pod, changes: dict[str, object], says: str
) -> None:
    for name in (".base.qcow2.json", ".vm-0.qcow2.json"):
        pod.path(name).write_bytes(_record(pod, **changes))
        refused(pod, name, says)
        pod.path(name).unlink()


def test_a_record_with_an_odd_appliance_is_read_for_what_holds_up(pod: Pod) -> None:
    appliance = {"name": "x", "disks": [], "nic_models": 5, "memory_mib": "lots", "cpus": 2}
    pod.path(".base.qcow2.json").write_bytes(_record(pod, appliance=appliance, extra=1))
    with bounded():
        plan = pod.prepare()
    assert plan.base.appliance is not None
    assert (plan.base.appliance.cpus, plan.base.appliance.nic_models) == (2, ())


def _interfaces(**changes: object) -> bytes:
    eth0 = {
        "name": "eth0", "index": 2, "addresses": ["10.244.1.7/24"], "addresses6": [],
        "mac": "0a:58:0a:f4:01:07", "mtu": 1450, "routes": [["0.0.0.0/0", "10.244.1.1"]],
        "gateway6": None,
    }  # fmt: skip
    return json.dumps({"eth0": {**eth0, **changes}}).encode()


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"index": "2"}, "index is '2': expected int"),
        ({"mtu": 10**30}, "MTU 1000000000000000000000000000000"),
        ({"mac": "0a:58:0a:f4:01:07\ndhcp-range=0.0.0.0"}, "its name or MAC is not one"),
        ({"name": "eth1"}, "its name or MAC is not one"),
        ({"addresses": [167772161]}, "expected addresses"),
        ({"addresses": ["10.244.1.7/99"]}, "'99' is not a valid netmask"),
        ({"routes": [["0.0.0.0/0"]]}, "the route ['0.0.0.0/0']"),
        ({"routes": "0.0.0.0/0"}, "routes is '0.0.0.0/0': expected list"),
        ({"gateway6": 6}, "gateway6 is 6"),
    ],
)
def test_remembered_interfaces_that_do_not_hold_up_are_refused(
    pod: Pod, changes: dict[str, object], says: str
) -> None:
    pod.path("pod-interfaces.json").write_bytes(_interfaces(**changes))
    assert "recreate the pod" in refused(pod, "pod-interfaces.json", says)


# --- large but fair: accepted, within the same bounds ------------------------------------------

FAIR: dict[str, tuple[str, Callable[[], bytes]]] = {
    "a 16 MiB one-line #cloud-config": (
        "userdata",
        lambda: CLOUD + b"a: " + b"x" * ((16 << 20) - 32),
    ),
    "a 16 MiB script": ("userdata", lambda: b"#!/bin/sh\n" + b": x\n" * ((4 << 20) - 4)),
    "an #include line, not fetched": ("userdata", lambda: b"#include\nhttp://192.0.2.9/cfg\n"),
    "gzip'd user-data of 15 MiB": ("userdata", lambda: zeros_gzip(CLOUD + b"a: ", 15 << 20)),
    "a MIME of 900 parts": ("userdata", lambda: mime(*[CLOUD_PART] * 900)),
    "metadata of 40k keys": ("metadata", lambda: b"".join(b"k%d: v\n" % n for n in range(40_000))),
    "a 64 KiB search line": (
        "resolv.conf",
        lambda: (b"search " + b" ".join(b"d%d.example" % n for n in range(6000)))[: 64 << 10],
    ),
}


@pytest.mark.parametrize("case", FAIR)
def test_large_fair_inputs_pass_within_the_same_bounds(pod: Pod, case: str) -> None:
    name, data = FAIR[case]
    pod.path(name).write_bytes(data())
    with bounded():
        plan = pod.prepare()
    assert plan.config_drive is not None


# --- through the real command -----------------------------------------------------------------


# `python -m kvmmgr ARGS`, then this process's peak RSS (VmHWM) written to a file: the
# kernel's figure for a child (wait4's ru_maxrss) counts the memory of the test process that
# started it.
PROBE = """
import runpy, sys
peak_file = sys.argv.pop(1)
try:
    runpy.run_module("kvmmgr", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


def run_plan(env: dict[str, str]) -> tuple[int, str, int, float]:
    """`python -m kvmmgr plan`: exit status, stderr, peak RSS (bytes) and seconds."""
    peak_file = Path(env["RUN_DIR"]).parent / "peak"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(peak_file), "plan"],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=HANG,
        check=False,
    )
    elapsed = time.monotonic() - started
    return done.returncode, done.stderr, int(peak_file.read_text()) << 10, elapsed


CLI_CASES = {
    "resolv.conf is a FIFO": ("resolv.conf", fifo, "is a FIFO"),
    "user-data is a gzip bomb": (
        "userdata",
        lambda path: path.write_bytes(gzip_bomb()),
        "unpacks to more than 16 MiB",
    ),
    "metadata is billion laughs": (
        "metadata",
        lambda path: path.write_bytes(laughs()),
        "each alias counted",
    ),
    "the remembered interfaces nest 100k deep": (
        "pod-interfaces.json",
        lambda path: path.write_bytes(DEEP_FLOW),
        "values",
    ),
    "the base's record is /dev/zero": (".base.qcow2.json", link_to("/dev/zero"), "character"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_command_says_one_line_and_exits_2(pod: Pod, case: str) -> None:
    name, make, says = CLI_CASES[case]
    path = pod.path(name)
    path.unlink(missing_ok=True)
    make(path)
    status, stderr, peak, elapsed = run_plan(pod.env)
    assert status == EXIT_CONFIG, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kvm-manager: configuration error: "), stderr
    assert str(path) in lines[0] and says in lines[0], stderr
    assert peak < CHILD_PEAK, f"peak RSS {peak >> 20} MiB"
    assert elapsed < 2 * SECONDS, f"took {elapsed:.1f} s"


# --- the cache's work files: its lock, a part's state -------------------------------------------


@pytest.mark.parametrize(
    ("make", "says"),
    [(fifo, "not a regular file"), (directory, "a directory"), (loop, "a symbolic link")],
)
def test_a_lock_file_that_is_none_stops_the_fetch_in_one_line(
    tmp_path: Path, make: Callable[[Path], None], says: str
) -> None:
    path = tmp_path / ".base.qcow2.lock"
    make(path)
    with bounded(), pytest.raises(KvmManagerError, match=says) as caught:
        CacheLock(path, "vm-0 (pid 1)").acquire()
    assert len(str(caught.value).splitlines()) == 1


def test_who_holds_the_lock_is_one_short_line_whatever_the_file_says(tmp_path: Path) -> None:
    path = tmp_path / ".base.qcow2.lock"
    path.write_bytes(b"vm-3\n(pid 12)\n\xff" + b"x" * (1 << 20))
    assert CacheLock(path, "vm-0")._current_holder() == "another start"  # over 1 KiB: unread
    path.write_bytes(b"vm-3\n(pid 12)\r\n\xff")
    assert CacheLock(path, "vm-0")._current_holder() == "vm-3 (pid 12) \ufffd"


@pytest.mark.parametrize("make", [fifo, directory, link_to("/dev/zero"), loop])
def test_a_part_state_that_is_no_file_means_starting_over(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    files = transfer.WorkFiles(tmp_path / ".b.part", tmp_path / ".b.part.json", tmp_path / ".b.u")
    files.part.write_bytes(b"x")
    make(files.state)
    with bounded():
        assert transfer.read_state(files, "http://images.example/base.qcow2") is None
