"""A cap on the inodes the kernel holds of bucket files, and so on the daemon's memory.

The kernel keeps every inode it looked up until memory pressure makes it forget them, and
the daemon keeps a node for each (with what the page cache was told of it, ~400 bytes):
`ls -l` of a directory of 1,000,000 keys took the daemon to 346 MiB. Past `--max-inodes`
held nodes, the entries of the files known longest (not directories, not open files) are
invalidated down to LOW_WATER of it; the kernel then drops those dentries and sends
FORGET, and the nodes go. A file used again is looked up again (its metadata is still in
the metadata store: no S3 request) and becomes the newest. A process with such a file
mapped (mmap) keeps it open to the kernel, and its `/proc/PID/maps` shows the path as
"(deleted)" until unmapped.

The notices go out from a worker thread, in batches of BATCH, never from a handler (the
thread also encodes the names: a sweep on the trio loop only picks the nodes): an
invalidation waits for the directory's lock, which an operation in that directory holds
until the daemon answers it. pyfuse3's own `invalidate_entry_async` was not used: its
thread outlives the session (still sending after `pyfuse3.close`). `stop()` ends the
sweeps before the daemon stops answering (daemon.py), so none waits for a lock forever.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterator

import trio

from ..names import split
from .inodes import InodeTable, Node

log = logging.getLogger(__name__)

#: A sweep goes down to this share of the cap, so that sweeps are not one per lookup.
LOW_WATER = 0.8
#: Seconds between sweeps: the kernel's FORGETs for the last one come back meanwhile.
PAUSE = 0.2


#: Entries per thread hop.
BATCH = 512


def _batches(items: list[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    for at in range(0, len(items), size):
        yield items[at:at + size]


class InodeCap:
    """Keeps `inodes` near `limit` held nodes (0: no cap). `parent_of(node)` is the inode
    of a node's parent directory (None when the kernel holds none); `open_inos()` the
    inodes with open handles."""

    def __init__(self, inodes: InodeTable, limit: int,
                 parent_of: Callable[[Node], int | None],
                 open_inos: Callable[[], set[int]], invalidate: Callable[[int, bytes], None]):
        self.inodes = inodes
        self.limit = limit
        self._parent_of = parent_of
        self._open_inos = open_inos
        self._invalidate = invalidate
        self._wake = trio.Event()
        self._stopping = False
        self._sending = trio.Lock()  # held while a sweep's batches go out
        self.invalidated = 0  # entries invalidated since the mount

    def grew(self) -> None:
        """A node was made: wake the sweeper if the table is past the cap."""
        if self.limit and len(self.inodes) > self.limit:
            self._wake.set()

    async def run(self) -> None:
        """Sweep whenever woken, at most one sweep per PAUSE, until `stop` (the daemon's
        supervisor runs it)."""
        while not self._stopping:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._stopping:
                break
            async with self._sending:  # a batch's thread is waited for even when cancelled
                for batch in _batches(self.sweep(), BATCH):
                    await trio.to_thread.run_sync(self._send, batch)
                    if self._stopping:
                        break
            await trio.sleep(PAUSE)

    async def stop(self) -> None:
        """No more sweeps; returns once the batch being sent (if any) is sent."""
        self._stopping = True
        self._wake.set()
        async with self._sending:
            pass

    def _send(self, batch: list[tuple[int, str]]) -> None:
        """Invalidate each (parent inode, the file's path); blocking (a worker thread, which
        also makes the names). Stops at `stop`, or when the kernel connection is gone
        (unmounted)."""
        for parent, ref in batch:
            if self._stopping:
                return
            try:
                self._invalidate(parent, os.fsencode(split(ref)[1]))
            except FileNotFoundError:  # the kernel had dropped it already
                continue
            except OSError as exc:
                log.debug("entry invalidation stopped: %s", exc)
                return

    def sweep(self) -> list[tuple[int, str]]:
        """Past the cap, the entries (parent inode, path) of the longest-known files to
        invalidate, marked as such, so that the nodes left (and those invalidated already,
        whose FORGET has not come yet) are LOW_WATER of the cap."""
        if not self.limit or len(self.inodes) <= self.limit:
            return []
        excess = len(self.inodes) - int(self.limit * LOW_WATER)
        busy = self._open_inos()
        chosen: list[tuple[Node, int]] = []
        for node in self.inodes.oldest_first():
            if len(chosen) >= excess:
                break
            if node.invalidated:  # asked before: its FORGET may still be coming
                excess -= 1
                continue
            if node.is_dir or node.detached or node.lookups <= 0 or node.ns < 0 or node.ino in busy:
                continue
            parent = self._parent_of(node)
            if parent is not None:
                chosen.append((node, parent))
        for node, _ in chosen:
            node.invalidated = True
        self.invalidated += len(chosen)
        if chosen:
            log.debug("%d held inodes, the cap is %d: invalidating %d file entries",
                      len(self.inodes), self.limit, len(chosen))
        return [(parent, node.ref) for node, parent in chosen]
