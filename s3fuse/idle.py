"""The idle query: is the daemon done with everything it would do on its own?

Tests (and scripts) that must wait for background work (read-ahead, cache writes,
list-ahead, pins, uploads and their sync pass) await this instead of sleeping for a
guessed time. Idle means: no supervised task of a non-service kind in flight, and the
upload queue has nothing it would run without outside help (nothing uploading, no sync
pass due, nothing queued or retrying while online). Waiting wakes on the events of the
supervisor, the queue and the link; it never polls.
"""
from __future__ import annotations

import logging
from typing import Any

import trio

from .store.link import Link
from .upload.queue import UploadQueue
from .util.events import first_set
from .util.supervisor import Supervisor

log = logging.getLogger(__name__)


class Idle:
    def __init__(self, supervisor: Supervisor, uploads: UploadQueue | None, link: Link):
        self.supervisor = supervisor
        self.uploads = uploads
        self.link = link

    async def state(self) -> dict[str, Any]:
        """{"idle": bool, "tasks": in-flight tasks per kind, "uploads": why busy or null}."""
        uploads = await self.uploads.busy() if self.uploads is not None else None
        tasks = self.supervisor.in_flight()  # after the queue: nothing started meanwhile is missed
        return {"idle": not tasks and uploads is None, "tasks": tasks, "uploads": uploads}

    async def wait(self, timeout: float) -> dict[str, Any]:
        """Return the state once idle, or after `timeout` seconds (then `idle` is false)."""
        with trio.move_on_after(timeout):
            while True:
                events = [self.supervisor.changed(), self.link.changed()]
                if self.uploads is not None:
                    events.append(self.uploads.changed())
                state = await self.state()
                if state["idle"]:
                    return state
                await first_set(*events)
        state = await self.state()
        log.debug("not idle after %.1fs: %s", timeout, state)
        return state
