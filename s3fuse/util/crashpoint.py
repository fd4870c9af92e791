"""Test-only crash points: SIGKILL the daemon at a named point of the write path.

The crash-matrix tests (tests/test_crash_matrix.py) must kill the daemon at moments
no outside signal can hit reliably, e.g. after S3 confirmed an upload but before the
journal recorded it. `S3FUSE_TEST_CRASH_AT=POINT[:N]` (read once, at import) makes the
N-th (default first) call of `crash_point(POINT)` SIGKILL this process, as a crash
would: no cleanup, no flush. Unset (always, outside tests) it costs one comparison.

Points (all in upload/queue.py): "staged" (a closing file's staging file fsynced, its
journal row not committed yet), "journalled" (the row committed, close not answered
yet), "uploaded" (S3 confirmed an upload, the journal not updated yet).
"""
from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


def _parse(spec: str) -> tuple[str, int]:
    point, _, nth = spec.partition(":")
    return point, int(nth) if nth.isdigit() and int(nth) > 0 else 1


_POINT, _NTH = _parse(os.environ.get("S3FUSE_TEST_CRASH_AT", ""))
_lock = threading.Lock()
_seen = 0


def crash_point(name: str) -> None:
    """SIGKILL ourselves if this is the configured point's N-th passage (tests only)."""
    global _seen
    if name != _POINT:
        return
    with _lock:
        _seen += 1
        if _seen != _NTH:
            return
    log.info("S3FUSE_TEST_CRASH_AT=%s:%d reached: killing the daemon", name, _NTH)
    os.kill(os.getpid(), signal.SIGKILL)
