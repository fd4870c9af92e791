"""The free-space reserve of the cache disk: what blocks, pins and staging never take.

One job: answer "may the cache write n more bytes?" so that pins, staging files and
cached blocks together never fill the file system the cache lives on (by default
/var for root: a full /var stops logging, package updates and other services). The
space counted is what an unprivileged user may still allocate (statvfs f_bavail), so
the file system's own root reserve is kept as well, even when the daemon runs as root.

Checks are cheap: statvfs is asked again once a second, or sooner when the bytes
granted since the last answer would reach the reserve. All methods may block (a
statvfs): call them where the write they guard runs, in a worker thread.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: The default reserve: 5% of the file system, at most 1 GiB (a small disk stays usable,
#: a big one keeps room for everything else on it).
DEFAULT_FRACTION = 0.05
DEFAULT_CAP = 1 << 30
#: Seconds a statvfs answer is trusted (others write to the same disk).
REFRESH = 1.0


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged user may still allocate on the disk of `directory`."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def default_reserve(total: int) -> int:
    return min(DEFAULT_CAP, int(total * DEFAULT_FRACTION))


class ReserveReached(OSError):
    """A cache write would eat into the reserve: ENOSPC, as if the disk were full."""

    def __init__(self, reserve: int, directory: Path):
        super().__init__(errno.ENOSPC, f"the cache disk of {directory} is down to its reserve "
                                       f"of {reserve / (1 << 20):.0f} MiB (cache_reserve)")


class DiskReserve:
    """The reserve of the file system holding `directory` (`reserve` None: the default)."""

    def __init__(self, directory: Path, reserve: int | None = None):
        self.directory = directory
        st = os.statvfs(directory)
        self.bytes = default_reserve(st.f_blocks * st.f_frsize) if reserve is None else reserve
        self._lock = threading.Lock()
        self._room = 0
        self._checked = float("-inf")

    def free(self) -> int:
        """Bytes an unprivileged user may still allocate on the cache disk."""
        return free_bytes(self.directory)

    def room(self) -> int:
        """Bytes the cache may still write before reaching the reserve (may be negative)."""
        with self._lock:
            self._refresh()
            return self._room

    def _refresh(self) -> None:
        self._room = self.free() - self.bytes
        self._checked = time.monotonic()

    def claim(self, n: int, fresh: bool = False) -> None:
        """Allow a write of `n` bytes, or raise ReserveReached (ENOSPC); `fresh`: by the
        disk's free space now, not as it was up to REFRESH seconds ago."""
        with self._lock:
            if fresh or self._room < n or time.monotonic() - self._checked > REFRESH:
                self._refresh()
            if self._room < n:
                raise ReserveReached(self.bytes, self.directory)
            self._room -= n
