"""Renames in flight, so that an open racing one opens the file its inode is.

Nodes are named by path (fs/inodes.py): a rename over `f` detaches the node of the file
that was `f` only once the namespace has moved the bytes, which takes awaits (a local
move, an S3 copy). An open of that node arriving meanwhile (a reader that looked `f` up
just before an editor's or pip's write-then-rename) opened whatever `f` held by then,
half-moved, through the old inode's page cache: the new file cut at the old size, or
changing under `fstat`. Such an open now waits for the rename to finish and, when its
node has lost the name (meanwhile, or between the kernel's path walk and its open
request), opens the file now at that name past the page cache (as if it had been opened
just after the rename): one whole version, never a blend.

Such an open is answered `ESTALE` first: the kernel then looks the path up again, past
its dentry cache, and opens the new file's own inode, through its page cache. Opened past
the page cache, the file could not be mapped shared: `np.load(mmap_mode='r')` beside an
atomic save failed with ENODEV, a third of the opens. Under back-to-back renames (a
writer saving in a loop) the kernel's one retry can meet another rename: that retry
(`StaleOpens`: the same process, the same path, within RETRY_WINDOW) is opened past the
page cache, so the reader never gets the error (ESTALE alone was tried once, and was
dropped for that).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from typing import TypeVar

import trio

from ..errors import NotFound


#: Paths whose last rename is remembered for `moved_since` (the oldest half goes past it).
REMEMBERED = 4096
#: Lookups and stats asked again at most this often when renames of their path keep
#: running under them; then the last answer stands.
RETRIES = 4

#: How long after an open answered ESTALE another open of its path by the same process
#: counts as the kernel's retry of it (the retry follows at once).
RETRY_WINDOW = 1.0
#: Opens answered ESTALE remembered at most (the oldest go first).
STALE_OPENS = 1024

T = TypeVar("T")


class StaleOpens:
    """Opens answered ESTALE lately, by (process, namespace, path): the kernel retries
    such an open once, and that retry must not get the error again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._answered: dict[tuple[int, int, Hashable], float] = {}

    def first(self, pid: int, ns: int, ref: Hashable) -> bool:
        """Is this open of `ref` by `pid` a first try (then remembered), not the kernel's
        retry of one just answered ESTALE?"""
        now = self._clock()
        key = (pid, ns, ref)
        when = self._answered.pop(key, None)
        if when is not None and now - when <= RETRY_WINDOW:
            return False
        self._answered[key] = now
        while len(self._answered) > STALE_OPENS:
            del self._answered[next(iter(self._answered))]
        return True

    def opened(self, pid: int, ns: int, ref: Hashable) -> None:
        """An open of `ref` by `pid` reached a live inode (a retry found the new file):
        its next open that meets a rename is a first try again."""
        if self._answered:
            self._answered.pop((pid, ns, ref), None)


class RenamesInFlight:
    """Renames in flight, and which paths a rename ended on lately: a lookup or stat that
    awaited across a rename of its path may hold the other file's attributes, for the
    inode now at that name (a reader then read the new file cut at the old size)."""

    def __init__(self) -> None:
        self._paths: dict[tuple[int, Hashable], trio.Event] = {}
        self._seq = 0  # renames finished
        self._ended: dict[tuple[int, Hashable], int] = {}  # path -> _seq after its last rename

    def moved_since(self, ns: int, ref: Hashable, mark: int) -> bool:
        """Did a rename of `ref` run since `mark` (or is one running)?"""
        key = (ns, ref)
        return key in self._paths or self._ended.get(key, -1) > mark

    @contextlib.contextmanager
    def during(self, ns: int, refs: Iterable[Hashable]) -> Iterator[None]:
        """Mark `refs` of namespace `ns` (a rename's source and target) for its length."""
        done = trio.Event()
        keys = [(ns, ref) for ref in refs]
        for key in keys:
            self._paths[key] = done
        try:
            yield
        finally:
            self._seq += 1
            for key in keys:
                if self._paths.get(key) is done:
                    del self._paths[key]
                self._ended.pop(key, None)
                self._ended[key] = self._seq
            if len(self._ended) > REMEMBERED:
                for old in list(self._ended)[:REMEMBERED // 2]:
                    del self._ended[old]
            done.set()

    async def answer(self, ns: int, ref: Callable[[], Hashable], ask: Callable[[], Awaitable[T]],
                     retries: int = RETRIES) -> T:
        """`ask()` about the path `ref()` (read at each try: a rename may move a node),
        asked again, up to `retries` times, when a rename of that path ran meanwhile (its
        answer may be the other file's); a NotFound too. Renames in flight are waited for
        first."""
        while True:
            mark, path = self._seq, ref()
            await self.settled(ns, path)
            try:
                answer = await ask()
            except NotFound:
                if not retries or not self.moved_since(ns, path, mark):
                    raise
            else:
                if not retries or not self.moved_since(ns, path, mark):
                    return answer
            retries -= 1

    async def settled(self, ns: int, ref: Hashable) -> None:
        """Until no rename of `ref` is in flight (at once when none is)."""
        while (done := self._paths.get((ns, ref))) is not None:
            await done.wait()
