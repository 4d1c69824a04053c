"""The image cache's lock leaves no file behind, and hands over between processes (POSIX locks
belong to a process, so the holder here is a child process)."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

from kvmmgr.image.cachelock import CacheLock


def test_the_holder_removes_the_lock_file(tmp_path: Path) -> None:
    lock = CacheLock(tmp_path / ".base.img.lock", "vm-0 (pid 1)")
    assert lock.acquire()
    assert (tmp_path / ".base.img.lock").read_text() == "vm-0 (pid 1)"
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_a_locked_file_no_longer_at_the_path_is_not_the_lock(tmp_path: Path) -> None:
    path = tmp_path / ".base.img.lock"
    lock = CacheLock(path, "vm-0")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert lock._still_there(fd)
        path.unlink()
        assert not lock._still_there(fd)  # removed
        path.write_text("")
        assert not lock._still_there(fd)  # removed, and another file made in its place
    finally:
        os.close(fd)


def _hold(path: Path, holding: Any, release: Any) -> None:
    lock = CacheLock(path, "holder")
    assert lock.acquire()
    holding.set()
    release.wait(10)
    lock.release()


def test_the_lock_passes_to_the_one_waiting_and_no_file_stays(tmp_path: Path) -> None:
    path = tmp_path / ".base.img.lock"
    context = multiprocessing.get_context("fork")
    holding, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(path, holding, release))
    holder.start()
    try:
        assert holding.wait(10)
        waiter = CacheLock(path, "waiter")
        got: list[bool] = []
        thread = threading.Thread(target=lambda: got.append(waiter.acquire()))
        thread.start()
        thread.join(0.6)
        assert thread.is_alive() and path.read_text() == "holder"  # waiting
        release.set()
        thread.join(10)
        assert got == [True]
        assert path.read_text() == "waiter"
        waiter.release()
        assert not path.exists()
    finally:
        release.set()
        holder.join(10)
