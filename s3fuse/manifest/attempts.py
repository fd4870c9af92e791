"""Remembering manifest index builds that failed, so that none is retried in a loop.

A hostile manifest that made a build raise, or that took the daemon down during one
(an OOM kill), must not be rebuilt on every access nor on every start: under systemd's
`Restart=on-failure` that is a crash loop. So a build first records, committed, which
root ETag it is for; a build that raised records its failure, and a record found at
the next build means the daemon died during that one. The same root ETag is then tried
again only after a backoff that doubles with each failure (1 minute up to 1 hour); a
changed root ETag (a fixed manifest) is tried at once. Meanwhile the old index, or an
empty directory, is served. Errors of S3 or of the disk are not the manifest's fault:
they pass through unrecorded, as before.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from ..errors import S3FuseError
from .index import ManifestIndex

log = logging.getLogger(__name__)

FIRST_BACKOFF = 60.0
MAX_BACKOFF = 3600.0
#: info keys: the ETag a build is running for, and the last failure's ETag, count, time, reason.
BUILDING, FAILED_ETAG, FAILED_COUNT, FAILED_AT, FAILED_REASON = (
    "build_etag", "failed_etag", "failed_count", "failed_at", "failed_reason")
DIED = "the daemon stopped during the build (killed, out of memory?)"


def backoff(failures: int) -> float:
    """Seconds before the same root ETag is built again after `failures` failures."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, failures - 1))


class BuildGuard:
    """Runs a manifest's index builds (in a worker thread) and remembers their failures."""

    def __init__(self, index: ManifestIndex, uri: str, clock: Callable[[], float] = time.time):
        self.index = index
        self.uri = uri
        self._clock = clock

    def failure(self) -> tuple[str, int, float, str] | None:
        """(root ETag, failures, seconds until the next try, reason) of the last failed build."""
        etag = self.index.info(FAILED_ETAG)
        if not etag:
            return None
        count = int(self.index.info(FAILED_COUNT) or 0)
        left = float(self.index.info(FAILED_AT) or 0) + backoff(count) - self._clock()
        return etag, count, max(0.0, left), self.index.info(FAILED_REASON) or ""

    def run(self, etag: str, build: Callable[[], int]) -> int | None:
        """Build the index of root `etag`: its entry count, or None when that ETag failed
        recently (not tried) or failed now (logged, recorded). Blocking."""
        self._adopt_unfinished()
        failed = self.failure()
        if failed is not None and failed[0] == etag and failed[2] > 0:
            log.warning("manifest %s: not indexed, its build failed %d time(s) (%s); next try in %ds",
                        self.uri, failed[1], failed[3], failed[2])
            return None
        self._set({BUILDING: etag})
        try:
            count = build()
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, S3FuseError):
                self._fail(etag, f"{type(exc).__name__}: {exc}"[:300])  # the manifest's doing
                return None
            # S3 or the disk (not the manifest's fault), or stopped (an unmount cancels the
            # build: util/stoppoint.py): neither a failure nor, at the next start, a crash
            self._set({BUILDING: None})
            raise
        self._set({BUILDING: None, FAILED_ETAG: None, FAILED_COUNT: None, FAILED_AT: None,
                   FAILED_REASON: None})
        return count

    def _adopt_unfinished(self) -> None:
        """A build marker left behind: the daemon died during that build, unless it had
        committed (it dies between the commit and clearing the marker)."""
        etag = self.index.info(BUILDING)
        if not etag:
            return
        if etag == self.index.info("root_etag"):
            self._set({BUILDING: None})
        else:
            self._fail(etag, DIED)

    def _fail(self, etag: str, reason: str) -> None:
        before = self.failure()
        count = before[1] + 1 if before is not None and before[0] == etag else 1
        self._set({BUILDING: None, FAILED_ETAG: etag, FAILED_COUNT: str(count),
                   FAILED_AT: repr(self._clock()), FAILED_REASON: reason})
        log.error("manifest %s: index build failed (%s); the old index or an empty directory is "
                  "served, next try in %ds", self.uri, reason, backoff(count))

    def _set(self, values: dict[str, str | None]) -> None:
        self.index.set_info(values)
