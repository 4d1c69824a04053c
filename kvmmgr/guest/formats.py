"""The config drive's formats, as a table: name -> layout (label, metadata, network
configuration, files). A new format is one more entry. Pure."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from kvmmgr import documents
from kvmmgr.errors import ConfigError
from kvmmgr.guest import cloudconfig
from kvmmgr.net.model import GuestNetwork

DriveFormat = Literal["configdrive", "nocloud"]
OPENSTACK_VERSIONS = ("2015-10-15", "latest")  # the first with network_data.json, and latest


@dataclass(frozen=True)
class DriveFile:
    path: str  # relative, '/'-separated, e.g. openstack/latest/user_data
    data: bytes
    private: bool = False  # user-data and vendor data can hold secrets


@dataclass(frozen=True)
class DriveContents:
    """What goes on a drive, ready to be laid out: the metadata filled in, the network
    configuration as its bytes."""

    metadata: Mapping[str, Any]
    userdata: bytes | None
    network: bytes
    vendordata: bytes | None


@dataclass(frozen=True)
class DriveLayout:
    label: str
    metadata: Callable[[Mapping[str, Any], str], dict[str, Any]]  # (the user's, host name)
    network: Callable[[GuestNetwork], dict[str, Any]]  # generated for the VM's NICs
    encode: Callable[[Mapping[str, Any]], bytes]  # how this format writes a document
    check_network: Callable[[Path, bytes], None]  # the user's own network configuration
    files: Callable[[DriveContents], tuple[DriveFile, ...]]


def to_json(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2, default=str) + "\n").encode()


def to_yaml(value: Mapping[str, Any]) -> bytes:
    return yaml.safe_dump(dict(value), sort_keys=True, default_flow_style=False).encode()


def _check_network_data_json(path: Path, raw: bytes) -> None:
    try:
        value = documents.load_json(raw)
    except documents.Invalid as exc:
        raise ConfigError(
            f"NETWORKDATA_PATH {path}{exc.at}: expected OpenStack network_data.json (JSON) for "
            f"CONFIG_DRIVE_FORMAT=configdrive: {exc.problem}"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"NETWORKDATA_PATH {path}: expected a JSON object")


def _check_network_config(path: Path, raw: bytes) -> None:
    cloudconfig.load_yaml("NETWORKDATA_PATH", path, raw)


def _openstack_files(contents: DriveContents) -> tuple[DriveFile, ...]:
    files = []
    for version in OPENSTACK_VERSIONS:
        folder = f"openstack/{version}"
        files.append(DriveFile(f"{folder}/meta_data.json", to_json(contents.metadata)))
        files.append(DriveFile(f"{folder}/network_data.json", contents.network))
        if contents.userdata is not None:
            files.append(DriveFile(f"{folder}/user_data", contents.userdata, private=True))
        if contents.vendordata is not None:
            vendor = cloudconfig.vendor_data_json(contents.vendordata)
            files.append(DriveFile(f"{folder}/vendor_data.json", vendor, private=True))
    return tuple(files)


def _nocloud_files(contents: DriveContents) -> tuple[DriveFile, ...]:
    files = [
        DriveFile("meta-data", to_yaml(contents.metadata)),
        # NoCloud needs both files present, even when there is no user-data.
        DriveFile("user-data", contents.userdata or b"", private=True),
        DriveFile("network-config", contents.network),
    ]
    if contents.vendordata is not None:
        files.append(DriveFile("vendor-data", contents.vendordata, private=True))
    return tuple(files)


# Fields in DriveLayout's order: label, metadata, network, encode, check_network, files.
FORMATS: dict[DriveFormat, DriveLayout] = {
    # OpenStack's config drive: what most cloud images look for first.
    "configdrive": DriveLayout(
        "config-2", cloudconfig.configdrive_metadata, cloudconfig.network_data_json,
        to_json, _check_network_data_json, _openstack_files,
    ),
    # NoCloud: every cloud-init has it; network-config version 2.
    "nocloud": DriveLayout(
        "cidata", cloudconfig.nocloud_metadata, cloudconfig.network_config_v2,
        to_yaml, _check_network_config, _nocloud_files,
    ),
}  # fmt: skip
DRIVE_FORMATS: tuple[DriveFormat, ...] = tuple(FORMATS)
