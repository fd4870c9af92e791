"""Read-ahead across files: files of one directory opened in name order.

`cat *`, `sha256sum *`, `tar c dir`, `cp -r` and data loaders open the files of
a directory one after another in listing order, and each cold open would wait a
full S3 round trip. Once a file of a directory was opened and then one of the next
NEXT_FILES after it, the next files of one block or less are fetched whole in
parallel, so the following opens find their bytes already cached. Merely ascending
is not enough: a sampler's shuffled order is ascending every other open, and each
would have fetched a window of files nobody reads.

The files asked for stay at most WINDOW names and AHEAD_BYTES ahead of the reader:
a reader that stops (`head`, Ctrl-C, a data loader's epoch end) leaves at most that
much fetched for nothing, however large the directory, and a directory of images or
clips of a few MiB holds a few files ahead, not 32 blocks. Small files are asked for
again once half the window was opened (the stored listing is queried once per
WINDOW / 2 opens, not at each); bigger ones as soon as there is room for one more,
so that as many stay in flight as the bytes allow.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Hashable

from ..model import ObjectRef
from .reader import BlockReader

WINDOW = 32
#: Bytes of files asked for ahead of the reader (two 8 MiB blocks: what the read-ahead of
#: one big file holds beyond the block being read, less one).
AHEAD_BYTES = 16 << 20
#: A second open starts a run when it is one of the next NEXT_FILES files after the first
#: (a reader may skip a few: `cat *.jpg` in a directory of .jpg and .txt files).
NEXT_FILES = 4
TRACKED_DIRS = 256

#: `upcoming(after, n)`: the next at most `n` files after name `after`, in name order, each
#: with the object to fetch, or None when something else brings its bytes anyway.
Upcoming = Callable[[str, int], list[tuple[str, ObjectRef | None]]]


@dataclass(slots=True)
class _DirState:
    last_name: str
    ahead: deque[tuple[str, int]] = field(default_factory=deque)  # (name, size) asked for
    ahead_bytes: int = 0
    asked_to: str = ""  # the last name asked for ('': no run yet)
    ended: bool = False  # the stored listing had no more files after asked_to (then)


class SiblingPrefetcher:
    def __init__(self, reader: BlockReader, window: int = WINDOW,
                 ahead_bytes: int = AHEAD_BYTES):
        self.reader = reader
        self.window = window
        self.ahead_bytes = ahead_bytes
        self.max_size = min(ahead_bytes, reader.block_size)  # fetched whole, in one GET
        self._dirs: OrderedDict[Hashable, _DirState] = OrderedDict()

    def opened(self, directory: Hashable, name: str, upcoming: Upcoming) -> None:
        """`name` in `directory` was opened: keep the files after it asked for."""
        state = self._dirs.get(directory)
        if state is None or name <= state.last_name or not self._in_run(state, name, upcoming):
            self._remember(directory, _DirState(name))
            return
        state.last_name = name
        self._dirs.move_to_end(directory)
        ahead = state.ahead
        while ahead and ahead[0][0] <= name:
            state.ahead_bytes -= ahead.popleft()[1]
        last_size = ahead[-1][1] if ahead else 0
        if (len(ahead) > self.window // 2  # small files: ask again once half were opened
                or state.ahead_bytes + last_size > self.ahead_bytes  # no room for one more
                or (state.ended and ahead)):  # all the listing had: until the reader is there
            return
        wanted = self.window - len(ahead)
        found = upcoming(max(name, state.asked_to), wanted)
        state.ended = len(found) < wanted
        for next_name, ref in found:
            if ref is not None and not 0 < ref.size <= self.max_size:
                ref = None  # empty, or more than a block: its own read-ahead serves it
            size = 0 if ref is None else ref.size
            if ahead and state.ahead_bytes + size > self.ahead_bytes:
                state.ended = False  # stopped short: the rest is asked for later
                break
            state.asked_to = next_name
            ahead.append((next_name, size))
            state.ahead_bytes += size
            if ref is not None:
                self.reader.prefetch(ref, 0)

    @staticmethod
    def _in_run(state: _DirState, name: str, upcoming: Upcoming) -> bool:
        """Is `name` (after the last one opened) where a reader going through the
        directory in order would be? Within what was asked for, or among the next few."""
        if name <= state.asked_to:  # '' before a run: never
            return True
        return any(found == name for found, _ in upcoming(state.last_name, NEXT_FILES))

    def _remember(self, directory: Hashable, state: _DirState) -> None:
        self._dirs[directory] = state
        self._dirs.move_to_end(directory)
        while len(self._dirs) > TRACKED_DIRS:
            self._dirs.popitem(last=False)
