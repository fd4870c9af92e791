"""Big buffers used again once nothing holds them, instead of fresh memory for each block.

A new buffer's pages are zeroed by the kernel as they are mapped, and in a VM that hands
freed memory back to its host each of them is faulted in from the host too: over a cold
256 MiB read, `clear_page` in the threads filling GET buffers was 16% of the machine's CPU
samples, four times the socket copies themselves. A pool hands out a buffer of the size
asked that no one else references (its reference count says so: a block in an LRU, a
memoryview given to a FUSE reply or a cache write all hold one), else makes one. It keeps
at most `keep` buffers and lets them all go when none was taken for `idle` seconds, so
the daemon's RSS comes back down after a read. Before a pool makes a buffer, every other
pool lets its free ones go: a re-read from the disk cache right after a cold read would
otherwise map its read buffers beside the GET buffers the cold read left free (a peak
RSS of 130 MiB instead of 97).
"""
from __future__ import annotations

import sys
import threading
import time
import weakref
from typing import Callable, Generic, Sized, TypeVar

B = TypeVar("B", bound=Sized)

#: Whether a reference count tells every holder. From Python 3.14 the interpreter may
#: borrow references for values on a frame's stack (its count then undercounts), and a
#: free-threaded build splits counts between threads: a buffer still in use could look
#: free there, so pools only make buffers (as before pools).
COUNTS_ARE_EXACT = sys.version_info < (3, 14) and getattr(sys, "_is_gil_enabled", lambda: True)()


class BufferPool(Generic[B]):
    def __init__(self, make: Callable[[int], B], keep: int, idle: float,
                 clock: Callable[[], float] = time.monotonic):
        self._make = make
        self._keep = keep
        self._idle = idle
        self._clock = clock
        self._buffers: list[B] = []
        self._lock = threading.Lock()
        self._last_taken = clock()
        _POOLS.add(self)

    def take(self, size: int) -> B:
        """A buffer of `size` bytes, its content undefined (a previous user's bytes)."""
        if not COUNTS_ARE_EXACT:
            return self._make(size)
        with self._lock:
            self._last_taken = self._clock()
            for index in range(len(self._buffers)):
                if len(self._buffers[index]) == size and not self._held_elsewhere(index):
                    return self._buffers[index]
        for other in list(_POOLS):
            if other is not self:
                other.release_free()
        buffer = self._make(size)
        with self._lock:
            if len(self._buffers) < self._keep:
                self._buffers.append(buffer)
            else:  # full: a free buffer (of another size) makes room, if there is one
                free = [i for i in range(len(self._buffers)) if not self._held_elsewhere(i)]
                if free:
                    self._buffers[free[0]] = buffer
        return buffer

    def release_free(self) -> int:
        """Let go of the buffers no one else holds; how many."""
        with self._lock:
            held = [i for i in range(len(self._buffers)) if self._held_elsewhere(i)]
            released = len(self._buffers) - len(held)
            self._buffers = [self._buffers[i] for i in held]
            return released

    def _held_elsewhere(self, index: int) -> bool:
        # references: the list's and getrefcount's own argument; any more is a holder
        return sys.getrefcount(self._buffers[index]) > 2

    def trim(self) -> int:
        """Let every buffer go if none was taken for `idle` seconds (those still in use
        live on with their holders); how many the pool let go."""
        with self._lock:
            if self._clock() - self._last_taken < self._idle:
                return 0
            count = len(self._buffers)
            self._buffers = []
            return count

    def __len__(self) -> int:
        return len(self._buffers)


#: Every pool, for `take` to empty the others of their free buffers first.
_POOLS: "weakref.WeakSet[BufferPool]" = weakref.WeakSet()


def trim_all() -> None:
    """`trim` every pool (the daemon's periodic task)."""
    for pool in list(_POOLS):
        pool.trim()
