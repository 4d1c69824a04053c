"""Settings from the environment: parsed and validated before anything is touched, grouped by
what they configure. Each loader reads its own variables; the first bad one raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Literal
from uuid import UUID

from kvmmgr import values
from kvmmgr.errors import ConfigError
from kvmmgr.guest.formats import DRIVE_FORMATS, DriveFormat
from kvmmgr.image import unpack
from kvmmgr.image.sources import DataDiskSource, ImageSource, NewDisk, PodDisk, parse_source
from kvmmgr.net.model import NET_MODES, VNC_PORT, Attachment, NetMode, PortSpec

Accel = Literal["auto", "kvm", "tcg"]
Machine = Literal["pc", "q35"]
Firmware = Literal["bios", "uefi"]
DiskBus = Literal["virtio", "scsi", "sata", "ide"]
NicModel = Literal["virtio", "e1000", "e1000e", "rtl8139", "vmxnet3"]
MACHINES: tuple[Machine, ...] = ("pc", "q35")
FIRMWARES: tuple[Firmware, ...] = ("bios", "uefi")
DISK_BUSES: tuple[DiskBus, ...] = ("virtio", "scsi", "sata", "ide")
NIC_MODELS: tuple[NicModel, ...] = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3")
DEFAULT_RUN_DIR = "/run/kvmmgr"
DEFAULT_VM_IP = "192.168.254.2"
DEFAULT_VM_GW = "192.168.254.1"
# The VM's IPv6 side in NAT mode, on a dual-stack pod: a unique local /64 ("kvm" in hex),
# the VM on ::2, the bridge (its router) on ::1.
DEFAULT_VM_IP6 = "fd00:6b76:6d::2"
MAX_CPUS = 255  # QEMU's limit for the pc machine
MAX_RETRIES = 100
VNC_PASSWORD_MAX = 8  # bytes: VNC's authentication uses no more
MAX_DATA_DISKS = 16
MAX_PORT = 65535
# The unprivileged user QEMU runs as once the setup is done (the image creates it).
DEFAULT_QEMU_USER = "kvmmgr-qemu"
# When IMG_TARGET names another base than the VM's disk was made on. keep: the disk stays on
# its base (a pet); rebase: it is moved onto the new one at the start, the guest seeing the
# same disk (a pet upgraded); reimage: it is made afresh on the new one (cattle, which keep
# no state on their disk).
DiskPolicy = Literal["keep", "rebase", "reimage"]
DISK_POLICIES: tuple[DiskPolicy, ...] = ("keep", "rebase", "reimage")


@dataclass(frozen=True)
class ImageSettings:
    source: ImageSource | None
    target: str  # the base's file name in image_dir
    sha256: str | None
    retries: int
    ca_bundle: Path | None
    image_dir: Path  # the shared cache
    vm_dir: Path  # the VM's own disk
    disk_size: int | None  # bytes; None: the base image's size
    data_disks: tuple[DataDiskSource, ...] = ()  # VM_DATA_DISKS, in order
    disk_policy: DiskPolicy = "keep"  # VM_DISK_POLICY: what a disk does when the base changes


@dataclass(frozen=True)
class Readiness:
    """When the VM counts as ready (READINESS): QEMU runs; the guest agent answers; or the VM
    accepts a TCP connection on `port` at `address` (its first NAT NIC's, VM_IP)."""

    check: Literal["qemu", "agent", "tcp"]
    port: int | None = None
    address: IPv4Address | None = None

    def __str__(self) -> str:
        return f"tcp:{self.port}" if self.check == "tcp" else self.check


@dataclass(frozen=True)
class Hardware:
    """The virtual machine the guest expects; None: not said (an OVA's, else the default)."""

    machine: Machine | None = None
    firmware: Firmware | None = None
    secure_boot: bool = False
    disk_bus: DiskBus | None = None
    nic_model: NicModel | None = None
    cpu_model: str | None = None  # a QEMU CPU model; None: host under KVM, qemu64 under TCG
    serial: str | None = None  # SMBIOS system serial; None: derived from the host name
    uuid: UUID | None = None  # SMBIOS system UUID; None: derived from the host name
    balloon: bool = False  # VM_BALLOON: a virtio balloon (memory figures, from the guest too)


@dataclass(frozen=True)
class VmSettings:
    hostname: str | None  # None: the kernel's
    mac: str | None
    memory_mib: int | None
    cpus: int | None
    accel: Accel
    vnc: bool
    vnc_password: str | None = field(repr=False)
    readiness: Readiness
    hardware: Hardware = Hardware()
    qemu_user: str = DEFAULT_QEMU_USER  # a user name, or UID:GID; never root
    web_console_port: int | None = None  # WEB_CONSOLE_PORT: noVNC's page and WebSocket

    @property
    def private_ports(self) -> tuple[int, ...]:
        """The TCP ports of the VM container's own: not the VM's."""
        web = (self.web_console_port,) if self.web_console_port else ()
        return ((VNC_PORT,) if self.vnc else ()) + web


@dataclass(frozen=True)
class NetworkSettings:
    vm_ip: IPv4Address
    vm_gw: IPv4Address
    vm_ip6: IPv6Address
    pod_iface: str
    pod_ip: IPv4Address | None
    mode: NetMode
    # The NICs, in order; None: every pod interface with an IPv4 address (ATTACH_IFACES=all).
    attachments: tuple[Attachment, ...] | None
    selected_network: IPv4Network | None
    resolv_conf: Path
    nat_exclude: tuple[PortSpec, ...]
    dhcp: bool
    dnsmasq_opts: tuple[str, ...]
    metrics_port: int | None = None  # METRICS_PORT: TCP kept for the metrics sidecar

    @property
    def modes(self) -> set[NetMode]:
        return {a.mode for a in self.attachments} if self.attachments else {self.mode}


@dataclass(frozen=True)
class InputPaths:
    """Where the config drive's inputs are mounted (ConfigMaps, Secrets)."""

    userdata: Path
    metadata: Path
    networkdata: Path
    vendordata: Path


@dataclass(frozen=True)
class GuestSettings:
    inputs: InputPaths
    drive_format: DriveFormat | None  # None: no config drive at all


@dataclass(frozen=True)
class Settings:
    image: ImageSettings
    vm: VmSettings
    network: NetworkSettings
    guest: GuestSettings
    run_dir: Path
    debug: bool


def load_settings(env: Mapping[str, str]) -> Settings:
    """Parse every variable of the contract; the first bad one raises ConfigError."""
    image = load_image(env)
    network = load_network(env)
    vm = load_vm(env)
    if vm.readiness.check == "tcp" and "nat" not in network.modes:
        raise ConfigError.bad_value(
            "READINESS",
            str(vm.readiness),
            "qemu or agent when no NIC is in nat mode (tcp:PORT connects to VM_IP)",
        )
    if network.metrics_port in vm.private_ports:
        raise ConfigError.bad_value(
            "METRICS_PORT", str(network.metrics_port),
            f"another port than {_named(vm.private_ports)}, the container's own",
        )  # fmt: skip
    return Settings(
        image=image,
        vm=vm,
        network=network,
        guest=load_guest(env),
        run_dir=run_dir_of(env),
        debug=values.boolean(env, "DEBUG"),
    )


def _named(ports: tuple[int, ...]) -> str:
    names = {VNC_PORT: "QEMU's VNC"}
    return " and ".join(f"{port} ({names.get(port, 'WEB_CONSOLE_PORT')})" for port in ports)


def run_dir_of(env: Mapping[str, str]) -> Path:
    """RUN_DIR: all that `status` and `shutdown` need, whatever else is configured."""
    return values.abs_path(env, "RUN_DIR", DEFAULT_RUN_DIR)


def load_metrics_port(env: Mapping[str, str]) -> int | None:
    """METRICS_PORT: the metrics sidecar's TCP port, which the VM container then keeps."""
    raw = values.text(env, "METRICS_PORT")
    return values.number("METRICS_PORT", raw, 1, MAX_PORT) if raw else None


def load_image(env: Mapping[str, str]) -> ImageSettings:
    image_dir = values.abs_path(env, "IMAGE_DIR", "/image")
    raw = values.text(env, "IMG_SOURCE")
    source = parse_source(raw) if raw else None
    target = values.text(env, "IMG_TARGET") or (unpack.strip_suffix(source.name) if source else "")
    if not target:
        raise ConfigError("IMG_SOURCE is not set: expected the URL or path of the base image")
    if "/" in target or target in {".", ".."}:
        raise ConfigError.bad_value("IMG_TARGET", target, "a plain file name")
    sha256 = values.text(env, "IMG_SHA256").lower() or None
    if sha256 is not None and (len(sha256) != 64 or set(sha256) - set("0123456789abcdef")):
        raise ConfigError.bad_value("IMG_SHA256", sha256, "64 hexadecimal digits")
    retries = values.number("IMG_RETRIES", values.text(env, "IMG_RETRIES") or "5", 0, MAX_RETRIES)
    ca_bundle = (
        values.abs_path(env, "IMG_CA_BUNDLE", "") if values.text(env, "IMG_CA_BUNDLE") else None
    )
    return ImageSettings(
        source=source,
        target=target,
        sha256=sha256,
        retries=retries,
        ca_bundle=ca_bundle,
        image_dir=image_dir,
        vm_dir=values.abs_path(env, "VM_DIR", str(image_dir)),
        disk_size=values.disk_size("VM_DISK_SIZE", values.text(env, "VM_DISK_SIZE")),
        data_disks=_data_disks(values.text(env, "VM_DATA_DISKS")),
        disk_policy=values.choice(
            "VM_DISK_POLICY", values.text(env, "VM_DISK_POLICY") or "keep", DISK_POLICIES
        ),
    )


def load_network(env: Mapping[str, str]) -> NetworkSettings:
    get = partial(values.text, env)
    vm_ip = values.ipv4("VM_IP", get("VM_IP") or DEFAULT_VM_IP)
    vm_gw = values.ipv4("VM_GW", get("VM_GW") or DEFAULT_VM_GW)
    _check_pair(vm_ip, vm_gw)
    nat_exclude = values.port_specs("NAT_EXCLUDE", get("NAT_EXCLUDE"))
    dnsmasq_opts = values.words("DNSMASQ_OPTS", get("DNSMASQ_OPTS"))
    pod_iface = values.ifname("POD_IFACE", get("POD_IFACE") or "eth0")
    mode = values.choice("NET_MODE", get("NET_MODE") or "nat", NET_MODES)
    return NetworkSettings(
        vm_ip=vm_ip,
        vm_gw=vm_gw,
        vm_ip6=values.ipv6("VM_IP6", get("VM_IP6") or DEFAULT_VM_IP6),
        pod_iface=pod_iface,
        pod_ip=values.ipv4("POD_IP", get("POD_IP")) if get("POD_IP") else None,
        mode=mode,
        attachments=_attachments(get("ATTACH_IFACES"), pod_iface, mode),
        selected_network=values.network("SELECTED_NETWORK", get("SELECTED_NETWORK")),
        resolv_conf=values.abs_path(env, "RESOLV_CONF", "/etc/resolv.conf"),
        nat_exclude=nat_exclude,
        dhcp=not values.boolean(env, "NO_DHCP"),
        dnsmasq_opts=dnsmasq_opts,
        metrics_port=load_metrics_port(env),
    )


def load_vm(env: Mapping[str, str]) -> VmSettings:
    get = partial(values.text, env)
    no_vnc = values.boolean(env, "NO_VNC")
    password = env.get("VNC_PASSWORD") or None
    try:  # an environment's bytes that are not UTF-8 come as surrogates, which do not encode
        size = len(password.encode()) if password is not None else 0
    except UnicodeEncodeError:
        raise ConfigError("VNC_PASSWORD is not UTF-8 text; the value is not shown") from None
    if password is not None and not 1 <= size <= VNC_PASSWORD_MAX:
        # The VNC protocol's authentication uses only the first 8 bytes: refuse rather than
        # silently accept a password that is not what the user thinks it is.
        raise ConfigError(
            f"VNC_PASSWORD has {size} bytes: expected 1 to 8 "
            "(VNC authentication uses at most 8); the value is not shown"
        )
    hostname = get("HOSTNAME") or None
    web_console = values.optional_number("WEB_CONSOLE_PORT", get("WEB_CONSOLE_PORT"), MAX_PORT)
    if web_console and no_vnc:
        raise ConfigError.bad_value(
            "WEB_CONSOLE_PORT", str(web_console), "unset with NO_VNC (the console shows VNC)"
        )
    if web_console == VNC_PORT:
        raise ConfigError.bad_value(
            "WEB_CONSOLE_PORT", str(web_console), f"another port than {VNC_PORT}, QEMU's VNC"
        )
    return VmSettings(
        hostname=values.hostname("HOSTNAME", hostname) if hostname else None,
        mac=values.mac("VM_MAC", get("VM_MAC")),
        memory_mib=values.memory_mib("VM_MEMORY", get("VM_MEMORY")),
        cpus=values.optional_number("VM_CPUS", get("VM_CPUS"), MAX_CPUS),
        accel=values.choice("VM_ACCEL", get("VM_ACCEL") or "auto", ("auto", "kvm", "tcg")),
        vnc=not no_vnc,
        vnc_password=None if no_vnc else password,
        readiness=load_readiness(env),
        hardware=load_hardware(env),
        qemu_user=values.run_as("QEMU_USER", get("QEMU_USER") or DEFAULT_QEMU_USER),
        web_console_port=web_console,
    )


def load_hardware(env: Mapping[str, str]) -> Hardware:
    get = partial(values.text, env)
    firmware = (
        values.choice("VM_FIRMWARE", get("VM_FIRMWARE"), FIRMWARES) if get("VM_FIRMWARE") else None
    )
    machine = (
        values.choice("VM_MACHINE", get("VM_MACHINE"), MACHINES) if get("VM_MACHINE") else None
    )
    secure = values.boolean(env, "VM_SECURE_BOOT")
    if secure and (firmware == "bios" or machine == "pc"):
        raise ConfigError.bad_value(
            "VM_SECURE_BOOT", get("VM_SECURE_BOOT"),
            "false with VM_FIRMWARE=bios or VM_MACHINE=pc (Secure Boot needs UEFI on q35)",
        )  # fmt: skip
    bus = (
        values.choice("VM_DISK_BUS", get("VM_DISK_BUS"), DISK_BUSES) if get("VM_DISK_BUS") else None
    )
    if bus == "ide" and machine == "q35":
        raise ConfigError.bad_value(
            "VM_DISK_BUS", "ide", "virtio, scsi or sata with VM_MACHINE=q35 (it has no IDE)"
        )
    model = get("VM_NIC_MODEL")
    return Hardware(
        machine=machine,
        firmware=firmware,
        secure_boot=secure,
        disk_bus=bus,
        nic_model=values.choice("VM_NIC_MODEL", model, NIC_MODELS) if model else None,
        cpu_model=values.cpu_model("VM_CPU_MODEL", get("VM_CPU_MODEL")),
        serial=values.serial("VM_SERIAL", get("VM_SERIAL")),
        uuid=values.uuid_of("VM_UUID", get("VM_UUID")),
        balloon=values.boolean(env, "VM_BALLOON"),
    )


def load_guest(env: Mapping[str, str]) -> GuestSettings:
    inputs = InputPaths(
        userdata=values.abs_path(env, "USERDATA_PATH", "/userdata"),
        metadata=values.abs_path(env, "METADATA_PATH", "/metadata"),
        networkdata=values.abs_path(env, "NETWORKDATA_PATH", "/networkdata"),
        vendordata=values.abs_path(env, "VENDORDATA_PATH", "/vendordata"),
    )
    raw = values.text(env, "CONFIG_DRIVE_FORMAT") or "configdrive"
    for drive_format in DRIVE_FORMATS:
        if raw.lower() == drive_format:
            return GuestSettings(inputs, drive_format)
    if raw.lower() == "none":
        return GuestSettings(inputs, None)
    expected = "one of " + ", ".join((*DRIVE_FORMATS, "none"))
    raise ConfigError.bad_value("CONFIG_DRIVE_FORMAT", raw, expected)


def load_readiness(env: Mapping[str, str]) -> Readiness:
    """READINESS (and VM_IP, for tcp:PORT): all that `status --ready` needs to know."""
    raw = values.text(env, "READINESS") or "qemu"
    word, colon, port = raw.lower().partition(":")
    if word in {"qemu", "agent"} and not colon:
        return Readiness("qemu" if word == "qemu" else "agent")
    if word == "tcp" and values.decimal(port) and 1 <= int(port) <= 65535:
        address = values.ipv4("VM_IP", values.text(env, "VM_IP") or DEFAULT_VM_IP)
        return Readiness("tcp", int(port), address)
    raise ConfigError.bad_value("READINESS", raw, "qemu, agent or tcp:PORT (PORT 1-65535)")


def _check_pair(vm_ip: IPv4Address, vm_gw: IPv4Address) -> None:
    net = IPv4Network(f"{vm_ip}/30", strict=False)
    usable = (net.network_address + 1, net.network_address + 2)
    if vm_ip not in usable:
        raise ConfigError.bad_value(
            "VM_IP",
            str(vm_ip),
            f"a usable host of its /30 ({usable[0]} or {usable[1]}), "
            "not the network or broadcast address",
        )
    if vm_gw not in usable or vm_gw == vm_ip:
        other = usable[1] if vm_ip == usable[0] else usable[0]
        raise ConfigError.bad_value(
            "VM_GW", str(vm_gw), f"the other usable host of VM_IP's /30 {net}, i.e. {other}"
        )


def _data_disks(raw: str) -> tuple[DataDiskSource, ...]:
    """`10G /dev/xvdb /data/disk.img`: a size makes a disk on the VM's volume, a path uses
    a block device or a file of the pod."""
    disks: list[DataDiskSource] = []
    for item in raw.replace(",", " ").split():
        if item.startswith("/"):
            disks.append(PodDisk(values.abs_path({"VM_DATA_DISKS": item}, "VM_DATA_DISKS", "")))
        else:
            size = values.disk_size("VM_DATA_DISKS", item)
            assert size is not None
            disks.append(NewDisk(size))
    if len(disks) > MAX_DATA_DISKS:
        raise ConfigError.bad_value("VM_DATA_DISKS", raw, f"at most {MAX_DATA_DISKS} disks")
    return tuple(disks)


def _attachments(raw: str, pod_iface: str, mode: NetMode) -> tuple[Attachment, ...] | None:
    """`eth0:nat net1:bridge`, `eth0 net1` (NET_MODE for each), or `all`."""
    if raw.lower() == "all":
        return None
    if not raw:
        return (Attachment(pod_iface, mode),)
    found: dict[str, Attachment] = {}
    for item in raw.replace(",", " ").split():
        name, _, given = item.partition(":")
        iface = values.ifname("ATTACH_IFACES", name)
        if iface in found:
            raise ConfigError.bad_value(
                "ATTACH_IFACES", raw, f"each interface once ({iface} twice)"
            )
        chosen = values.choice("ATTACH_IFACES", given, NET_MODES) if given else mode
        found[iface] = Attachment(iface, chosen)
    return tuple(found.values())
