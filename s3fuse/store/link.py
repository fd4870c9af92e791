"""Online/offline state of the S3 endpoint: fast failure while offline, probe to recover.

The first connection error or timeout marks S3 offline; from then on requests fail
at once (no retry storms, no hangs) and every layer serves what the cache holds.
A background probe brings the link back; both transitions are logged once.

Transitions happen in worker threads (every S3 request runs in one) and are delivered
to the trio loop as events (through its trio token, never blocking the thread), so
waiters `await wait_online()` / `wait_offline()` (or a `changed()` event) instead of
polling `online`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import trio

from ..errors import NotSent

log = logging.getLogger(__name__)

RECENT_ERRORS = 20


class Link:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.online = True
        self.since = time.time()
        self.reason = ""
        self._errors: deque[tuple[float, str]] = deque(maxlen=RECENT_ERRORS)
        self._token: trio.lowlevel.TrioToken | None = None  # the loop whose waiters to wake
        self._changed = trio.Event()
        #: time.monotonic() of S3's last answer to a request of the mount (store/liveness.py)
        self.answered_at = -float("inf")

    def check(self, what: str) -> None:
        """Fail fast while offline (the probe is the only request that goes out): NotSent."""
        if not self.online:
            raise NotSent(f"{what}: S3 offline since {time.strftime('%H:%M:%S', time.localtime(self.since))}")

    def failed(self, reason: str) -> None:
        with self._lock:
            if not self.online:
                return
            self.online, self.since, self.reason = False, time.time(), reason
        self.error(reason)
        self._announce()
        log.warning("S3 unreachable (%s): offline, serving from the cache", reason)

    def succeeded(self) -> None:
        self.answered_at = time.monotonic()
        if self.online:
            return
        with self._lock:
            if self.online:
                return
            offline_for = time.time() - self.since
            self.online, self.since, self.reason = True, time.time(), ""
        self._announce()
        log.info("S3 reachable again after %.0fs offline: online", offline_for)

    def changed(self) -> trio.Event:
        """Set at the next transition (call from the trio thread)."""
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:  # first waiter of this trio run
            self._token, self._changed = token, trio.Event()
        return self._changed

    async def wait_online(self) -> None:
        await self._wait_for(True)

    async def wait_offline(self) -> None:
        await self._wait_for(False)

    async def _wait_for(self, online: bool) -> None:
        while True:
            changed = self.changed()  # before looking: a transition after the look sets it
            if self.online == online:
                await trio.lowlevel.checkpoint()
                return
            await changed.wait()

    def _announce(self) -> None:
        """Wake the trio waiters; from any thread, without waiting for the loop."""
        token = self._token
        if token is None:  # nobody ever waited: they will look at `online` first
            return
        try:
            token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def refused(self, message: str) -> None:
        """S3 refused a request (403: AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch,
        a KMS key policy): in the status's recent errors, so that `s3fuse status` says why
        reads fail with EACCES or uploads are kept as failed. The link stays online."""
        log.debug("refused: %s", message)
        self.error(message)

    def error(self, message: str) -> None:
        """Remember a failure for `s3fuse status` (never with credentials in it)."""
        self._errors.append((time.time(), message))

    def status(self) -> dict[str, Any]:
        return {"state": "online" if self.online else "offline", "since": self.since,
                "reason": self.reason, "recent_errors": [
                    {"time": t, "error": m} for t, m in list(self._errors)]}
