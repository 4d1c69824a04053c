"""The config drive's inputs, read from the ConfigMap and Secret mounts and checked: a missing
file is simply absent, an unreadable, oversized or invalid one an error naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvmmgr.config import InputPaths
from kvmmgr.errors import ConfigError
from kvmmgr.guest import cloudconfig
from kvmmgr.guest.drive import DriveInputs

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
    return value


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
