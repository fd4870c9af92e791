"""Changes the mount made to S3 while a listing of their directory was in flight.

A ListObjectsV2 started before an upload finished does not show the upload; stored as
the directory's listing after the upload recorded its entry, it would hide a file that
is in S3 (or show one just removed) until the next refresh. Uploads record what they
changed here, and a listing is stored with the changes recorded since it started
applied on top, under one lock, so neither can overwrite the other.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from ..model import Entry

KEEP = 10_000  # recent changes kept; a listing older than all of them is stored as stale


class LearnedChanges:
    def __init__(self, keep: int = KEEP):
        self.lock = threading.Lock()  # held while recording, and while storing a listing
        self._seq = 0
        self._log: deque[tuple[int, str, str, Entry | None]] = deque(maxlen=keep)

    def mark(self) -> int:
        """Where a listing starts: changes after this mark are applied to it."""
        return self._seq

    def record(self, parent: str, name: str, entry: Entry | None, apply: Callable[[], None]) -> None:
        """`apply` the change to the listing store, and remember it (`entry` None: removed)."""
        with self.lock:
            apply()
            self._seq += 1
            self._log.append((self._seq, parent, name, entry))

    def since(self, mark: int, parent: str) -> dict[str, Entry | None] | None:
        """The changes of `parent` after `mark` (call with `lock` held); None when some of
        them were already forgotten."""
        if self._log and self._log[0][0] > mark + 1:
            return None
        return {name: entry for seq, dir_, name, entry in self._log if seq > mark and dir_ == parent}


def apply_changes(entries: list[Entry], changes: dict[str, Entry | None]) -> list[Entry]:
    """A listing with later changes applied (an entry replaces, None removes)."""
    if not changes:
        return entries
    by_name = {e.name: e for e in entries}
    for name, entry in changes.items():
        if entry is None:
            by_name.pop(name, None)
        else:
            by_name[name] = entry
    return sorted(by_name.values(), key=lambda e: e.name)
