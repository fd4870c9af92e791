"""readdir of a bucket directory, paged from the stored listing: no snapshot per opendir.

One job of the bucket namespace (see tree/bucket/__init__.py for the split): serve an
open directory one chunk of the stored listing at a time, with local changes laid over
each chunk. A snapshot taken at opendir cost ~460 bytes per entry, so a user opening a
1M-key directory a hundred times held tens of GB; an open directory now holds one
chunk and a name every CHECKPOINT entries.

Order and offsets: entries come in name order and the stream resumes after the name of
the offset the kernel hands back, so an entry that exists from opendir to the end is
returned exactly once whatever is added or removed meanwhile (POSIX leaves those
unspecified: a name added past the cursor shows, one added before it does not). The
kernel resumes at an offset of the chunk just served (or the one before it); an older
offset (seekdir to a telldir value) resumes from the nearest checkpoint, counting stored
entries from there: exact unless this mount changed the directory meanwhile.
"""
from __future__ import annotations

import logging

import trio

from ...model import Entry
from ...names import join
from .dirtimes import DirTimes
from .listing import LIST_AHEAD, SMALL_LISTING, Listings
from .pending import PendingView

log = logging.getLogger(__name__)

#: Entries read from the store at once (an indexed range read, on the loop: Listings.window).
CHUNK = SMALL_LISTING
#: Every this many offsets, the name there is kept for a seekdir back to it.
CHECKPOINT = 1024


class PagedDir:
    """An open bucket directory: chunks of (offset, entry) read as readdir asks."""

    def __init__(self, path: str, listings: Listings, pending: PendingView, dirs: DirTimes):
        self._path = path
        self._listings = listings
        self._pending = pending
        self._dirs = dirs
        self._start = 0                       # the offset before the chunk's first entry
        self._chunk: list[Entry] = []         # entries at offsets _start+1, _start+2, ...
        self._last = True                     # the chunk ends the listing
        self._checkpoints: dict[int, str] = {}
        self._ahead = LIST_AHEAD              # subdirectories still to list ahead

    async def page(self, start: int, limit: int,
                   attrs: bool = True) -> list[tuple[int, str, Entry]]:
        if start and self._start <= start <= self._start + len(self._chunk):
            if start < self._start + len(self._chunk):
                return self._served(start, limit)
            if self._last:
                return []
            await self._read(start, self._chunk[-1].name)
        else:
            after = await self._name_at(start)
            if after is None:
                return []
            await self._read(start, after)
        return self._served(start, limit)

    def _served(self, start: int, limit: int) -> list[tuple[int, str, Entry]]:
        skip = start - self._start
        return [(self._start + skip + i + 1, join(self._path, e.name), e)
                for i, e in enumerate(self._chunk[skip:skip + limit])]

    async def _name_at(self, offset: int) -> str | None:
        """The name at `offset` ('' for 0, before the first; None: past the end)."""
        if offset == 0:
            return ""
        if offset in self._checkpoints:
            return self._checkpoints[offset]
        mark = max((o for o in self._checkpoints if o < offset), default=0)
        return await self._listings.name_after(self._path, self._checkpoints.get(mark, ""),
                                               offset - mark)

    async def _read(self, start: int, after: str) -> None:
        """The chunk after the name `after`, at offsets from start + 1: local changes laid
        over it, at most CHUNK entries (a chunk emptied by removals reads on)."""
        while True:
            entries, frontier = self._listings.window(self._path, after, CHUNK)
            merged = self._dirs.shown_in(self._path, self._pending.merge(self._path, entries))
            chunk = [e for e in merged if e.name > after and (frontier is None or e.name <= frontier)]
            if len(chunk) > CHUNK:  # many local additions: the rest is the next chunk's
                chunk, frontier = chunk[:CHUNK], chunk[CHUNK - 1].name
            if chunk or frontier is None:
                break
            after = frontier
            await trio.lowlevel.checkpoint()  # removals emptied many: let others in between
        self._start, self._chunk, self._last = start, chunk, frontier is None
        for i, entry in enumerate(chunk, start + 1):
            if i % CHECKPOINT == 0:
                self._checkpoints[i] = entry.name
        if self._ahead > 0:
            subdirs = [e.name for e in chunk if e.is_dir][:self._ahead]
            self._ahead -= len(subdirs)
            self._listings.list_ahead(self._path, subdirs)
