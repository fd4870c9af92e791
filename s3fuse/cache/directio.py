"""Whole block files read and written past the page cache (O_DIRECT), buffered where the
file system refuses it (FUSE mounts, tmpfs before Linux 6.6).

A block cache file is written once, read back whole, and served through FUSE, whose
file the kernel keeps in the page cache anyway. Buffered, every 8 MiB block cost
page-cache pages filled and copied (and written back later by the kernel), plus a fresh
buffer's 2,048 page faults on every read: most of the daemon's CPU time for a read from
the disk cache, a third of it for a cold read on a 2-core machine where S3 (SeaweedFS)
competes for the same cores. Blocking: call from worker threads.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading
from typing import Iterable

log = logging.getLogger(__name__)

#: O_DIRECT wants whole sectors from and into sector-aligned memory (mmap's is page-aligned).
ALIGN = 4096
#: Bytes per O_DIRECT write, through an aligned buffer taken from a pool (kept: a buffer
#: mapped anew per write took a page fault per 4 KiB again). The pool holds as many as
#: were ever in use at once: the block cache's writers (2) and a pin now and then.
WRITE_CHUNK = 1 << 20
_MAP = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
_pool: list[memoryview] = []
_pool_lock = threading.Lock()


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


def write_file(path: str, parts: Iterable[memoryview | bytes]) -> int:
    """Write the concatenation of `parts` to the new file `path` (FileExistsError if it
    exists), past the page cache where the file system allows it; its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        if set_direct(fd, True):
            buffer = _take()
            try:
                return _write_direct(fd, parts, buffer)
            finally:
                with _pool_lock:
                    _pool.append(buffer)
        offset = 0
        for part in parts:
            offset += _pwrite_all(fd, memoryview(part), offset)
        return offset
    finally:
        os.close(fd)


def _write_direct(fd: int, parts: Iterable[memoryview | bytes], buffer: memoryview) -> int:
    """`write_file` on an O_DIRECT `fd`: the bytes go through the aligned `buffer`
    (WRITE_CHUNK bytes) a buffer at a time; the last write is padded to a whole sector and
    the file cut back to its size."""
    filled = offset = 0
    for part in parts:
        view = memoryview(part)
        while len(view):
            n = min(len(view), WRITE_CHUNK - filled)
            buffer[filled:filled + n] = view[:n]
            filled, view = filled + n, view[n:]
            if filled == WRITE_CHUNK:
                offset += _pwrite_all(fd, buffer, offset)
                filled = 0
    if filled:
        _pwrite_all(fd, buffer[:_aligned(filled)], offset)
        offset += filled
        os.ftruncate(fd, offset)
    return offset


def _pwrite_all(fd: int, data: memoryview, offset: int) -> int:
    """Write all of `data` at `offset`; an O_DIRECT write refused (EINVAL) goes buffered."""
    done = 0
    while done < len(data):
        try:
            done += os.pwrite(fd, data[done:], offset + done)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not os.O_DIRECT & fcntl.fcntl(fd, fcntl.F_GETFL):
                raise
            set_direct(fd, False)
    return done


def _take() -> memoryview:
    """An aligned buffer of WRITE_CHUNK bytes from the pool (a new one if all are in use)."""
    with _pool_lock:
        if _pool:
            return _pool.pop()
    return memoryview(mmap.mmap(-1, WRITE_CHUNK, flags=_MAP))


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
