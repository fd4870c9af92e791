"""Empty staging files made ahead, in batches, so that a create takes one at once.

Creating a file in the staging directory blocks (a directory update of the cache disk),
so it runs in a thread; one thread round trip per `create(2)` was a third of the time a
`cp -r` of small files spends per file. Spares are made in batches by one round trip
(growing while creates keep coming, up to MAX_BATCH) and handed out on the trio thread.
A spare is an ordinary empty staging file no journal row names: the queue discards the
spares left when it stops; after a crash the next start removes them with the other
unreferenced staging files (queue.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

import trio

from .staging import Staging

log = logging.getLogger(__name__)

FIRST_BATCH = 4    # an idle mount making one file makes few spares
MAX_BATCH = 64     # a burst of creates: one thread round trip per this many


class Spares:
    def __init__(self, staging: Staging, limiter: trio.CapacityLimiter):
        self.staging = staging
        self._limiter = limiter
        self._ready: list[tuple[str, Path]] = []
        self._batch = FIRST_BATCH
        self._making = trio.Lock()  # one batch at a time; the others wait for it

    def ids(self) -> set[str]:
        """The spares made and not handed out yet."""
        return {staging_id for staging_id, _ in self._ready}

    async def take(self) -> tuple[str, Path]:
        """A new, empty staging file (0600) of the caller's: its id and path."""
        while not self._ready:
            async with self._making:
                if not self._ready:
                    self._ready = await trio.to_thread.run_sync(self._make, self._batch,
                                                                limiter=self._limiter)
                    self._batch = min(MAX_BATCH, self._batch * 2)
        return self._ready.pop()

    async def discard(self) -> None:
        """Remove the spares not handed out (at stop)."""
        left, self._ready = self._ready, []
        for staging_id, _ in left:
            await trio.to_thread.run_sync(self.staging.discard, staging_id, limiter=self._limiter)

    def _make(self, count: int) -> list[tuple[str, Path]]:
        """`count` new staging files (blocking); those made before a failure are kept."""
        made: list[tuple[str, Path]] = []
        try:
            for _ in range(count):
                made.append(self.staging.create())
        except OSError:
            if not made:
                raise
            log.debug("made %d of %d spare staging files", len(made), count, exc_info=True)
        return made
