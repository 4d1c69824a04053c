"""The README's first command, `make demo`, in its checking form: both with the test guest and
with an image given by IMG_SOURCE (fetched on the host first, as an init container would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from podlab.lab import REPO
from podlab.netns import sh


@pytest.mark.parametrize("own_image", [False, True], ids=["test-guest", "IMG_SOURCE"])
def test_demo_check_runs_verifies_and_cleans_up(
    guest_image: Path, tmp_path: Path, own_image: bool
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("IMG_SOURCE", None)
    if own_image:
        env["IMG_SOURCE"] = f"file://{guest_image}"
    namespaces_before = sh("ip", "netns", "list")
    done = subprocess.run(
        [sys.executable, "-m", "podlab.demo", "--check", "--workdir", str(tmp_path / "demo")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reached = "answered ping" if own_image else "answered HTTP"
    assert f"demo: VM reachable: it {reached} on the pod IP 10.244.0.10" in done.stdout
    assert "FAIL" not in done.stdout
    assert "demo: all checks passed" in done.stdout
    assert sh("ip", "netns", "list") == namespaces_before  # its namespaces are gone
    assert not (tmp_path / "demo" / "volumes").exists()  # and the VM's disk
