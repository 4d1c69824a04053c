"""The real Debian 12 guest: built by podlab/debian/build.sh into a cache outside the clone,
reused while its inputs are unchanged (a fresh machine builds it, in about 2.5 minutes)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_DIR = Path(os.environ.get("KVMMGR_TEST_CACHE", "/var/cache/kvmmgr-tests")) / "debian-12"


def build(out_dir: Path | None = None) -> Path:
    """The path of the guest's qcow2, built or rebuilt only when one of its inputs changed."""
    done = subprocess.run(
        ["bash", str(HERE / "debian" / "build.sh"), str(out_dir or CACHE_DIR)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the Debian guest failed (exit {done.returncode}); see above")
    return Path(done.stdout.strip().splitlines()[-1])


# cloud-init's last console line of every boot, e.g. "Cloud-init v. 22.4.2 finished at ..."
CLOUD_INIT_DONE = r"Cloud-init v\. \S+ finished at .* Datasource (.+?)\.\s+Up "
MEMORY_MIB = "512"  # cloud-init is Python: the busybox guest's 256 MiB would be tight
BOOT_TIMEOUT = 400.0  # about 70 s under TCG; generous for a loaded CI machine
