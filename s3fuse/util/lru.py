"""A byte-capped in-memory LRU for hot blocks (avoids re-reading disk per FUSE read).

Blocks fetched ahead of a reader (`put(..., ahead=True)`) are evicted only after every
block already read: at a tight cap, a sequential reader's next blocks must not make room
for the ones it has left behind (they would be fetched twice). An `overhead` charged per
entry keeps a cache of many tiny values (small files) bounded by what it really holds.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Union

Buffer = Union[bytes, memoryview]


class ByteLRU:
    def __init__(self, capacity: int, overhead: int = 0,
                 on_leave: Callable[[Hashable], None] | None = None):
        """`overhead`: bytes charged per entry on top of its value's length (the key,
        the dict slot, the buffer object): what a cache of 4 KiB values really costs.
        `on_leave(key)`: called for every entry that leaves (evicted, discarded, replaced,
        or too big to keep)."""
        self.capacity = capacity
        self.overhead = overhead
        self._on_leave = on_leave
        self._items: OrderedDict[Hashable, Buffer] = OrderedDict()  # read: LRU order
        self._ahead: OrderedDict[Hashable, Buffer] = OrderedDict()  # not read yet: oldest first
        self._size = 0

    def get(self, key: Hashable) -> Buffer | None:
        value = self._ahead.pop(key, None)
        if value is not None:  # read at last: an ordinary entry from now on
            self._items[key] = value
            return value
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Buffer, ahead: bool = False) -> None:
        """Keep `value`; `ahead`: fetched for a reader that has not read it yet."""
        self.discard(key)
        cost = len(value) + self.overhead
        if cost > self.capacity:
            self._left(key)
            return
        (self._ahead if ahead else self._items)[key] = value
        self._size += cost
        while self._size > self.capacity:
            self._evict(self._items or self._ahead)

    def evict_read(self, keep: int = 0) -> bool:
        """Evict the least recently used entry already read (never one fetched ahead and
        not read yet), unless only `keep` are left; False when none was evicted."""
        if len(self._items) <= keep:
            return False
        self._evict(self._items)
        return True

    def _evict(self, entries: OrderedDict[Hashable, Buffer]) -> None:
        key, evicted = entries.popitem(last=False)
        self._size -= len(evicted) + self.overhead
        self._left(key)

    def _left(self, key: Hashable) -> None:
        if self._on_leave is not None:
            self._on_leave(key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items or key in self._ahead

    def discard(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is None:
            old = self._ahead.pop(key, None)
        if old is not None:
            self._size -= len(old) + self.overhead
            self._left(key)

    def __len__(self) -> int:
        return len(self._items) + len(self._ahead)

    @property
    def size(self) -> int:
        return self._size
