"""Directory mtime and ctime moved by entries added or removed here, kept in memory.

Part of the bucket namespace (see tree/bucket/__init__.py): POSIX says a directory's
mtime and ctime change when a name in it is made or removed, and tools (make, rsync,
pjdfstest) look. Storing that on the directory's `dir/` marker would cost a server-side
copy per create, so the new times are shown by this mount only, until it is unmounted
(docs/posix.md). An explicit change of the directory's own metadata (chmod, utimens)
supersedes them. Bounded: the least recently changed directories are forgotten first.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict

from ...model import Entry
from ...names import join

log = logging.getLogger(__name__)

#: Directories whose changed times are remembered (the oldest are forgotten beyond).
LIMIT = 10_000


class DirTimes:
    """path -> the time an entry of that directory last changed."""

    def __init__(self, limit: int = LIMIT):
        self._times: OrderedDict[str, int] = OrderedDict()
        self._limit = limit

    def changed(self, *paths: str) -> None:
        """Entries of the directories `paths` were just added or removed."""
        now = time.time_ns()
        for path in paths:
            self._times[path] = now
            self._times.move_to_end(path)
        while len(self._times) > self._limit:
            self._times.popitem(last=False)

    def forget(self, path: str) -> None:
        """The directory `path` is gone, renamed or got metadata of its own."""
        self._times.pop(path, None)

    def shown_in(self, parent: str, entries: list[Entry]) -> list[Entry]:
        """`entries` of directory `parent` as `shown` gives each (a listing's directories
        with their changed times: readdirplus gave the stored ones, and `tar` saw each
        directory it had just stat'ed change while it read it, "file changed as we read
        it", exit 1)."""
        if not self._times:
            return entries
        return [self.shown(join(parent, e.name), e) if e.is_dir else e for e in entries]

    def shown(self, path: str, entry: Entry) -> Entry:
        """`entry` of the directory `path` with its changed mtime and ctime, if any."""
        changed = self._times.get(path)
        if changed is None or not entry.is_dir:
            return entry
        posix = entry.posix
        if posix is not None:  # unknown stays unknown: the reads may still look it up
            posix = posix.replace(mtime_ns=changed, ctime_ns=changed)
        return dataclasses.replace(entry, mtime_ns=changed, posix=posix)
