"""The background SHA-256: the same digest as hashing in line, whatever the chunking."""

from __future__ import annotations

import hashlib
import random

from kvmmgr.image.hashing import BUFFER_BYTES, BUFFERS, BackgroundSha256


def test_the_digest_is_hashlibs_for_chunks_of_every_size() -> None:
    rand = random.Random(3)
    sizes = (0, 1, 4095, BUFFER_BYTES, 3 * BUFFER_BYTES + 5)  # the last one split in four
    chunks = [rand.randbytes(rand.choice(sizes)) for _ in range(4 * BUFFERS)]
    background = BackgroundSha256()
    for chunk in chunks:
        background.update(chunk)
    assert background.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_stop_ends_the_thread_and_may_come_twice() -> None:
    background = BackgroundSha256()
    background.update(b"abc")
    background.stop()
    background.stop()
    assert background.hexdigest() == hashlib.sha256(b"abc").hexdigest()
