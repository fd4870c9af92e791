"""A byte-capped in-memory LRU for hot blocks (avoids re-reading disk per FUSE read)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Union

Buffer = Union[bytes, memoryview]


class ByteLRU:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Buffer] = OrderedDict()
        self._size = 0

    def get(self, key: Hashable) -> Buffer | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Buffer) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old)
        if len(value) > self.capacity:
            return
        self._items[key] = value
        self._size += len(value)
        while self._size > self.capacity:
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def discard(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old)

    @property
    def size(self) -> int:
        return self._size
