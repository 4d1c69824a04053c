"""The config drive's inputs, read from the ConfigMap and Secret mounts and checked: a missing
file is simply absent, an unreadable, oversized or invalid one an error naming it, and so is
anything but a regular file (or a link to one), which is not even opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvmmgr.config import InputPaths
from kvmmgr.errors import ConfigError, short
from kvmmgr.guest import cloudconfig
from kvmmgr.guest.drive import DriveInputs
from kvmmgr.system.files import UnfitFile, read_regular

MAX_INPUT = 16 << 20  # bytes: larger inputs are refused (cloud-init reads them in memory)


def read_inputs(paths: InputPaths) -> DriveInputs:
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
    value = cloudconfig.load_yaml("METADATA_PATH", path, raw) if raw.strip() else {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"METADATA_PATH {path}: expected a mapping of keys to values, "
            f"got {type(value).__name__}"
        )
    _check_keys(path, value)
    return value


def _check_keys(path: Path, metadata: dict[Any, Any]) -> None:
    """Every key a string: the drive writes the metadata as JSON (or YAML), keys sorted."""
    pending: list[Any] = [metadata]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending += item
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise ConfigError(
                        f"METADATA_PATH {path}: the key {short(key)} ({type(key).__name__}) "
                        "is not text: expected a string (quote it)"
                    )
            pending += item.values()


def _read_optional(name: str, path: Path) -> bytes | None:
    try:
        return read_regular(path, MAX_INPUT)
    except FileNotFoundError:
        return None
    except UnfitFile as exc:
        hint = " (mount the ConfigMap key with subPath)" if path.is_dir() else ""
        raise ConfigError(f"{name}={str(path)!r}: {exc}{hint}") from None
