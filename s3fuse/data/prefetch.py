"""Read-ahead across files: files of one directory opened in name order.

`cat *`, `sha256sum *`, `tar c dir`, `cp -r` and data loaders open the small
files of a directory one after another in listing order, and each cold open
would wait a full S3 round trip. Once two files of a directory were opened in
ascending name order, the next small files are fetched whole in parallel, so the
following opens find their bytes already cached.

The files asked for stay at most WINDOW names ahead of the reader: a reader that
stops (`head`, Ctrl-C, a data loader's epoch end) leaves at most that many fetches
behind it, however large the directory. The window is topped up once half of it
was opened, so the stored listing is asked once per WINDOW / 2 opens, not at each.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Hashable

from ..model import ObjectRef
from .reader import BlockReader

WINDOW = 32
MAX_FILE_SIZE = 1 << 20
TRACKED_DIRS = 256

#: `upcoming(after, n)`: the next at most `n` files after name `after`, in name order, each
#: with the object to fetch, or None when something else brings its bytes anyway.
Upcoming = Callable[[str, int], list[tuple[str, ObjectRef | None]]]


@dataclass(slots=True)
class _DirState:
    last_name: str
    ahead: deque[str] = field(default_factory=deque)  # names asked for, past last_name
    asked_to: str = ""  # the last name asked for
    ended: bool = False  # the stored listing had no more files after asked_to (then)


class SiblingPrefetcher:
    def __init__(self, reader: BlockReader, window: int = WINDOW, max_size: int = MAX_FILE_SIZE):
        self.reader = reader
        self.window = window
        self.max_size = min(max_size, reader.block_size)
        self._dirs: OrderedDict[Hashable, _DirState] = OrderedDict()

    def opened(self, directory: Hashable, name: str, upcoming: Upcoming) -> None:
        """`name` in `directory` was opened: keep the files after it asked for."""
        state = self._dirs.get(directory)
        if state is None or name <= state.last_name:
            self._remember(directory, _DirState(name))
            return
        state.last_name = name
        self._dirs.move_to_end(directory)
        ahead = state.ahead
        while ahead and ahead[0] <= name:
            ahead.popleft()
        if len(ahead) > self.window // 2 or (state.ended and ahead):
            return  # enough asked for; or all the listing had, until the reader is there
        wanted = self.window - len(ahead)
        found = upcoming(max(name, state.asked_to), wanted)
        state.ended = len(found) < wanted
        for next_name, ref in found:
            state.asked_to = next_name
            ahead.append(next_name)
            if ref is not None and 0 < ref.size <= self.max_size:
                self.reader.prefetch(ref, 0)

    def _remember(self, directory: Hashable, state: _DirState) -> None:
        self._dirs[directory] = state
        self._dirs.move_to_end(directory)
        while len(self._dirs) > TRACKED_DIRS:
            self._dirs.popitem(last=False)
