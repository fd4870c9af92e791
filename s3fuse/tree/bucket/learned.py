"""Changes the mount made to S3 while a listing of their directory was in flight.

Part of listing and revalidation (tree/bucket/listing.py, which owns the one log).

A ListObjectsV2 started before an upload finished does not show the upload; stored as
the directory's listing after the upload recorded its entry, it would hide a file that
is in S3 (or show one just removed) until the next refresh. Uploads record what they
changed here, then write it to the listing store; a listing is stored, under the
store's writer lock, with the changes recorded since it started applied on top. A
change recorded before the lock was taken is in `since`; one recorded after is written
after the listing (the store queues point writes behind the writer in progress). So
neither overwrites the other, and the trio loop, which records, never waits for the
listing's bulk write: the lock here guards the in-memory log for microseconds only.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

from ...model import Entry

log = logging.getLogger(__name__)

KEEP = 10_000  # recent changes kept; a listing older than all of them is stored as stale


class LearnedChanges:
    def __init__(self, keep: int = KEEP):
        self._lock = threading.Lock()  # guards the log; never held during a write
        self._seq = 0
        self._log: deque[tuple[int, str, str, Entry | None]] = deque(maxlen=keep)

    def mark(self) -> int:
        """Where a listing starts: changes after this mark are applied to it."""
        return self._seq

    def record(self, parent: str, name: str, entry: Entry | None, apply: Callable[[], None]) -> None:
        """Remember the change (`entry` None: removed), then `apply` it to the listing store
        (a point write that must not wait for a bulk one). Remembered first: a listing
        stored between the two has it in `since`."""
        with self._lock:
            self._seq += 1
            self._log.append((self._seq, parent, name, entry))
        apply()

    def since(self, mark: int, parent: str) -> dict[str, Entry | None] | None:
        """The changes of `parent` after `mark`; None when some of them were already
        forgotten. Call it holding the listing store's writer lock."""
        with self._lock:
            if self._log and self._log[0][0] > mark + 1:
                return None
            return {name: entry for seq, dir_, name, entry in self._log
                    if seq > mark and dir_ == parent}
