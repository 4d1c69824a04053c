"""The cloud-init config drive: inputs read from the ConfigMap mounts, files planned (pure),
then written as an ISO 9660 image with Rock Ridge and Joliet names (pycdlib)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
import types
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvmmgr.config import DriveFormat
from kvmmgr.errors import ConfigError, StepError
from kvmmgr.files import write_atomic

LABELS: dict[DriveFormat, str] = {"configdrive": "config-2", "nocloud": "cidata"}
# Instance ids derive from the hostname, so they survive restarts (cloud-init reruns its
# first-boot modules when the id changes) and differ between VMs.
UUID_NAMESPACE = uuid.UUID("6f1b0e52-41c4-4c8e-9a57-6b7a0e5f2c11")
ISO_EPOCH = 946684800.0  # 2000-01-01T00:00:00Z: every date recorded in the ISO


@dataclass(frozen=True)
class DriveInputs:
    userdata: bytes | None
    metadata: Mapping[str, Any] | None


@dataclass(frozen=True)
class DriveFile:
    path: str  # relative, '/'-separated, e.g. openstack/latest/user_data
    data: bytes


@dataclass(frozen=True)
class ConfigDrivePlan:
    format: DriveFormat
    label: str
    iso: Path
    metadata: Mapping[str, Any]
    files: tuple[DriveFile, ...]


def read_inputs(userdata_path: Path, metadata_path: Path) -> DriveInputs:
    """Read the mounts; a missing file is simply absent, an unreadable or invalid one an error."""
    userdata = _read_optional("USERDATA_PATH", userdata_path)
    raw_metadata = _read_optional("METADATA_PATH", metadata_path)
    metadata = None if raw_metadata is None else parse_metadata(metadata_path, raw_metadata)
    return DriveInputs(userdata, metadata)


def parse_metadata(path: Path, raw: bytes) -> dict[str, Any]:
    """Metadata is YAML or JSON (JSON is YAML); it must be a mapping."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"METADATA_PATH {path}{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"METADATA_PATH {path}: invalid YAML: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"METADATA_PATH {path}: expected a mapping of keys to values, "
            f"got {type(value).__name__}"
        )
    return value


def build_config_drive(
    *, drive_format: DriveFormat, iso: Path, hostname: str, inputs: DriveInputs
) -> ConfigDrivePlan | None:
    """The drive's files, or None when there is neither user-data nor metadata."""
    if inputs.userdata is None and inputs.metadata is None:
        return None
    metadata = dict(inputs.metadata or {})
    instance_id = str(
        metadata.get("uuid") or metadata.get("instance-id") or uuid.uuid5(UUID_NAMESPACE, hostname)
    )
    if drive_format == "configdrive":
        metadata.setdefault("uuid", instance_id)
        metadata.setdefault("hostname", hostname)
        metadata.setdefault("name", hostname)
        files = [DriveFile("openstack/latest/meta_data.json", _json(metadata))]
        if inputs.userdata is not None:
            files.append(DriveFile("openstack/latest/user_data", inputs.userdata))
    else:
        metadata.setdefault("instance-id", instance_id)
        metadata.setdefault("local-hostname", hostname)
        files = [
            DriveFile("meta-data", yaml.safe_dump(metadata, sort_keys=True).encode()),
            # NoCloud needs both files present, even when there is no user-data.
            DriveFile("user-data", inputs.userdata or b""),
        ]
    return ConfigDrivePlan(drive_format, LABELS[drive_format], iso, metadata, tuple(files))


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


def _read_optional(name: str, path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(
            f"{name}={str(path)!r}: is a directory: expected a file "
            "(mount the ConfigMap key with subPath)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{name}={str(path)!r}: cannot read: {exc.strerror}") from None
