"""The cloud-init config drive as data: its files planned from the inputs, in the format's
layout (formats.py). Pure; inputs.py reads the inputs, iso.py writes the drive."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmmgr.guest.formats import FORMATS, DriveContents, DriveFile, DriveFormat
from kvmmgr.net.model import GuestNetwork


@dataclass(frozen=True)
class DriveInputs:
    """The ConfigMap (or Secret) mounts; None where the file does not exist."""

    userdata: bytes | None
    metadata: Mapping[str, Any] | None
    networkdata: bytes | None = None  # the user's own network config: replaces ours
    vendordata: bytes | None = None


@dataclass(frozen=True)
class ConfigDrivePlan:
    format: DriveFormat
    label: str
    iso: Path
    metadata: Mapping[str, Any]
    network_config: Mapping[str, Any] | None  # generated; None when the user gave theirs
    files: tuple[DriveFile, ...]


def build_config_drive(
    *,
    drive_format: DriveFormat,
    iso: Path,
    hostname: str,
    inputs: DriveInputs,
    network: GuestNetwork,
    networkdata_path: Path,
) -> ConfigDrivePlan:
    """The drive's files, from the same inputs in either format."""
    layout = FORMATS[drive_format]
    metadata = layout.metadata(inputs.metadata or {}, hostname)
    generated = None
    if inputs.networkdata is None:
        generated = layout.network(network)
        networkdata = layout.encode(generated)
    else:
        layout.check_network(networkdata_path, inputs.networkdata)
        networkdata = inputs.networkdata
    contents = DriveContents(metadata, inputs.userdata, networkdata, inputs.vendordata)
    return ConfigDrivePlan(
        drive_format, layout.label, iso, metadata, generated, layout.files(contents)
    )
