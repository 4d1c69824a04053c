"""VNC as the pod serves it: a password through a secret, or no VNC at all; NAT_EXCLUDE."""

from __future__ import annotations

from pathlib import Path

from podlab.lab import VM_IP, PodLab
from tests.e2e.conftest import boot


def test_vnc_password_is_asked_and_never_shown(lab: PodLab) -> None:
    vm = boot(lab, VNC_PASSWORD="s3cret!")
    vnc = lab.from_node.rfb(lab.net.pod_ip, 5900)
    assert vnc["banner"] == "RFB 003.008"
    assert vnc["security_types"] == [2]  # VNC authentication, nothing else
    cmdline = Path(f"/proc/{vm.pid}/cmdline").read_bytes()
    assert b"password-secret=vncpass" in cmdline
    assert b"s3cret" not in cmdline
    assert "s3cret" not in vm.log.text
    secret = lab.volumes / "run" / "vnc-password"
    assert secret.stat().st_mode & 0o777 == 0o640  # QEMU's group reads it, nobody else
    assert (lab.volumes / "run").stat().st_mode & 0o777 == 0o710


def test_no_vnc_sends_5900_to_the_vm_and_excluded_ports_stay(lab: PodLab) -> None:
    boot(lab, NO_VNC="true", NAT_EXCLUDE="tcp/9100")
    assert lab.from_node.tcp(lab.net.pod_ip, 5900)["banner"] == "KVMTEST_GUEST tcp/5900\n"
    listening = lab.net.pod.run("ss", "-Hltn")
    assert ":5900 " not in listening  # nothing of QEMU listens in the pod
    excluded = lab.from_node.tcp(lab.net.pod_ip, 9100)
    assert excluded == {"connected": False, "error": "ConnectionRefusedError"}
    assert lab.in_pod.tcp(VM_IP, 9100)["banner"] == "KVMTEST_GUEST tcp/9100\n"  # it does listen
