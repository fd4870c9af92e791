"""Pages of stored listings kept in memory, so that a warm `ls -R` reads no SQLite row.

Why: a readdir chunk is an indexed range read of `meta.sqlite` on the trio loop, and
turning its rows into Python objects (~2 us a row in the sqlite3 module) and then into
`Entry`s was a quarter of the daemon's CPU for `ls -R` of a listed tree. The pages are
only ever a copy of what is committed: after a write commits, MetaStore drops the pages
of every directory it changed (`invalidate`), or, when it only stored entries under
names the pages already hold, puts those entries in (`patch`); a page read while any write
was committing is not kept (the generation check in `put`), so a page can never outlive
the rows it was read from.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from operator import attrgetter

from ..model import Entry

log = logging.getLogger(__name__)

#: Entries held at most over all pages (~250 B each with their names and ETags: ~2 MiB):
#: the directories of a tree being walked again, or the first pages of a big one.
MAX_ENTRIES = 8192

#: (namespace id, directory path, the name the page starts after, its row limit).
PageKey = tuple[str, str, str, int]
#: The stored entries of a page in name order, and its frontier (None: the listing ends).
Page = tuple[tuple[Entry, ...], "str | None"]


_name = attrgetter("name")


class ListingPages:
    """An LRU of listing pages bounded by their entry count, safe across threads."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._pages: OrderedDict[PageKey, Page] = OrderedDict()
        self._by_dir: dict[tuple[str, str], set[PageKey]] = {}
        self._held = 0
        self._generation = 0

    @property
    def generation(self) -> int:
        """Read before the query whose rows may be `put`: any invalidation since means
        the rows may predate a commit, and they are not kept."""
        return self._generation

    def get(self, key: PageKey) -> Page | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def put(self, key: PageKey, page: Page, generation: int) -> None:
        """Keep `page`, read from the database after `generation` was current, unless a
        write was invalidated since (it may have committed after the read began)."""
        size = max(len(page[0]), 1)
        if size > self.max_entries:
            return
        with self._lock:
            if generation != self._generation or key in self._pages:
                return
            self._pages[key] = page
            self._by_dir.setdefault(key[:2], set()).add(key)
            self._held += size
            while self._held > self.max_entries:
                self._drop(next(iter(self._pages)))

    def invalidate(self, dirs: Iterable[tuple[str, str]]) -> None:
        """Forget the pages of these (namespace id, path) directories: called after the
        writes that touched them committed, before the writer lock is let go."""
        with self._lock:
            self._generation += 1
            for directory in dirs:
                for key in list(self._by_dir.get(directory, ())):
                    self._drop(key)

    def patch(self, changed: dict[tuple[str, str], dict[str, Entry]]) -> None:
        """Put entries that writes stored (name -> the entry as a read gives it back) into
        the pages of their (namespace id, path) directories, called like `invalidate`:
        a page holding the name gets the new entry; a page whose range the name falls in
        but which does not hold it (a new name) goes, with its directory's other pages.
        Why: a `cat` of a listed directory stores every file's POSIX metadata (from its
        HEAD or GET), and dropping the pages for that made the next `ls -R` read and
        decode every row again (2x its readdir time)."""
        with self._lock:
            self._generation += 1
            for directory, entries in changed.items():
                for key in list(self._by_dir.get(directory, ())):
                    patched = _patched(self._pages[key], key[2], entries)
                    if patched is None:
                        for stale in list(self._by_dir.get(directory, ())):
                            self._drop(stale)
                        break
                    self._pages[key] = patched

    def _drop(self, key: PageKey) -> None:
        page = self._pages.pop(key)
        self._held -= max(len(page[0]), 1)
        keys = self._by_dir[key[:2]]
        keys.discard(key)
        if not keys:
            del self._by_dir[key[:2]]

    def __len__(self) -> int:
        return len(self._pages)


def _patched(page: Page, after: str, entries: dict[str, Entry]) -> Page | None:
    """`page` (the entries named after `after`, up to its frontier) with `entries` put in
    by name; None when one of them falls in its range but is not in it (a new name)."""
    stored, frontier = page
    out: list[Entry] | None = None
    for name, entry in entries.items():
        if name <= after or (frontier is not None and name > frontier):
            continue
        # bisect by key, not over a list of the names: a walk's HEAD answers patch the
        # same pages 16 names at a time, and building the list each time was 6% of the
        # daemon's CPU over `ls -l` of 10,000 files
        i = bisect.bisect_left(stored, name, key=_name)
        if i == len(stored) or stored[i].name != name:
            return None
        if out is None:
            out = list(stored)
        out[i] = entry
    return page if out is None else (tuple(out), frontier)
