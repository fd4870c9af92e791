"""Buffers for GET bodies, with their pages faulted in by one system call.

A block's GET body is read into a new 8 MiB bytearray. `bytearray(n)` zero-fills it,
which faults its 2,048 pages in one at a time (the daemon maps buffers of 2 MiB and more
afresh: daemon.tune_malloc): that cost as much CPU time as the socket reads that
fill it (py-spy of a cold 256 MiB read). A bytearray made without zero-filling, then
`madvise(MADV_POPULATE_WRITE)` (Linux 5.14), maps the same pages in one call, at half the
cost. Its bytes are undefined until written: only for a buffer that is filled whole or
thrown away (presigned.PresignedReader._body_into). Its 2 MiB-aligned part is asked for in
transparent huge pages first (MADV_HUGEPAGE, where THP is "madvise" or "always"): mapping
an 8 MiB buffer then cost 0.48 ms of CPU instead of 0.93 ms (the daemon's mmap threshold).
Better still, a buffer nothing holds any more is handed out again (POOL): no pages to zero
and map at all.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
from typing import Any, Callable

from ..util.bufferpool import BufferPool

log = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23  # linux/mman.h
MADV_HUGEPAGE = 14
HUGE_PAGE = 2 << 20
#: Below this, a buffer is an ordinary bytearray (served from the heap: no fresh pages).
MIN_SIZE = 2 << 20
#: Big buffers are used again once nothing holds them (util/bufferpool.py): a cold
#: sequential read has 9 blocks alive at most (PENDING_WRITES fetched or being written, the
#: rest of the read-ahead window in memory), one more for another reader.
POOL_KEEP = 10
#: ...and let go after this long without a buffer taken (then the daemon's RSS goes down).
POOL_IDLE = 5.0


def _bind() -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
    """(PyByteArray_FromStringAndSize, madvise), or (None, None) without glibc."""
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        log.debug("madvise not available: GET buffers are zero-filled")
        return None, None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]
    return make, madvise


_make, _madvise = _bind()


def body_buffer(size: int) -> bytearray:
    """A bytearray of `size` bytes, to be overwritten whole before any byte is read."""
    if _make is None or _madvise is None or size < MIN_SIZE:
        return bytearray(size)
    return POOL.take(size)


def _new_buffer(size: int) -> bytearray:
    assert _make is not None and _madvise is not None
    buffer: bytearray = _make(None, size)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    start = -(-address // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (address + size) // mmap.PAGESIZE * mmap.PAGESIZE
    huge_start = -(-address // HUGE_PAGE) * HUGE_PAGE
    huge_end = (address + size) // HUGE_PAGE * HUGE_PAGE
    if huge_end > huge_start:  # a failure (THP off) leaves small pages
        _madvise(huge_start, huge_end - huge_start, MADV_HUGEPAGE)
    # a failure (a kernel before 5.14: EINVAL) only leaves the pages to be faulted in by
    # the socket reads instead
    _madvise(start, end - start, MADV_POPULATE_WRITE)
    return buffer


POOL: BufferPool[bytearray] = BufferPool(_new_buffer, POOL_KEEP, POOL_IDLE)
