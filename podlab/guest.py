"""The test guest: built by podlab/guest/build.sh into an ignored folder, reused when current."""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD_DIR = REPO / "build" / "guest"


def build(out_dir: Path = BUILD_DIR) -> Path:
    """The path of guest.qcow2, built or rebuilt only when one of its inputs changed."""
    done = subprocess.run(
        ["bash", str(HERE / "guest" / "build.sh"), str(out_dir)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the test guest failed (exit {done.returncode}); see above")
    return Path(done.stdout.strip().splitlines()[-1])
