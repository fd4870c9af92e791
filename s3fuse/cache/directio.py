"""Whole block files read past the page cache (O_DIRECT), buffered where the file system
refuses it (FUSE mounts, tmpfs before Linux 6.6).

A block cache file is read back whole and served through FUSE, whose file the kernel
keeps in the page cache anyway. Buffered, every 8 MiB block read cost page-cache pages
filled and copied out, plus a fresh buffer's 2,048 page faults: 60% of the daemon's CPU
time for a read from the disk cache (365 -> 210 ms for 256 MiB). Blocking: call from
worker threads.

Big blocks are written past the page cache too (`write_new`), from the GET buffer itself:
a buffered write copied each into page-cache pages (the cache writer's thread was 18% of
the machine's CPU samples over a cold 256 MiB read, 11% that copy alone) and the kernel
wrote them back later, on the same two cores as the reader. O_DIRECT wants file offsets,
lengths and memory aligned alike, so the block's file puts its data at an offset congruent
to the buffer's address (`data_offset`); only the first and last few KiB are copied into
aligned memory. (An earlier try copied whole blocks into aligned buffers: one more block of
RSS, 94 -> 103 MiB.)
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os

from ..util.bufferpool import BufferPool

log = logging.getLogger(__name__)

#: O_DIRECT wants whole sectors into sector-aligned memory (mmap's is page-aligned).
ALIGN = 4096
#: Smaller blocks are written buffered: the copies at both ends would be most of one.
DIRECT_WRITE_MIN = 1 << 20
_MAP = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)


def read_file(fd: int) -> memoryview:
    """All bytes of the open file `fd`, read into one pre-faulted anonymous buffer (one no
    longer used, from READ_POOL, when there is one), past the page cache where the file
    system allows it."""
    size = os.fstat(fd).st_size
    view = memoryview(READ_POOL.take(max(_aligned(size), ALIGN)))
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


def _new_map(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=_MAP)


#: Read buffers are used again once nothing holds them (util/bufferpool.py): a re-read
#: from the disk cache keeps 4 blocks at most alive (the window of DISK_READAHEAD_BLOCKS).
READ_POOL: BufferPool[mmap.mmap] = BufferPool(_new_map, keep=6, idle=5.0)


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


def data_offset(head_size: int, data: bytes | bytearray | memoryview) -> int:
    """Where `data` goes in its file after a header of `head_size` bytes: for a big writable
    buffer, the first offset at which file and memory are aligned alike (so `write_new` can
    send it past the page cache), else right after the header."""
    where = _address(data) if len(data) >= DIRECT_WRITE_MIN else None
    return head_size if where is None else head_size + (where - head_size) % ALIGN


def write_new(fd: int, head: bytes, data: bytes | bytearray | memoryview) -> int:
    """Write `head` then `data` into the new, empty file `fd`; its size. With `head` as
    long as `data_offset` says, all but the first and last few KiB of `data` go past the
    page cache; otherwise (or where the file system refuses O_DIRECT) buffered."""
    view = memoryview(data).cast("B")
    total = len(head) + len(view)
    where = _address(view) if len(view) >= DIRECT_WRITE_MIN else None
    if where is not None and (where - len(head)) % ALIGN == 0 and set_direct(fd, True):
        try:
            if _write_direct(fd, head, view, where):
                return total
        except OSError as exc:  # EINVAL: an alignment this device does not take after all
            if exc.errno != errno.EINVAL:
                raise
        set_direct(fd, False)
    _write_all(fd, [memoryview(head), view])
    os.ftruncate(fd, total)  # after a short direct write that left a padded tail
    return total


def _write_direct(fd: int, head: bytes, view: memoryview, where: int) -> bool:
    """One O_DIRECT write: head and the unaligned start of `view` copied into one aligned
    buffer, its aligned middle as it is, its unaligned end copied and padded (then cut
    off by ftruncate). False when the write came back short."""
    lead = (-where) % ALIGN
    middle = (len(view) - lead) // ALIGN * ALIGN
    end = view[lead + middle:]
    first, last = _aligned_copy(head, view[:lead]), _aligned_copy(end)
    parts = [first, view[lead:lead + middle], last]
    if os.pwritev(fd, parts, 0) != sum(len(part) for part in parts):
        return False
    if len(last) != len(end):
        os.ftruncate(fd, len(head) + len(view))
    return True


def _aligned_copy(*parts: bytes | memoryview) -> memoryview:
    """`parts` one after another in page-aligned memory, zero-padded to a whole ALIGN."""
    size = sum(len(part) for part in parts)
    if not size:
        return memoryview(b"")
    buffer = memoryview(mmap.mmap(-1, _aligned(size)))
    at = 0
    for part in parts:
        buffer[at:at + len(part)] = part
        at += len(part)
    return buffer


def _write_all(fd: int, parts: list[memoryview]) -> None:
    """pwritev `parts` from offset 0 until every byte is written."""
    at = 0
    while parts:
        n = os.pwritev(fd, parts, at)
        if not n:
            raise OSError(errno.EIO, "a write to the cache wrote nothing")
        at += n
        while parts and n >= len(parts[0]):
            n -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][n:]


def _address(data: bytes | bytearray | memoryview) -> int | None:
    """Where a writable buffer's bytes are in memory; None for a read-only or empty one."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(data))
    except (TypeError, ValueError):
        return None
