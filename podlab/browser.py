"""A real browser on a page, as a user would open it: Debian's Chromium, headless, run in a
namespace of the lab (the node's, say), its screenshot read back as text by Tesseract OCR."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from podlab.netns import Namespace

WINDOW = "1024,768"
# Virtual time the page gets before the screenshot: enough for noVNC to load, connect and
# draw; the WebSocket's traffic is real, so a busy machine may need a second look.
BUDGET_MS = 10000
BROWSER_TIMEOUT = 120
# As root, without a sandbox; no GPU; nothing of Google's looked up on this closed network.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--mute-audio",
)  # fmt: skip


def screenshot(ns: Namespace, url: str, out: Path) -> Path:
    """`url` loaded in Chromium inside `ns`, as a PNG at `out`."""
    profile = Path(tempfile.mkdtemp(prefix="kvmtest-chromium-"))
    try:
        argv = ["chromium", *FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW}"]
        argv += [f"--virtual-time-budget={BUDGET_MS}", f"--screenshot={out}", url]
        done = subprocess.run(
            ns.argv(*argv),
            capture_output=True,
            text=True,
            timeout=BROWSER_TIMEOUT,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return out


def text_of(image: Path) -> str:
    """What Tesseract reads in `image`."""
    return subprocess.run(
        ["tesseract", str(image), "stdout"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
