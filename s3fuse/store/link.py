"""Online/offline state of the S3 endpoint: fast failure while offline, probe to recover.

The first connection error or timeout marks S3 offline; from then on requests fail
at once (no retry storms, no hangs) and every layer serves what the cache holds.
A background probe brings the link back; both transitions are logged once.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from ..errors import Offline

log = logging.getLogger(__name__)

RECENT_ERRORS = 20


class Link:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.online = True
        self.since = time.time()
        self.reason = ""
        self._errors: deque[tuple[float, str]] = deque(maxlen=RECENT_ERRORS)

    def check(self, what: str) -> None:
        """Fail fast while offline (the probe is the only request that goes out)."""
        if not self.online:
            raise Offline(f"{what}: S3 offline since {time.strftime('%H:%M:%S', time.localtime(self.since))}")

    def failed(self, reason: str) -> None:
        with self._lock:
            if not self.online:
                return
            self.online, self.since, self.reason = False, time.time(), reason
        self.error(reason)
        log.warning("S3 unreachable (%s): offline, serving from the cache", reason)

    def succeeded(self) -> None:
        if self.online:
            return
        with self._lock:
            if self.online:
                return
            offline_for = time.time() - self.since
            self.online, self.since, self.reason = True, time.time(), ""
        log.info("S3 reachable again after %.0fs offline: online", offline_for)

    def error(self, message: str) -> None:
        """Remember a failure for `s3fuse status` (never with credentials in it)."""
        self._errors.append((time.time(), message))

    def status(self) -> dict[str, Any]:
        return {"state": "online" if self.online else "offline", "since": self.since,
                "reason": self.reason, "recent_errors": [
                    {"time": t, "error": m} for t, m in list(self._errors)]}
