"""The pool of big buffers: one is handed out again only once nothing else holds it."""
from __future__ import annotations

import mmap
from typing import Callable

from s3fuse.cache import directio
from s3fuse.store import buffers
from s3fuse.util.bufferpool import BufferPool


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counting_maker() -> tuple[list[int], Callable[[int], bytearray]]:
    """A `make` for a pool, and the sizes it was asked for."""
    made: list[int] = []

    def make(size: int) -> bytearray:
        made.append(size)
        return bytearray(size)
    return made, make


def test_a_buffer_is_reused_once_its_last_holder_lets_go():
    made, make = counting_maker()
    pool = BufferPool(make, keep=4, idle=5.0)
    first = pool.take(100)
    view = memoryview(first)[10:20]  # a slice given to a FUSE reply, a block in an LRU
    del first
    second = pool.take(100)
    assert made == [100, 100]  # the first is still held through the view
    view.release()
    assert pool.take(100) is not second and made == [100, 100]  # the first again
    assert pool.take(200) is not None and made == [100, 100, 200]  # another size: a new one


def test_the_pool_keeps_at_most_keep_and_lets_go_when_idle():
    clock = Clock()
    pool = BufferPool(bytearray, keep=2, idle=5.0, clock=clock)
    held = [pool.take(10) for _ in range(3)]
    assert len(pool) == 2
    del held
    assert pool.take(10) is not None and len(pool) == 2
    big = pool.take(50)  # full, a free buffer of another size makes room
    assert len(pool) == 2 and any(len(b) == 50 for b in pool._buffers)
    clock.now = 4.0
    assert pool.trim() == 0 and len(pool) == 2  # a buffer was taken 4 s ago
    clock.now = 9.5
    assert pool.trim() == 2 and len(pool) == 0
    assert len(big) == 50  # a buffer in use lives on with its holder


def test_get_buffers_and_disk_read_buffers_come_from_their_pools():
    """GET bodies (store/buffers.py) and blocks read back from the disk cache (directio.py)
    reuse buffers nothing holds any more: no fresh pages to zero and map."""
    size = buffers.MIN_SIZE + 4096
    body = buffers.body_buffer(size)
    address = id(body)
    del body
    assert id(buffers.body_buffer(size)) == address
    mapped = directio.READ_POOL.take(1 << 20)
    assert isinstance(mapped, mmap.mmap)
    address = id(mapped)
    del mapped
    assert id(directio.READ_POOL.take(1 << 20)) == address


def test_a_pool_making_a_buffer_empties_the_others_of_free_ones_first():
    """A disk-cache re-read right after a cold read: the read buffers are not mapped beside
    the GET buffers the cold read left free (the peak RSS stays where it was)."""
    gets = BufferPool(bytearray, keep=4, idle=5.0)
    reads = BufferPool(bytearray, keep=4, idle=5.0)
    held = gets.take(10)
    freed = gets.take(10)
    del freed
    assert len(gets) == 2
    reads.take(20)
    assert len(gets) == 1 and gets.take(10) is not held
    assert len(held) == 10


def test_where_reference_counts_may_undercount_every_buffer_is_new(monkeypatch):
    """Python 3.14+ and free-threaded builds: a count cannot prove a buffer free."""
    from s3fuse.util import bufferpool
    monkeypatch.setattr(bufferpool, "COUNTS_ARE_EXACT", False)
    made, make = counting_maker()
    pool = BufferPool(make, keep=4, idle=5.0)
    first = pool.take(10)
    del first
    pool.take(10)
    assert made == [10, 10] and len(pool) == 0
