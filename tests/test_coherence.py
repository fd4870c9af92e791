"""The page dropper (fs/coherence.py): coalesced per inode, sent from a worker thread,
quiet about inodes the kernel forgot, stopped before the daemon stops answering."""
from __future__ import annotations

import errno
import threading

import trio

from s3fuse.fs.coherence import PageDropper


async def test_changes_are_coalesced_per_inode_and_sent_off_the_loop():
    sent: list[tuple[int, bool]] = []
    loop_thread = threading.get_ident()
    dropper = PageDropper(lambda ino: sent.append((ino, threading.get_ident() == loop_thread)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dropper.run)
        for ino in (7, 3, 7, 7):
            dropper.changed(ino)
        await wait_for(lambda: len(sent) == 2)
        dropper.changed(7)
        await wait_for(lambda: len(sent) == 3)
        await dropper.stop()
    assert sent == [(3, False), (7, False), (7, False)]
    assert dropper.dropped == 3


async def test_forgotten_inodes_are_skipped_and_an_unmount_ends_the_batch():
    tried: list[int] = []

    def invalidate(ino: int) -> None:
        tried.append(ino)
        if ino == 1:
            raise OSError(errno.ENOENT, "not cached")
        if ino == 2:
            raise OSError(errno.ENOTCONN, "unmounted")

    dropper = PageDropper(invalidate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dropper.run)
        for ino in (1, 2, 3):
            dropper.changed(ino)
        await wait_for(lambda: len(tried) == 2)
        await trio.sleep(0.05)
        await dropper.stop()
    assert tried == [1, 2] and dropper.dropped == 0


async def wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)
