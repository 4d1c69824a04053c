"""The cloud-init that Debian ships, unpacked (not installed) into build/cloud-init, so tests
can read our config drives with its own datasource code. Like the guest's kernel: fetched
with `apt-get download` once, reused after."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

from podlab.guest import REPO

ROOT = REPO / "build" / "cloud-init"
PACKAGES = ROOT / "root" / "usr" / "lib" / "python3" / "dist-packages"


def ensure() -> Path:
    """The folder holding the `cloudinit` package; also put on sys.path."""
    if not (PACKAGES / "cloudinit").is_dir():
        work = ROOT / "download"
        shutil.rmtree(ROOT, ignore_errors=True)
        work.mkdir(parents=True)
        subprocess.run(
            ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", "cloud-init"],
            cwd=work,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (deb,) = glob.glob(str(work / "cloud-init_*.deb"))
        subprocess.run(["dpkg-deb", "-x", deb, str(ROOT / "root")], check=True)
    if str(PACKAGES) not in sys.path:
        sys.path.append(str(PACKAGES))  # last: the venv's own packages come first
    return PACKAGES


def version() -> str:
    found = glob.glob(str(PACKAGES / "cloud_init-*.egg-info"))
    return Path(found[0]).name.removesuffix(".egg-info").split("-")[1] if found else "unknown"
