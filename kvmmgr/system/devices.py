"""Whether a device opens (the only way to tell that a container may use it), and who else
than root may open it."""

from __future__ import annotations

import os
import stat

from kvmmgr.facts import KVM, VHOST_NET, Devices

READ_WRITE_GROUP = stat.S_IRGRP | stat.S_IWGRP
READ_WRITE_OTHER = stat.S_IROTH | stat.S_IWOTH


def opens(path: str) -> OSError | None:
    """None when `path` opens for reading and writing; else why not."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return exc
    return None


def devices(kvm: bool) -> Devices:
    """`kvm`: KVM is usable (the node's /dev/kvm opens and the CPU can run a guest)."""
    vhost_net = opens(VHOST_NET) is None
    groups, root_only = [], []
    for device in [name for name, usable in ((KVM, kvm), (VHOST_NET, vhost_net)) if usable]:
        mode = os.stat(device)
        if mode.st_mode & READ_WRITE_OTHER == READ_WRITE_OTHER:
            continue
        if mode.st_mode & READ_WRITE_GROUP == READ_WRITE_GROUP and mode.st_gid != 0:
            groups.append((device, mode.st_gid))
        else:
            root_only.append(device)
    return Devices(kvm, vhost_net, tuple(groups), tuple(root_only))
