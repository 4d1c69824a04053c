"""The config drive: planned files, and the ISO read back with pycdlib under every naming."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pycdlib
import pytest
import yaml

from kvmmgr.configdrive import (
    ConfigDrivePlan,
    DriveInputs,
    build_config_drive,
    read_inputs,
    render_iso,
    write_iso,
)
from kvmmgr.errors import ConfigError

USERDATA = b"#!/bin/sh\necho 'hello \xc3\xa9'\r\nexit 0\n\x00binary-tail"


def _drive(
    tmp_path: Path, userdata: bytes | None, metadata: dict[str, object] | None
) -> ConfigDrivePlan:
    drive = build_config_drive(
        drive_format="configdrive",
        iso=tmp_path / "config-drive.iso",
        hostname="vm-0",
        inputs=DriveInputs(userdata, metadata),
    )
    assert drive is not None
    return drive


def _read(image: Path, **name: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, **name)
        return out.getvalue()
    finally:
        iso.close()


def test_config_2_drive_read_back_under_rock_ridge_joliet_and_iso9660(tmp_path: Path) -> None:
    drive = _drive(tmp_path, USERDATA, {"role": "db"})
    write_iso(drive)
    iso = tmp_path / "config-drive.iso"
    rr = _read(iso, rr_path="/openstack/latest/user_data")
    joliet = _read(iso, joliet_path="/openstack/latest/user_data")
    assert rr == joliet == USERDATA  # byte for byte
    metadata = json.loads(_read(iso, rr_path="/openstack/latest/meta_data.json"))
    assert metadata["hostname"] == "vm-0" and metadata["name"] == "vm-0"
    assert metadata["role"] == "db"
    assert len(metadata["uuid"]) == 36
    assert json.loads(_read(iso, joliet_path="/openstack/latest/meta_data.json")) == metadata
    assert _read(iso, iso_path="/OPENSTAC/LATEST/USER_DAT.;1") == USERDATA

    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    try:
        assert reader.pvd.volume_identifier.decode().strip() == "config-2"
    finally:
        reader.close()
    assert iso.stat().st_mode & 0o777 == 0o600  # user-data can hold secrets


def test_user_keys_win_over_the_filled_in_ones(tmp_path: Path) -> None:
    drive = _drive(tmp_path, None, {"uuid": "given-id", "hostname": "custom", "name": "n"})
    assert drive.metadata == {"uuid": "given-id", "hostname": "custom", "name": "n"}
    assert [f.path for f in drive.files] == ["openstack/latest/meta_data.json"]


def test_uuid_is_stable_per_hostname(tmp_path: Path) -> None:
    first = _drive(tmp_path, b"x", None).metadata["uuid"]
    assert first == _drive(tmp_path, b"x", None).metadata["uuid"]
    other = build_config_drive(
        drive_format="configdrive",
        iso=tmp_path / "x.iso",
        hostname="vm-1",
        inputs=DriveInputs(b"x", None),
    )
    assert other is not None and other.metadata["uuid"] != first


def test_iso_bytes_do_not_depend_on_the_clock_or_time_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = _drive(tmp_path, USERDATA, {"role": "db"})
    first = render_iso(drive)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 400 * 86400)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert render_iso(drive) == first
    finally:
        monkeypatch.undo()
        time.tzset()
    assert time.time is real_time  # the stopped clock was only pycdlib's, and only meanwhile


def test_unchanged_iso_is_not_rewritten(tmp_path: Path) -> None:
    drive = _drive(tmp_path, USERDATA, None)
    assert write_iso(drive) is True
    inode = drive.iso.stat().st_ino
    assert write_iso(drive) is False
    assert drive.iso.stat().st_ino == inode
    changed = _drive(tmp_path, USERDATA + b"\n", None)
    assert write_iso(changed) is True
    assert drive.iso.stat().st_ino != inode


def test_no_inputs_no_drive(tmp_path: Path) -> None:
    inputs = read_inputs(tmp_path / "userdata", tmp_path / "metadata")
    assert inputs == DriveInputs(None, None)
    drive = build_config_drive(
        drive_format="configdrive", iso=tmp_path / "a.iso", hostname="vm-0", inputs=inputs
    )
    assert drive is None


def test_metadata_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "metadata").write_text("role: db\nzone: [a, b]\n")
    assert read_inputs(tmp_path / "u", tmp_path / "metadata").metadata == {
        "role": "db",
        "zone": ["a", "b"],
    }
    (tmp_path / "metadata").write_text('{"role": "web"}')
    assert read_inputs(tmp_path / "u", tmp_path / "metadata").metadata == {"role": "web"}


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metadata"
    path.write_text("role: db\nzone: [a, b\nother: 1\n")
    with pytest.raises(ConfigError, match=rf"METADATA_PATH {path} line \d+: invalid YAML"):
        read_inputs(tmp_path / "u", path)


def test_metadata_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "metadata"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_inputs(tmp_path / "u", path)


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "userdata").mkdir()
    with pytest.raises(ConfigError, match=r"USERDATA_PATH=.*is a directory"):
        read_inputs(tmp_path / "userdata", tmp_path / "metadata")


def test_nocloud_drive_read_back(tmp_path: Path) -> None:
    drive = build_config_drive(
        drive_format="nocloud",
        iso=tmp_path / "cidata.iso",
        hostname="vm-0",
        inputs=DriveInputs(None, {"role": "db"}),
    )
    assert drive is not None and drive.label == "cidata"
    write_iso(drive)
    metadata = yaml.safe_load(_read(drive.iso, rr_path="/meta-data"))
    assert metadata["local-hostname"] == "vm-0" and metadata["role"] == "db"
    assert metadata["instance-id"] == _drive(tmp_path, b"x", None).metadata["uuid"]
    assert _read(drive.iso, joliet_path="/user-data") == b""  # NoCloud wants both files
