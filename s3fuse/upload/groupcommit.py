"""Group commit: small closed files become safe from a power loss together, not one by one.

A file of at most FSYNC_AT_CLOSE bytes is journalled at close with the CRC-32 of its
bytes and no fsync (three fsyncs would cost more than writing it). The sync pass, at
most SYNC_INTERVAL later (and at once for `fsync`, `sync` and exit), fsyncs every such
staging file and their directory, then one durable journal commit marks them synced:
the WAL is a log, so that commit makes every earlier one durable too. Only then are the
staging files of finished or superseded uploads deleted, so a job row can never outlive
its bytes. After a power loss, rows not marked synced are checked against their CRC.
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio

from ..errors import S3FuseError
from .journal import Journal
from .staging import Staging

log = logging.getLogger(__name__)

SYNC_INTERVAL = 0.25    # a small closed file is on disk (survives power loss) this soon
SYNC_RETRY = 2.0        # after a failed sync pass (disk full)

Io = Callable[..., Awaitable[Any]]


class GroupCommit:
    """The sync pass of one upload queue. `io(fn, *args)` runs blocking work in a thread;
    `progressed()` is called after each pass (the idle query waits for them)."""

    def __init__(self, journal: Journal, staging: Staging, io: Io,
                 progressed: Callable[[], None]):
        self.journal = journal
        self.staging = staging
        self._io = io
        self._progressed = progressed
        self._unsynced: dict[int, str] = {}  # job id -> staging id, journalled before its fsync
        self._due = False                    # a commit since the last pass must become durable
        self._wanted = trio.Event()
        self._lock = trio.Lock()             # one sync pass at a time

    @property
    def due(self) -> bool:
        """Is a sync pass still owed (something journalled since the last one) or running?
        A running pass counts: it deletes the staging files of finished uploads last."""
        return self._due or bool(self._unsynced) or self._lock.locked()

    def journalled(self, job_id: int, staging_id: str) -> None:
        """A small file was journalled before its fsync: the next pass fsyncs it."""
        self._unsynced[job_id] = staging_id

    def want(self) -> None:
        """A journal commit happened: make it durable with the next pass."""
        self._due = True
        self._wanted.set()

    async def run(self) -> None:
        """At most every SYNC_INTERVAL, one sync pass for everything new (runs forever)."""
        failing = False
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            await trio.sleep(SYNC_RETRY if failing else SYNC_INTERVAL)
            try:
                await self.now()
            except (S3FuseError, OSError) as exc:  # disk full or failing: keep trying
                if not failing:
                    log.warning("closed files not yet safe from a power loss (retrying): %s", exc)
                failing = True
                self.want()
            else:
                if failing:
                    log.info("closed files are safe from a power loss again")
                failing = False

    async def make_durable(self) -> None:
        """Run a sync pass now: every closed file and journal change survives power loss
        (CacheFull or OSError when the disk refuses)."""
        self._due = True
        await self.now()

    async def now(self) -> None:
        """The pass, if one is owed (shielded: it also runs when the daemon is cancelled)."""
        with trio.CancelScope(shield=True):
            async with self._lock:  # after a pass in flight, which may predate the caller
                if not self._due:
                    return
                self._due = False
                jobs = list(self._unsynced.items())
                try:
                    await self._io(self.sync_pass, jobs)
                except BaseException:
                    self._due = True
                    raise
                for job_id, _ in jobs:
                    self._unsynced.pop(job_id, None)
                self._progressed()

    def sync_pass(self, jobs: list[tuple[int, str]], force: bool = True) -> None:
        """fsync the staging files of `jobs` (id, staging id) and their directory, then one
        durable commit marks them synced and forgets the trash; only then are the trashed
        staging files deleted. Without `force`, nothing is written when there is nothing to
        mark or delete. Blocking."""
        for _, staging_id in jobs:
            self.staging.fsync(staging_id)
        if jobs:
            self.staging.fsync_directory()
        trash = self.journal.trash()
        if not (jobs or trash or force):
            return
        self.journal.mark_synced([job_id for job_id, _ in jobs], trash)
        for staging_id in trash:
            self.staging.discard(staging_id)
        self.journal.checkpoint()  # the only checkpoints (journal.py)

    def check_after_restart(self) -> None:
        """Small files journalled before their fsync: after a power loss their bytes may be
        lost or torn; one whose CRC no longer matches is kept as failed, never uploaded
        as it is without being asked (`sync --retry`). Blocking."""
        synced = []
        for job_id, staging_id, crc in self.journal.unsynced():
            if self.staging.crc32(staging_id) == crc:
                synced.append((job_id, staging_id))
                continue
            log.error("a file closed just before the machine stopped did not reach the disk "
                      "intact (job %d): it is not uploaded; write it again", job_id)
            self.journal.fail(job_id, "damaged: the machine stopped before its bytes were on "
                              "disk; write the file again (`sync --retry` uploads them as they are)")
        self.sync_pass(synced, force=False)
