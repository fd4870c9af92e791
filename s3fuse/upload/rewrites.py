"""A file closed again and again (a log appended to line by line) is uploaded when it
pauses, not at every close.

S3 has no append: every close of a changed file uploads all of it. A log that `>>` or a
training loop appends to every half second would send the whole file twice a second,
which on a slow link keeps it busy all the time (each upload waiting behind the last; a
newer version replaces one that waits, so the link only ever carries whole files). So a
new version of a key whose previous version was closed less than WINDOW ago waits until
the key has been left alone for QUIET, and at most MAX after the first such version: its
upload is that much later, one upload in MAX instead of one per close. A lone close, and
the first close after a pause of WINDOW, upload at once, as before (`cp`, `tar -x` and
`rsync` close every file once), and so does every version of MIN_BYTES or less: resending
a small file costs little, and an editor's saves, git's index and a directory's marker
(re-stored when `tar` sets its times) land as soon as they did. `fsync`, `s3fuse sync` and unmounting never wait (the
queue makes such versions due). The version is journalled at its close as always: the
wait costs no durability, only S3 seeing it later (as rclone's `--vfs-write-back`).
"""
from __future__ import annotations

from collections import OrderedDict

WINDOW = 5.0   # a close this soon after the key's previous one is a rewrite ...
QUIET = 2.0    # ... whose upload waits until the key has been left alone this long,
MAX = 30.0     # ... and at most this long after the first version that waited.
MIN_BYTES = 1 << 20  # smaller versions never wait
#: Keys remembered (~200 B each); the oldest go first. One forgotten uploads at once.
CAPACITY = 4096


class Rewrites:
    """When each new version of a key may start uploading (the journal's next_attempt)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[tuple[str, str], tuple[float, float | None]] = OrderedDict()

    def due(self, bucket: str, key: str, now: float) -> float:
        """A version of `key` was closed at `now`: when its upload may start (0: at once)."""
        where = (bucket, key)
        last, waiting_since = self._keys.pop(where, (None, None))
        if last is None or now - last >= WINDOW:
            self._remember(where, now, None)
            return 0.0
        waiting_since = now if waiting_since is None else waiting_since
        self._remember(where, now, waiting_since)
        return min(now + QUIET, waiting_since + MAX)

    def started(self, bucket: str, key: str) -> None:
        """An upload of `key` started: the next version's wait counts from its own close."""
        where = (bucket, key)
        if where in self._keys:
            self._keys[where] = (self._keys[where][0], None)

    def _remember(self, where: tuple[str, str], now: float, waiting_since: float | None) -> None:
        self._keys[where] = (now, waiting_since)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
