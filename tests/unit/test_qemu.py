"""QEMU's argv, built as data."""

from __future__ import annotations

from pathlib import Path

from kvmmgr.facts import Devices
from kvmmgr.vm.launch import write_vnc_password
from kvmmgr.vm.qemu import QemuPlan
from tests.unit.factories import plan, pod_facts


def _option(argv: tuple[str, ...], flag: str) -> list[str]:
    """Every value given to `flag`."""
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def _qemu(env: dict[str, str] | None = None, **facts: object) -> QemuPlan:
    return plan(env, pod_facts(**facts) if facts else None).qemu


def test_default_argv() -> None:
    q = _qemu()
    argv = q.argv
    assert argv[0] == "qemu-system-x86_64"
    assert _option(argv, "-accel") == ["tcg"]
    assert _option(argv, "-m") == ["1024"]
    assert _option(argv, "-smp") == ["1"]
    assert "-nodefaults" in argv
    # QMP, the metrics sidecar's QMP and the agent on the sockets kvm-manager binds and
    # hands over (fds 90, 92 and 91)
    assert _option(argv, "-chardev") == [
        "stdio,id=console,signal=off",
        "socket,id=qmp,fd=90,server=on,wait=off",
        "socket,id=qmp-metrics,fd=92,server=on,wait=off",
        "socket,id=qga0,fd=91,server=on,wait=off",
    ]
    assert q.sockets == (
        (Path("/run/test-kvmmgr/qmp.sock"), 90),
        (Path("/run/test-kvmmgr/qga.sock"), 91),
        (Path("/run/test-kvmmgr/qmp-metrics.sock"), 92),
    )
    assert _option(argv, "-serial") == ["chardev:console"]
    assert "-monitor" not in argv  # -nodefaults: no monitor on stdio either
    assert _option(argv, "-mon") == ["chardev=qmp,mode=control", "chardev=qmp-metrics,mode=control"]
    assert _option(argv, "-sandbox") == [
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    ]
    drives = _option(argv, "-drive")
    assert drives[0] == "file=/image/vm-0.qcow2,if=none,id=disk0,format=qcow2,discard=unmap"
    assert drives[1].startswith("file=/run/test-kvmmgr/config-drive.iso,")
    assert "media=cdrom" in drives[1] and "readonly=on" in drives[1]
    netdev = _option(argv, "-netdev")
    assert netdev == ["tap,id=net0,fd=200,vhost=off"]  # the tap, opened by kvm-manager
    assert q.taps == (("kvmtap0", 200),)
    mac = plan().nics[0].guest.mac
    assert f"virtio-net-pci,netdev=net0,mac={mac}" in _option(argv, "-device")
    assert _option(argv, "-vnc") == ["0.0.0.0:0"]
    assert q.vnc_password_file is None


def test_the_guest_agent_channel_is_always_there() -> None:
    devices = _option(_qemu().argv, "-device")
    assert "virtio-serial-pci,id=vserial0" in devices
    port = "virtserialport,bus=vserial0.0,chardev=qga0,name=org.qemu.guest_agent.0"
    assert port in devices
    assert _qemu().agent_socket == Path("/run/test-kvmmgr/qga.sock")


def test_kvm_and_vhost_when_the_pod_has_them() -> None:
    argv = _qemu(devices=Devices(kvm=True, vhost_net=True)).argv
    assert _option(argv, "-accel") == ["kvm"]
    assert _option(argv, "-cpu") == ["host"]
    assert _option(argv, "-netdev")[0].endswith(",vhost=on")


def test_vnc_password_goes_through_a_secret_file_not_argv() -> None:
    q = _qemu({"VNC_PASSWORD": "s3cret"})
    assert "s3cret" not in " ".join(q.argv)
    assert q.vnc_password_file is not None
    assert f"secret,id=vncpass,file={q.vnc_password_file},format=raw" in _option(q.argv, "-object")
    assert _option(q.argv, "-vnc") == ["0.0.0.0:0,password-secret=vncpass"]


def test_the_web_console_adds_a_websocket_behind_the_same_password() -> None:
    q = _qemu({"VNC_PASSWORD": "s3cret", "WEB_CONSOLE_PORT": "6080"})
    option = "0.0.0.0:0,websocket=127.0.0.2:5700,password-secret=vncpass"
    assert _option(q.argv, "-vnc") == [option]  # not on 127.0.0.1: the loopback DNAT's


def test_no_vnc() -> None:
    argv = _qemu({"NO_VNC": "1", "VNC_PASSWORD": "s3cret"}).argv
    assert "-vnc" not in argv
    assert _option(argv, "-display") == ["none"]


def test_a_config_drive_even_without_inputs_unless_turned_off() -> None:
    from kvmmgr.guest.drive import DriveInputs

    # Without user-data or metadata the drive still tells the guest its network.
    argv = plan(inputs=DriveInputs(None, None)).qemu.argv
    assert len(_option(argv, "-drive")) == 2
    assert len(_option(plan({"CONFIG_DRIVE_FORMAT": "none"}).qemu.argv, "-drive")) == 1


def test_extra_arguments_come_last() -> None:
    argv = plan(extra=("-device", "usb-tablet")).qemu.argv
    assert argv[-2:] == ("-device", "usb-tablet")


def test_vnc_brings_an_absolute_pointer() -> None:
    assert "usb-tablet" in _option(_qemu().argv, "-device")
    assert "usb-tablet" not in _option(_qemu({"NO_VNC": "1"}).argv, "-device")


def test_the_vnc_secret_is_written_private_and_removed_when_no_longer_set(tmp_path: Path) -> None:
    with_password = plan({"RUN_DIR": str(tmp_path), "VNC_PASSWORD": "s3cret"}).qemu
    write_vnc_password(with_password, "s3cret")
    secret = tmp_path / "vnc-password"
    assert secret.read_text() == "s3cret" and secret.stat().st_mode & 0o777 == 0o600
    write_vnc_password(plan({"RUN_DIR": str(tmp_path)}).qemu, None)
    assert not secret.exists()


def test_one_netdev_per_nic_and_a_macvtap_by_file_descriptor() -> None:
    from tests.unit.factories import interface
    from tests.unit.test_nics import SECONDARY

    two = plan(
        {"ATTACH_IFACES": "eth0:macvtap net1:nat"}, pod_facts(interfaces=(interface(), SECONDARY))
    )
    argv = two.qemu.argv
    assert _option(argv, "-netdev") == [
        "tap,id=net0,fd=100,vhost=off",
        "tap,id=net1,fd=201,vhost=off",
    ]
    macs = [nic.guest.mac for nic in two.nics]
    assert f"virtio-net-pci,netdev=net0,mac={macs[0]}" in _option(argv, "-device")
    assert f"virtio-net-pci,netdev=net1,mac={macs[1]}" in _option(argv, "-device")
    assert two.qemu.macvtaps == (("kvmvtap0", 100),)


def test_a_balloon_only_when_asked_and_after_every_other_device() -> None:
    """VM_BALLOON adds the device last (before the user's arguments), so that no device of a
    legacy guest moves to another PCI slot; the guest reports its memory every 10 s."""
    plain = _option(_qemu().argv, "-device")
    assert not any("balloon" in device for device in plain)
    argv = _qemu({"VM_BALLOON": "true"}).argv
    devices = _option(argv, "-device")
    assert devices == [*plain, "virtio-balloon-pci,id=balloon0,guest-stats-polling-interval=10"]
    extra = plan({"VM_BALLOON": "yes"}, extra=("-device", "e1000")).qemu.argv
    assert _option(extra, "-device")[-2:] == [devices[-1], "e1000"]
