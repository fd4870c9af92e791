"""Drops the kernel's pages and attributes of files this mount changed past the page cache.

A write-only handle writes past the page cache (`direct_io`, fs/pagecache.py), and the
kernel does not drop, on every kernel version, the pages that read handles of the same
file hold: a `tail -f` of a log that `>>` appends to would read its last cached page,
zeros past the old end included. And an O_APPEND write lands at the end the daemon
knows, which the kernel's size may lag behind. So after such a change the inode's pages
and attributes are invalidated: the readers' next read asks the daemon, whose handles
follow the new bytes (tree/bucket/localsource.py).

The notices go out from a worker thread, never from a handler (an invalidation can wait
for a page lock that a read in flight holds until the daemon answers it), coalesced per
inode; `stop()` ends them before the daemon stops answering (daemon.py).
"""
from __future__ import annotations

import errno
import logging
from typing import Callable

import trio

log = logging.getLogger(__name__)


class PageDropper:
    """Invalidates the pages and attributes of the inodes `changed` names, in the
    background; `invalidate(ino)` is pyfuse3's `invalidate_inode` (blocking)."""

    def __init__(self, invalidate: Callable[[int], None]):
        self._invalidate = invalidate
        self.due: set[int] = set()  # inodes to invalidate at the next wake
        self._wake = trio.Event()
        self._sending = trio.Lock()
        self._stopping = False
        self.dropped = 0  # invalidations sent since the mount

    def changed(self, ino: int) -> None:
        """`ino` was written past the page cache that readers of it use."""
        self.due.add(ino)
        self._wake.set()

    async def run(self) -> None:
        """Send what is due whenever woken, until `stop` (the daemon's supervisor runs it)."""
        while not self._stopping:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._stopping:
                break
            due, self.due = self.due, set()
            async with self._sending:  # a batch's thread is waited for even when cancelled
                await trio.to_thread.run_sync(self._send, sorted(due))

    async def stop(self) -> None:
        """No more notices; returns once the batch being sent (if any) is sent."""
        self._stopping = True
        self._wake.set()
        async with self._sending:
            pass

    def _send(self, inos: list[int]) -> None:
        """Invalidate each inode (blocking: a worker thread)."""
        for ino in inos:
            if self._stopping:
                return
            try:
                self._invalidate(ino)
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the kernel forgot it: nothing cached
                    continue
                log.debug("page cache of inode %d not dropped: %s", ino, exc)
                if exc.errno in (errno.ENOTCONN, errno.EBADF):  # unmounted
                    return
            self.dropped += 1
