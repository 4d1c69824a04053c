"""The demo: a real VM behind pod networking on this machine, in one command.

    python -m podlab.demo            # run it, print what to try, Ctrl-C to stop and clean up
    python -m podlab.demo --check    # run it, verify, tear down; exit 0 when everything worked

The VM is the test guest (built on first use) unless IMG_SOURCE names an image: that one is
fetched on the host first, as an init container would, since the lab's node has no uplink.
Contract variables set in the environment (VM_MEMORY, VNC_PASSWORD, NO_VNC, ...) are passed on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from podlab import guest
from podlab.lab import KVM_MANAGER, REPO, VM_IP, KvmManager, PodLab

WORKDIR = REPO / "build" / "demo"
PASSED_ON = (
    "VM_MEMORY", "VM_CPUS", "VM_MAC", "VNC_PASSWORD", "NO_VNC", "NAT_EXCLUDE", "NO_DHCP",
    "DNSMASQ_OPTS", "CONFIG_DRIVE_FORMAT", "DEBUG", "IMG_SHA256", "IMG_TARGET",
)  # fmt: skip


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podlab.demo", description=__doc__)
    parser.add_argument("--check", action="store_true", help="verify, tear down, exit 0/1")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait for the VM (default 300)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=WORKDIR, help=f"volumes and logs (default {WORKDIR})"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("run me as root: the demo makes network namespaces")
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: it may arrive ignored
        signal.signal(signum, _interrupt)
    user_image = os.environ.get("IMG_SOURCE")
    image = None if user_image else _build_guest()
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    lab = PodLab(workdir, image)
    try:
        if user_image:
            env["IMG_SOURCE"] = user_image
            _fetch_on_the_host(lab, env)
        else:
            env.setdefault("VM_MEMORY", "256")
        return _demo(lab, env, test_guest=image is not None, check=args.check, wait=args.timeout)
    except KeyboardInterrupt:
        print()
        say("stopping")
        return 0
    finally:
        lab.close()
        for made in (lab.volumes, lab.served):  # the VM's disk and the image; logs stay
            shutil.rmtree(made, ignore_errors=True)
        say(f"namespaces removed; logs are in {workdir}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _build_guest() -> Path:
    say("building the test guest (Debian kernel + busybox; about 10 s, once)")
    return guest.build()


def _fetch_on_the_host(lab: PodLab, env: dict[str, str]) -> None:
    say(f"fetching {env['IMG_SOURCE']} on the host (kvm-manager fetch)")
    done = subprocess.run(
        [KVM_MANAGER, "fetch"], env={**lab.env(**env), "HOSTNAME": "demo"}, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"demo: kvm-manager fetch failed (exit {done.returncode})")


def _demo(lab: PodLab, env: dict[str, str], *, test_guest: bool, check: bool, wait: float) -> int:
    net = lab.net
    say(
        f"pod namespace {net.pod.name}: eth0 {net.pod_ip}/{net.prefix}, mtu {net.mtu}; "
        f"node namespace {net.node.name}: {net.node_ip}"
    )
    say("starting kvm-manager run in the pod, as a container entrypoint")
    started = time.monotonic()
    vm = lab.start(**env)
    reachable = _wait_reachable(lab, vm, test_guest, wait)
    if reachable is None:
        say(f"the VM did not answer within {wait:g} s; kvm-manager's log:")
        print(vm.log.text)
        return 1
    seconds = time.monotonic() - started
    what = "HTTP" if test_guest else "ping"
    say(f"VM reachable: it answered {what} on the pod IP {net.pod_ip} {seconds:.1f} s after start")
    if check:
        return _check(lab, vm, test_guest)
    _print_try(lab, vm)
    while vm.process.poll() is None:
        time.sleep(0.5)
    say(f"QEMU exited with status {vm.process.returncode}")
    return 0


def _wait_reachable(lab: PodLab, vm: KvmManager, test_guest: bool, wait: float) -> bool | None:
    probe: Callable[[], bool]
    if test_guest:
        url = f"http://{lab.net.pod_ip}/"
        probe = lambda: lab.from_node.http(url).get("status") == 200  # noqa: E731
    else:
        probe = lambda: lab.from_node.ping(lab.net.pod_ip, count=1)  # noqa: E731
    deadline = time.monotonic() + wait
    # Until the firewall step the pod answers for itself (ping, say): probe only once
    # kvm-manager has handed over to QEMU, when the pod IP belongs to the VM.
    try:
        vm.log.wait_for(r"^kvm-manager: qemu: exec ", wait)
    except TimeoutError:
        say(f"kvm-manager did not start QEMU (exit status {vm.process.poll()})")
        return None
    while time.monotonic() < deadline:
        if vm.process.poll() is not None:
            say(f"kvm-manager exited with status {vm.process.returncode}")
            return None
        if probe():
            return True
        time.sleep(0.5)
    return None


def _check(lab: PodLab, vm: KvmManager, test_guest: bool) -> int:
    pod_ip = lab.net.pod_ip
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("ping through the pod IP reaches the VM", lambda: lab.from_node.ping(pod_ip)),
        ("kvm-manager status says running", lambda: lab.cli("status").returncode == 0),
    ]
    if "NO_VNC" not in vm.env:
        vnc = lambda: lab.from_node.rfb(pod_ip)["banner"] == "RFB 003.008"  # noqa: E731
        checks.append(("VNC on the pod IP's port 5900 is QEMU's", vnc))
    if test_guest:
        checks += [
            (
                "HTTP through the pod IP is the VM's page",
                lambda: f"ip={VM_IP}" in lab.from_node.http(f"http://{pod_ip}/").get("body", ""),
            ),
            ("UDP echo through the pod IP", lambda: bool(lab.from_node.udp(pod_ip, 7)["reply"])),
            (
                "127.0.0.1:80 in the pod is the VM (kubectl port-forward)",
                lambda: lab.in_pod.http("http://127.0.0.1/").get("status") == 200,
            ),
            (
                "kvm-manager shutdown powers the VM off (ACPI)",
                lambda: lab.cli("shutdown", "--timeout", "60").returncode == 0 and vm.wait(60) == 0,
            ),
        ]
    failed = 0
    for description, check in checks:
        ok = check()
        failed += not ok
        print(f"  {'PASS' if ok else 'FAIL'}  {description}", flush=True)
    say("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


def _print_try(lab: PodLab, vm: KvmManager) -> None:
    node, pod, ip = lab.net.node.name, lab.net.pod.name, lab.net.pod_ip
    run_dir = vm.env["RUN_DIR"]
    lines = [
        "",
        "Try, as root in another terminal:",
        f"  ip netns exec {node} curl http://{ip}/        # the VM, through the pod IP",
        f"  ip netns exec {node} ping -c 3 {ip}           # ICMP reaches the VM too",
        f"  ip netns exec {pod} curl http://127.0.0.1/    # what kubectl port-forward does",
        f"  RUN_DIR={run_dir} ip netns exec {pod} {KVM_MANAGER} status",
        f"  tail -f {vm.console.log_file}    # the serial console (kubectl logs)",
        f"  tail -f {vm.log.log_file}    # kvm-manager's and dnsmasq's log",
    ]
    if "NO_VNC" not in vm.env:
        lines.append(
            f"  socat TCP-LISTEN:5900,bind=127.0.0.1,reuseaddr,fork "
            f"EXEC:'ip netns exec {node} socat STDIO TCP:{ip}:5900'   # then VNC to 127.0.0.1:5900"
        )
    lines += ["", "Ctrl-C stops the VM and removes the namespaces."]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
