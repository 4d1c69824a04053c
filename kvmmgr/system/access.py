"""The files QEMU opens by path, made usable by its group and by nobody else: root keeps
owning them (the CLI needs no DAC_OVERRIDE), QEMU's group reads them, and writes the disks.
A directory on the way that QEMU cannot pass is opened to its group (search only) when it
is one of kvm-manager's volumes; any other is the pod's to fix (preflight says so)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmmgr.errors import StepError
from kvmmgr.facts import Identity
from kvmmgr.vm.qemu import QemuFile

READ_WRITE = 0o660
READ_ONLY = 0o640


@dataclass(frozen=True)
class Granted:
    user: Identity
    groups: tuple[int, ...]
    files: int
    writable: int
    opened: tuple[Path, ...]  # directories opened to QEMU's group (search only)

    def __str__(self) -> str:
        opened = ", ".join(map(str, self.opened)) or "none needed"
        return (
            f"QEMU runs as {self.user.name} (uid {self.user.uid}, groups "
            f"{','.join(map(str, self.groups))}): {self.files} files its group's "
            f"({self.writable} read-write, the rest read-only); directories opened: {opened}"
        )


SEARCH = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
READ = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def passable(info: os.stat_result, uid: int, groups: Iterable[int]) -> bool:
    """Whether a process of `uid` and `groups` may pass through (search) this directory."""
    return _allows(info, uid, groups, SEARCH)


def _allows(
    info: os.stat_result, uid: int, groups: Iterable[int], bits: tuple[int, int, int]
) -> bool:
    """The permission bit that applies to `uid` and `groups`, as the kernel picks it."""
    owner, group, other = bits
    if info.st_uid == uid:
        return bool(info.st_mode & owner)
    if info.st_gid in set(groups):
        return bool(info.st_mode & group)
    return bool(info.st_mode & other)


def closed_directory(
    path: Path, user: Identity, groups: Sequence[int], volumes: Sequence[Path]
) -> Path | None:
    """The first directory above `path` that QEMU could not pass and that is not under one
    of `volumes` (kvm-manager opens those); None when there is none."""
    for parent in reversed(path.parents):
        try:
            info = parent.stat()
        except FileNotFoundError:
            return None  # made later, under a volume
        if not passable(info, user.uid, groups) and not _under(parent, volumes):
            return parent
    return None


def grant(
    files: Sequence[QemuFile], user: Identity, groups: Sequence[int], volumes: Sequence[Path]
) -> Granted:
    opened: list[Path] = []
    try:
        for file in files:
            for parent in reversed(file.path.parents):
                info = parent.stat()
                if not passable(info, user.uid, groups) and _under(parent, volumes):
                    os.chown(parent, -1, user.gid)
                    os.chmod(parent, stat.S_IMODE(info.st_mode) | stat.S_IXGRP)
                    opened.append(parent)
            _give(file, user, groups)
    except OSError as exc:
        raise StepError(
            f"cannot make {exc.filename} usable by QEMU's group {user.gid}: {exc.strerror} "
            "(the container needs the CHOWN capability, and the file must be root's)"
        ) from exc
    writable = sum(f.writable for f in files)
    return Granted(user, tuple(groups), len(files), writable, tuple(dict.fromkeys(opened)))


def _give(file: QemuFile, user: Identity, groups: Sequence[int]) -> None:
    """The file to QEMU's group, and nobody else's. A base on a read-only volume (a cache
    filled beforehand) cannot be changed: it is enough that QEMU may already read it."""
    try:
        os.chown(file.path, -1, user.gid)
        os.chmod(file.path, READ_WRITE if file.writable else READ_ONLY)
    except OSError as exc:
        readable = _allows(file.path.stat(), user.uid, groups, READ)
        if exc.errno != errno.EROFS or file.writable or not readable:
            raise


def _under(directory: Path, volumes: Sequence[Path]) -> bool:
    return any(directory == v or v in directory.parents for v in volumes)
