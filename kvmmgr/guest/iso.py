"""The config drive written as an ISO 9660 image with Rock Ridge and Joliet names (pycdlib):
the same plan always gives the same bytes, and an unchanged ISO is not rewritten."""

from __future__ import annotations

import contextlib
import io
import re
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kvmmgr.errors import StepError
from kvmmgr.guest.drive import ConfigDrivePlan
from kvmmgr.system.files import write_atomic

ISO_EPOCH = 946684800.0  # 2000-01-01T00:00:00Z: every date recorded in the ISO
PRIVATE = 0o100400  # Rock Ridge mode of user-data and vendor-data: they can hold secrets
PUBLIC = 0o100444


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
