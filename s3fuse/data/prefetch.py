"""Read-ahead across files: files of one directory opened in name order.

`cat *`, `sha256sum *`, `tar c dir`, `cp -r` and data loaders open the small
files of a directory one after another in listing order, and each cold open
would wait a full S3 round trip. Once two files of a directory were opened in
ascending name order, the next small files are fetched whole in parallel, so the
following opens find their bytes already cached.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

from ..model import ObjectRef
from .reader import BlockReader

WINDOW = 32
MAX_FILE_SIZE = 1 << 20
TRACKED_DIRS = 256


@dataclass(slots=True)
class _DirState:
    last_name: str
    prefetched_to: str = ""


class SiblingPrefetcher:
    def __init__(self, reader: BlockReader, window: int = WINDOW, max_size: int = MAX_FILE_SIZE):
        self.reader = reader
        self.window = window
        self.max_size = min(max_size, reader.block_size)
        self._dirs: OrderedDict[Hashable, _DirState] = OrderedDict()

    def opened(self, directory: Hashable, name: str,
               upcoming: Callable[[str, int], list[tuple[str, ObjectRef]]]) -> None:
        """`name` in `directory` was opened; `upcoming(after, n)` lists the next files in order."""
        state = self._dirs.get(directory)
        if state is None or name <= state.last_name:
            self._remember(directory, _DirState(name))
            return
        state.last_name = name
        self._dirs.move_to_end(directory)
        start = max(name, state.prefetched_to)
        for next_name, ref in upcoming(start, self.window):
            state.prefetched_to = next_name
            if 0 < ref.size <= self.max_size:
                self.reader.prefetch(ref, 0)

    def _remember(self, directory: Hashable, state: _DirState) -> None:
        self._dirs[directory] = state
        self._dirs.move_to_end(directory)
        while len(self._dirs) > TRACKED_DIRS:
            self._dirs.popitem(last=False)
