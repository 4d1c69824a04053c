"""The cloud-init config drive: inputs read from the ConfigMap mounts, files planned (pure),
then written as an ISO 9660 image with Rock Ridge and Joliet names (pycdlib)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvmmgr import cloudconfig
from kvmmgr.config import DriveFormat, InputPaths
from kvmmgr.errors import ConfigError, StepError
from kvmmgr.files import write_atomic

LABELS: dict[DriveFormat, str] = {"configdrive": "config-2", "nocloud": "cidata"}
ISO_EPOCH = 946684800.0  # 2000-01-01T00:00:00Z: every date recorded in the ISO
MAX_INPUT = 16 << 20  # bytes: larger inputs are refused (cloud-init reads them in memory)
OPENSTACK_VERSIONS = ("2015-10-15", "latest")  # the first with network_data.json, and latest
PRIVATE = 0o100400  # Rock Ridge mode of user-data and vendor-data: they can hold secrets
PUBLIC = 0o100444


@dataclass(frozen=True)
class DriveInputs:
    """The ConfigMap (or Secret) mounts; None where the file does not exist."""

    userdata: bytes | None
    metadata: Mapping[str, Any] | None
    networkdata: bytes | None = None  # the user's own network config: replaces ours
    vendordata: bytes | None = None


@dataclass(frozen=True)
class DriveFile:
    path: str  # relative, '/'-separated, e.g. openstack/latest/user_data
    data: bytes
    private: bool = False


@dataclass(frozen=True)
class ConfigDrivePlan:
    format: DriveFormat
    label: str
    iso: Path
    metadata: Mapping[str, Any]
    network_config: Mapping[str, Any] | None  # generated; None when the user gave theirs
    files: tuple[DriveFile, ...]


def read_inputs(paths: InputPaths) -> DriveInputs:
    """Read the mounts; a missing file is simply absent, an unreadable, oversized or invalid
    one an error naming it."""
    userdata = _read_optional("USERDATA_PATH", paths.userdata)
    if userdata is not None:
        cloudconfig.check_cloud_config("USERDATA_PATH", str(paths.userdata), userdata)
    raw_metadata = _read_optional("METADATA_PATH", paths.metadata)
    metadata = None if raw_metadata is None else parse_metadata(paths.metadata, raw_metadata)
    vendordata = _read_optional("VENDORDATA_PATH", paths.vendordata)
    if vendordata is not None:
        cloudconfig.check_cloud_config("VENDORDATA_PATH", str(paths.vendordata), vendordata)
    networkdata = _read_optional("NETWORKDATA_PATH", paths.networkdata)
    return DriveInputs(userdata, metadata, networkdata, vendordata)


def parse_metadata(path: Path, raw: bytes) -> dict[str, Any]:
    """Metadata is YAML or JSON (JSON is YAML); it must be a mapping."""
    value = _load_yaml("METADATA_PATH", path, raw)
    if not isinstance(value, dict):
        raise ConfigError(
            f"METADATA_PATH {path}: expected a mapping of keys to values, "
            f"got {type(value).__name__}"
        )
    return value


def _load_yaml(name: str, path: Path, raw: bytes) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{name} {path}{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} {path}: invalid YAML: {exc}") from None


def build_config_drive(
    *,
    drive_format: DriveFormat,
    iso: Path,
    hostname: str,
    inputs: DriveInputs,
    network: cloudconfig.GuestNetwork,
    networkdata_path: Path,
) -> ConfigDrivePlan:
    """The drive's files, from the same inputs in either format."""
    given = inputs.metadata or {}
    generated = None
    if drive_format == "configdrive":
        metadata = cloudconfig.configdrive_metadata(given, hostname)
        if inputs.networkdata is None:
            generated = cloudconfig.network_data_json(network)
            networkdata = _json(generated)
        else:
            networkdata = _checked_json(networkdata_path, inputs.networkdata)
        files = []
        for version in OPENSTACK_VERSIONS:
            folder = f"openstack/{version}"
            files.append(DriveFile(f"{folder}/meta_data.json", _json(metadata)))
            files.append(DriveFile(f"{folder}/network_data.json", networkdata))
            if inputs.userdata is not None:
                files.append(DriveFile(f"{folder}/user_data", inputs.userdata, private=True))
            if inputs.vendordata is not None:
                vendor = cloudconfig.vendor_data_json(inputs.vendordata)
                files.append(DriveFile(f"{folder}/vendor_data.json", vendor, private=True))
    else:
        metadata = cloudconfig.nocloud_metadata(given, hostname)
        if inputs.networkdata is None:
            generated = cloudconfig.network_config_v2(network)
            networkdata = _yaml(generated)
        else:
            _load_yaml("NETWORKDATA_PATH", networkdata_path, inputs.networkdata)
            networkdata = inputs.networkdata
        files = [
            DriveFile("meta-data", _yaml(metadata)),
            # NoCloud needs both files present, even when there is no user-data.
            DriveFile("user-data", inputs.userdata or b"", private=True),
            DriveFile("network-config", networkdata),
        ]
        if inputs.vendordata is not None:
            files.append(DriveFile("vendor-data", inputs.vendordata, private=True))
    return ConfigDrivePlan(
        drive_format, LABELS[drive_format], iso, metadata, generated, tuple(files)
    )


def _checked_json(path: Path, raw: bytes) -> bytes:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(
            f"NETWORKDATA_PATH {path}: expected OpenStack network_data.json (JSON) for "
            f"CONFIG_DRIVE_FORMAT=configdrive: {exc}"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"NETWORKDATA_PATH {path}: expected a JSON object")
    return raw


def write_iso(plan: ConfigDrivePlan) -> bool:
    """Write the ISO atomically, readable by its owner only (user-data can hold secrets).
    False when the file already held exactly these bytes (left untouched)."""
    data = render_iso(plan)
    try:
        if plan.iso.read_bytes() == data:
            return False
    except OSError:
        pass  # missing or unreadable: write it
    write_atomic(plan.iso, data, mode=0o600)
    return True


def render_iso(plan: ConfigDrivePlan) -> bytes:
    """The ISO's bytes: the same plan always gives the same bytes."""
    import pycdlib  # imported here: only this step needs it

    with _fixed_clock():
        return _build_iso(pycdlib, plan)


def _build_iso(pycdlib: Any, plan: ConfigDrivePlan) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=plan.label)
    names = _Iso9660Names()
    directories = sorted({str(Path(f.path).parent) for f in plan.files} - {"."})
    for directory in _with_parents(directories):
        iso.add_directory(
            names.directory(directory), rr_name=Path(directory).name, joliet_path="/" + directory
        )
    for drive_file in plan.files:
        iso.add_fp(
            io.BytesIO(drive_file.data),
            len(drive_file.data),
            names.file(drive_file.path),
            rr_name=Path(drive_file.path).name,
            joliet_path="/" + drive_file.path,
            file_mode=PRIVATE if drive_file.private else PUBLIC,
        )
    buffer = io.BytesIO()
    try:
        iso.write_fp(buffer)
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise StepError(f"could not build the config drive {plan.iso}: {exc}") from exc
    finally:
        iso.close()
    return buffer.getvalue()


@contextlib.contextmanager
def _fixed_clock() -> Iterator[None]:
    """pycdlib stamps every record with time.time() in local time and has no option for a
    fixed date: while it builds, its modules see a clock stopped at ISO_EPOCH, in UTC."""
    import pycdlib.dates
    import pycdlib.headervd
    import pycdlib.pycdlib
    import pycdlib.utils

    stopped = types.SimpleNamespace(
        time=lambda: ISO_EPOCH,
        localtime=time.gmtime,
        gmtime=time.gmtime,
        strftime=time.strftime,
        strptime=time.strptime,
        struct_time=time.struct_time,
        mktime=time.mktime,
    )
    modules = (pycdlib.dates, pycdlib.headervd, pycdlib.pycdlib, pycdlib.utils)
    for module in modules:
        module.time = stopped  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            module.time = time  # type: ignore[attr-defined]


class _Iso9660Names:
    """Short upper-case ISO 9660 names (8.3) for guests that ignore Rock Ridge and Joliet;
    unique within each directory, and the same for the same files every time."""

    def __init__(self) -> None:
        self._short: dict[str, str] = {"": ""}
        self._used: set[str] = set()

    def directory(self, path: str) -> str:
        return self._assign(path, _clean(Path(path).name)[:8] or "D", "")

    def file(self, path: str) -> str:
        stem, dot, ext = Path(path).name.rpartition(".")
        if not dot:
            stem, ext = ext, ""
        # ISO 9660 file identifiers always carry the dot and a version number.
        return self._assign(path, _clean(stem)[:8] or "F", "." + _clean(ext)[:3]) + ";1"

    def _assign(self, path: str, stem: str, suffix: str) -> str:
        prefix = self._short[path.rpartition("/")[0]] + "/"
        candidate = prefix + stem + suffix
        counter = 0
        while candidate in self._used:
            counter += 1
            candidate = prefix + stem[: 8 - len(str(counter))] + str(counter) + suffix
        self._used.add(candidate)
        self._short[path] = candidate
        return candidate


def _clean(text: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", text.upper())


def _with_parents(directories: list[str]) -> list[str]:
    every: set[str] = set()
    for directory in directories:
        parts = directory.split("/")
        every.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(every, key=lambda d: (d.count("/"), d))


def _json(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2, default=str) + "\n").encode()


def _yaml(value: Mapping[str, Any]) -> bytes:
    return yaml.safe_dump(dict(value), sort_keys=True, default_flow_style=False).encode()


def _read_optional(name: str, path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_INPUT + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(
            f"{name}={str(path)!r}: is a directory: expected a file "
            "(mount the ConfigMap key with subPath)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{name}={str(path)!r}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_INPUT:
        raise ConfigError(
            f"{name}={str(path)!r}: larger than {MAX_INPUT >> 20} MiB: expected a smaller file"
        )
    return data
