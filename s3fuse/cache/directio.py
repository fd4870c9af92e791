"""Whole block files read past the page cache (O_DIRECT), buffered where the file system
refuses it (FUSE mounts, tmpfs before Linux 6.6).

A block cache file is read back whole and served through FUSE, whose file the kernel
keeps in the page cache anyway. Buffered, every 8 MiB block read cost page-cache pages
filled and copied out, plus a fresh buffer's 2,048 page faults: 60% of the daemon's CPU
time for a read from the disk cache (365 -> 210 ms for 256 MiB). Blocking: call from
worker threads.

Writes stay buffered: O_DIRECT ones saved 50 ms of CPU per 256 MiB cold read, but each
waits for the disk, so fetched blocks waited longer to be written and the daemon's peak
RSS rose by one block (94 -> 103 MiB).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os

log = logging.getLogger(__name__)

#: O_DIRECT wants whole sectors into sector-aligned memory (mmap's is page-aligned).
ALIGN = 4096
_MAP = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)


def read_file(fd: int) -> memoryview:
    """All bytes of the open file `fd`, read into one pre-faulted anonymous buffer, past
    the page cache where the file system allows it."""
    size = os.fstat(fd).st_size
    view = memoryview(mmap.mmap(-1, max(_aligned(size), ALIGN), flags=_MAP))
    direct = set_direct(fd, True)
    got = 0
    while got < size:
        try:
            n = os.preadv(fd, [view[got:]], got)
        except OSError as exc:  # EINVAL: O_DIRECT refused after all (an unaligned short read)
            if not direct or exc.errno != errno.EINVAL:
                raise
            direct = set_direct(fd, False)
            continue
        if not n:
            break
        got += n
    return view[:got]


def set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; whether it is on now (some file systems refuse it)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return on


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN
