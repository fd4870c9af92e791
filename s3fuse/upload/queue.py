"""The write-back queue: journal + trio workers + sync/drain, for the FUSE layer.

Lifecycle: `await start()` before anything else (replays the journal: uploads that were
running are queued again, the trash is emptied, staging files never submitted are
removed, then in the background multipart uploads left by a crash are aborted and the
workers start). `await drain(timeout)` at unmount.

Writing a file: `Staging.create()` (in a thread), write the staging file, and on close
`await submit(bucket, key, staging_id, expected)` where `expected` is the ETag seen when
the file was opened for writing, None when it did not exist, UNKNOWN for "upload
unconditionally". `submit` returns once the journal row is committed: the upload then
survives SIGKILL. A large file (> FSYNC_AT_CLOSE bytes) is fsynced before its row
commits, durably: it survives power loss at once. A small one is journalled with the
CRC-32 of its bytes and no fsync (three fsyncs would cost more than writing it): the
sync pass (groupcommit.py), at most SYNC_INTERVAL later, fsyncs it and every other new staging file
and makes the journal durable in one go; after a power loss before that, its CRC
decides whether the staged bytes can be trusted. From `submit` on, the staging file
belongs to the queue and must not change. Until the upload is done, `pending_version` gives the
local file to read from (open it at once: it is deleted when the upload finishes; on
FileNotFoundError read S3, which has the bytes by then). A version submitted while an
older one of the same key is pending is based on that one (its `expected` is not used,
see journal.py); `on_uploaded(bucket, key, UploadResult)` tells the tree the new ETag,
twice: before the journal records the upload (a crash cannot lose the tree's update)
while the key still counts as pending, and after (`pending` false: the local view can
go; a listener that failed the first time, e.g. on a full disk, tries again). Listeners
must be idempotent. A listener's write may be queued (the metadata store queues point
writes while a listing is being stored): `listener_writes.flush()`, a blocking call run
in a thread between the two when `listener_writes.queued()`, returns once those writes are on disk, so the journal never
forgets an upload whose listing update a crash could still lose.

POSIX metadata: `submit(..., meta=)` uploads the file with it; `set_meta` journals a
metadata change (it rides along a queued upload of the key, or becomes a copy of the
object onto itself; journal.py). A key with only metadata changes pending has no
`pending_version`: its bytes are S3's.

Workers (`workers`, default WORKERS) upload one job each at a time, one version per key
at a time and in order. Most jobs of a burst are small files: a PUT of a few KiB is a
round trip of latency, so 16 go at once (1,000 files of `cp -a` durable in 0.7-0.8x the
time 4 took). Only HEAVY_UPLOADS of the workers take any job; the others only removals
and PUTs of at most LIGHT_PUT_BYTES (`Journal.claim`). So a job that moves many bytes
through the daemon (up to 4 parts of 8 MiB in memory) or competes with the user for the
machine (metadata copies run while `chmod -R` still goes on) has 4 workers, as before:
with 16 taking copies, and claiming them as soon as chmod journalled them, the chmod
took 1.7-2.3x as long on 2 cores. Once a burst of metadata changes pauses (BURST_QUIET,
burst.py), the light workers copy those of objects of at most LIGHT_PUT_BYTES too: the
chmod has returned, and what it left in the queue goes 16 at a time. A change wakes one
idle worker, not all of them; a metadata change during such a burst only one of the 4
(one light worker already watches for the pause). Transient errors (network, 5xx, throttling) retry with exponential
backoff (up to RETRY_MAX, without limit; listed under `retrying` in the status); while the link is offline workers only wait (no requests, no attempts counted)
and resume once the daemon's probe brings the link back (they await the link's event,
never poll it). The workers, the sync pass and the start-up cleanup run under the
daemon's supervisor: a bug in one is logged and the task restarted (or, for the
cleanup, dropped), never the end of the mount. Permanent errors (403, bucket
gone, KMS refused) keep the job and its bytes as failed until `retry_failed()`.

A read-only mount (`read_only`) sends no write request: it replays the journal (its
pending changes show) but keeps the queue as it is for a read-write mount with the same
cache dir: no worker starts, no leftover multipart upload or probe key is removed,
`sync` returns at once with the queue (`read_only` in its status) and `retry_failed`
is refused (ReadOnly, EROFS).

Every method is for the trio thread, except `status()`, which blocks (SQLite) and is
safe from any thread (Control.status runs in one).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Protocol, Sequence, TypeVar

import trio

from ..errors import NotSent, Offline, ReadOnly, RemoteError, S3FuseError
from ..posix import Posix
from ..store import retry
from ..store.protocol import Store
from ..util.crashpoint import crash_point
from ..util.events import first_set
from ..util.supervisor import UPLOAD_CLEANUP, UPLOAD_QUEUE, UPLOAD_SYNC, UPLOAD_WORKER, Supervisor
from .burst import BurstGate
from .groupcommit import GroupCommit
from .journal import CHANGE_NAMES, UNKNOWN, Expected, Job, Journal, is_light
from . import rewrites
from .rewrites import Rewrites
from .staging import Staging
from .uploader import Interrupted, Uploader, UploadResult

log = logging.getLogger(__name__)
T = TypeVar("T")

FSYNC_AT_CLOSE = 4 << 20  # larger files are fsynced at close (their CRC would cost more)
RETRY_BASE = retry.UPLOADS.base  # first backoff after a transient error (doubles, with jitter)
RETRY_MAX = retry.UPLOADS.cap
RECORD_RETRY = 1.0      # how often a journal write that failed (a full disk) is tried again
WORKERS = 16            # jobs uploading at once (see the top) ...
HEAVY_UPLOADS = 4       # ... of which so many take any job, the others only light ones:
LIGHT_PUT_BYTES = 1 << 20  # removals and PUTs of at most this
#: Keys whose newest told landing is remembered, so that an older job's late telling is not
#: passed on after a newer one's (see `_tell_uploaded`); the window is a few awaits long.
TOLD_MAX = 4096
#: The longest a version journalled by a flush waits for the close of the handle that
#: flushed it (`hold`): a process that forked keeps the file open for writing after its
#: child's close flushed it.
HOLD_MAX = 60.0


class ListenerWrites(Protocol):
    """Where the `on_uploaded` listeners write (the listing store): writes it may have
    queued behind a bulk write, and a blocking wait for them."""

    def queued(self) -> bool: ...

    def flush(self) -> None: ...


class UploadFailed(RemoteError):
    """The upload failed permanently; the bytes are kept (see `s3fuse status`)."""


class UploadQueue:
    def __init__(self, store: Store, journal: Journal, staging: Staging, *,
                 background: Supervisor, workers: int = WORKERS, uploader: Uploader | None = None,
                 retry_base: float = RETRY_BASE, retry_max: float = RETRY_MAX,
                 on_uploaded: Callable[[str, str, UploadResult], None] | None = None,
                 listener_writes: ListenerWrites | None = None, read_only: bool = False):
        self.store = store
        self.read_only = read_only
        self.journal = journal
        self.staging = staging
        self.uploader = uploader or Uploader(store, journal, staging)
        self.background = background
        self.workers = workers
        self.retry = retry.Policy(None, retry.UPLOADS.slow_attempts, retry_base, retry_max)
        self.on_uploaded = on_uploaded
        self.listener_writes = listener_writes
        #: Blocking hook given (job, result, staging path) before the staging file is deleted.
        self.keep_uploaded: Callable[[Job, UploadResult, Path], None] | None = None
        self._uploads = trio.CapacityLimiter(workers)
        self._disk = trio.CapacityLimiter(2)  # journal and staging I/O, apart from uploads
        # the sync pass's fsyncs apart: on a busy disk they took seconds, and claims and
        # the recording of uploads waited behind them
        self._syncing = trio.CapacityLimiter(1)
        self._flushes = trio.CapacityLimiter(workers)  # waits for listeners' writes (may be long)
        self._latest: dict[tuple[str, str], tuple[int, str]] = {}
        self._told: dict[tuple[str, str], int] = {}  # newest job id told per key (bounded)
        self._changed = trio.Event()  # replaced on every change: a broadcast
        self._light_changed = trio.Event()  # ... on every change a light worker may take
        #: Workers with nothing to claim wait here, by kind; a change wakes one of each,
        #: not all (16 asking the journal at every change keep its writer lock busy).
        self._idle_any = trio.lowlevel.ParkingLot()
        self._idle_light = trio.lowlevel.ParkingLot()
        self._unheld = trio.Event()   # replaced when uploads stop waiting for bursts (urgent)
        self._progress = trio.Event()  # the same, also at every sync pass (see changed())
        self._cleaned = trio.Event()
        self.commits = GroupCommit(journal, staging, self._sync_io, self._progressed)
        self._bursts = BurstGate()
        self._meta_bursts = BurstGate()   # of metadata changes: light workers copy after one
        self._meta_watchers = 0           # light workers that will look when it pauses
        self._urgent = 0                  # callers waiting in fsync or sync: upload at once
        self._stopped = trio.Event()
        self._stopping = False
        self._running = False
        self._processing = 0              # jobs a worker has claimed and not yet recorded
        self._claiming = 0                # ... of which claims not returned yet (may be none)
        self._phases: dict[int, str] = {}  # job id -> what its worker waits for (the idle query)
        self._rewrites = Rewrites()       # when a key closed again may upload (rewrites.py)
        self._held: dict[int, float] = {}  # job -> until when it waits for its handle's release
        self._held_as: dict[int, int] = {}  # a held job -> its successor (a rename while open)
        self._held_keys: Counter[tuple[str, str]] = Counter()  # keys a holding flush journals

    # ------------------------------------------------------------ API

    async def start(self) -> None:
        """Replay the journal, then abort leftovers and run the workers in the background."""
        await self._io(self._replay)
        self._latest = await self._io(self.journal.latest)
        if self.read_only:  # kept for a read-write mount: nothing goes to S3 from here
            if self._latest:
                log.info("%d journalled change(s) kept for a read-write mount: this mount "
                         "is read-only", len(self._latest))
            return
        if not self.background.spawn(self._run, kind=UPLOAD_QUEUE):
            raise RuntimeError("UploadQueue.start() needs a Supervisor bound to a nursery")
        self._running = True

    async def submit(self, bucket: str, key: str, staging_id: str,
                     expected: Expected = UNKNOWN, meta: Posix | None = None,
                     settle: Callable[[], tuple[int, int | None]] | None = None,
                     quick: bool = False) -> int:
        """Journal a closed staging file for upload (storing the POSIX metadata `meta`);
        returns the job id once committed. `settle`: the writer's blocking last step, run
        first in the same thread (its last bytes reach the file); it returns the file's
        size and CRC-32 (None: unknown), so the file is not read back. `quick`: settling
        is microseconds of work (a small file's bytes, CRC known): then both run here,
        on the loop, when no thread is writing the journal (see `_journal`)."""
        # a rewrite of a key closed moments ago waits for it to pause (rewrites.py)
        not_before = 0.0 if self._urgent else self._rewrites.due(bucket, key, time.time())
        args = (bucket, key, staging_id, expected, meta, settle, not_before)
        job_id = await (self._journal if quick else self._io)(self._enqueue, *args)
        self._bursts.closed_one()
        self._latest[(bucket, key)] = (job_id, staging_id)
        self.commits.want()
        self._notify()
        return job_id

    async def set_meta(self, bucket: str, key: str, meta: Posix, size: int,
                       expected: Expected = UNKNOWN) -> int:
        """Journal a metadata change of a key (`meta` complete; `size`: the object's;
        `expected`: the ETag it was made on). It rides along the key's queued, unsent
        put or metadata change when there is one (see journal.py); else it is a copy of
        the object onto itself. Returns the id of the job that carries it."""
        job_id = await self._journal(self.journal.enqueue_meta, bucket, key, meta, size,
                                     expected)
        self._meta_bursts.closed_one()
        latest = self._latest.get((bucket, key))
        if latest is None or latest[0] != job_id:  # a new row: the bytes stay where they were
            self._latest[(bucket, key)] = (job_id, latest[1] if latest else "")
        self.commits.want()
        # a copy (or a put it rode along, told at its submit)
        self._notify(light=self._for_light("meta", size))
        return job_id

    async def delete(self, bucket: str, key: str, expected: Expected = UNKNOWN) -> int:
        """Journal the removal of a key (it replaces pending uploads of the key that have not
        started, and inherits their condition; one that has runs first); `expected` is the
        ETag the user saw (a newer version in S3 is then kept). Returns the job id."""
        job_id = await self._journal(self._enqueue_delete, bucket, key, expected)
        self._bursts.closed_one()
        self._latest[(bucket, key)] = (job_id, "")
        self.commits.want()
        self._notify()
        return job_id

    async def cancel(self, bucket: str, key: str) -> None:
        """Forget the pending changes of a key (for a rename onto it): queued ones are
        dropped, a running upload is waited for (however it ends)."""
        self.commits.want()
        while True:
            changed = self._changed  # before asking: the upload may end while we ask
            if not await self._io(self.journal.cancel, bucket, key):
                break
            await changed.wait()  # one is uploading: its end notifies
        self._latest.pop((bucket, key), None)
        self._notify()

    @contextlib.contextmanager
    def holding_key(self, bucket: str, key: str) -> Iterator[None]:
        """While a writer handle's flush journals `key`: its job (not made yet) is not
        claimed before `hold` marks it (a worker may claim while the journal is written)."""
        self._held_keys[(bucket, key)] += 1
        try:
            yield
        finally:
            self._held_keys[(bucket, key)] -= 1
            if not self._held_keys[(bucket, key)]:
                del self._held_keys[(bucket, key)]

    @contextlib.asynccontextmanager
    async def settled(self, bucket: str, key: str) -> AsyncIterator[bool]:
        """For a change of `key` made on the version S3 holds (a rename's copy, an unlink):
        its queued changes are not started while the block runs, and a metadata copy being
        sent is waited for first (however it ends). Yields whether one was: S3's version
        of the key may have changed meanwhile (a copy of a multipart object gets a new
        ETag). An upload of new bytes is not waited for (an `rm` of a big file being
        uploaded returns at once): a change journalled behind it follows the ETag it makes."""
        with self.holding_key(bucket, key):
            waited = False
            while True:
                changed = self._changed  # before asking: the upload may end while we ask
                if not (self.pending(bucket, key)  # (else nothing of it is journalled)
                        and await self._io(self.journal.copying, bucket, key)):
                    break
                waited = True
                await changed.wait()  # its end notifies
            try:
                yield waited
            finally:
                self._notify()  # a queued change the block left may go now

    def hold(self, job_id: int) -> None:
        """Job `job_id` was journalled by the flush of a handle that stays open: it waits
        for `unhold` (that handle's release), at most HOLD_MAX, or for `release_holds`
        (sync, unmount). The kernel also sends a flush when a process that shares the
        handle closes its copy (a child after fork and exec): uploading then sent a
        half-written file, and again at each such flush. A job, not the key: another
        handle's close of the key journals a newer job, which goes at once."""
        self._held[job_id] = time.time() + HOLD_MAX

    def hold_as(self, job_id: int, successor: int) -> None:
        """A held job's version was journalled again as `successor` (its open file was
        renamed): that one waits for the same release."""
        if job_id in self._held:
            self._held[successor] = self._held[job_id]
            self._held_as[job_id] = successor

    def unhold(self, job_id: int) -> None:
        """The handle that flushed job `job_id` is released (or fsynced): it may go now."""
        released: int | None = job_id
        found = False
        while released is not None:
            found = self._held.pop(released, None) is not None or found
            released = self._held_as.pop(released, None)
        if found:
            self._notify()

    def release_holds(self) -> None:
        """Someone waits for every upload (`s3fuse sync`, an unmount): held jobs go now."""
        if self._held or self._held_as:
            self._held.clear()
            self._held_as.clear()
            self._notify()

    def _holding(self) -> tuple[tuple[str, ...], tuple[int, ...], float]:
        """What workers leave alone now: keys being journalled by a holding flush (as
        `bucket/key`), held jobs; and when the first hold ends (inf: none)."""
        if not self._held and not self._held_keys:
            return (), (), math.inf
        now = time.time()
        for job_id, until in list(self._held.items()):
            if until <= now:
                del self._held[job_id]
        return (tuple(f"{bucket}/{key}" for bucket, key in self._held_keys), tuple(self._held),
                min(self._held.values(), default=math.inf))

    @contextlib.contextmanager
    def _urgently(self) -> Iterator[None]:
        """Someone waits for uploads: they start at once, even during a burst of closes."""
        self._urgent += 1
        self._unhold()
        self._notify()
        try:
            yield
        finally:
            self._urgent -= 1

    async def wait(self, job_id: int) -> bool:
        """For fsync: True once the job (or a newer version of its key) is uploaded; False at
        once while S3 is offline (the bytes stay journalled); UploadFailed if it failed."""
        with self._urgently():
            await self._due_now(job_id)
            return await self._wait(job_id)

    async def _due_now(self, job_id: int | None = None) -> None:
        """A rewrite waiting for its key to pause (rewrites.py) may start now: `job_id`, or
        every one."""
        if await self._io(self.journal.make_due, job_id):
            self._notify()

    async def _wait(self, job_id: int) -> bool:
        while True:
            changed = self._changed
            state, error = await self._io(self.journal.state, job_id)
            if state == "done":
                return True
            if state == "failed":
                raise UploadFailed(error or "upload failed")
            offline = self.store.link.changed()
            if not self.store.link.online:
                return False
            await first_set(changed, offline)

    async def sync(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until every pending upload is done or failed permanently (at most `timeout`
        seconds); returns the status (`files` > 0 when time ran out; at once on a
        read-only mount, whose queue waits for a read-write one)."""
        if self.read_only:
            return await self._io(self.status)
        self.release_holds()
        with self._urgently(), trio.move_on_after(math.inf if timeout is None else timeout):
            await self._due_now()
            while True:
                changed = self._changed
                if self._cleaned.is_set() and (await self._io(self.journal.summary))["files"] == 0:
                    with contextlib.suppress(S3FuseError, OSError):  # the syncer reports it
                        await self.make_durable()  # and staging files of done uploads deleted
                    break
                await changed.wait()
        return await self._io(self.status)

    async def drain(self, timeout: float) -> dict[str, Any]:
        """For unmount: `sync(timeout)`, then stop the workers (a multipart upload stops at
        its next part); whatever is left stays journalled for the next start."""
        await self.sync(timeout)
        await self.stop()
        return await self._io(self.status)

    async def stop(self) -> None:
        self._stopping = True
        self.uploader.stopping.set()
        self._unhold()
        self._notify()
        self._idle_any.unpark_all()
        self._idle_light.unpark_all()
        if self._running:
            await self._stopped.wait()

    async def retry_failed(self) -> int:
        """Queue the permanently failed uploads again; returns how many (ReadOnly on a
        read-only mount: it would send them)."""
        if self.read_only:
            raise ReadOnly("a read-only mount keeps its failed uploads for a read-write one")
        count = await self._io(self.journal.retry_failed)
        self._notify()
        return count

    async def discard_failed(self, job_ids: Sequence[int]) -> list[Job]:
        """Give up the failed changes `job_ids` (the user asked: `s3fuse sync --discard`);
        returns the jobs dropped. Each key shows S3's version again: the listeners hear
        of a dropped change as of one the remote version won (`kept_remote`, look again)."""
        dropped = await self._io(self.journal.discard_failed, job_ids)
        for job in dropped:
            log.warning("%s of %s given up on request (it had failed: kept no more)%s",
                        f"the {CHANGE_NAMES.get(job.op, job.op)}", job.uri,
                        f"; its {job.size} bytes are dropped" if job.op == "put" else "")
            latest = self._latest.get((job.bucket, job.key))
            if latest is not None:
                await self._reload_latest(job.bucket, job.key, latest)
            self._tell_uploaded(job, UploadResult("", kept_remote=True))
        self.commits.want()  # their staging files are deleted by the next sync pass
        self._notify()
        return dropped

    def changed(self) -> trio.Event:
        """Set at the next change of the queue (a submit, an upload's end, a sync pass)."""
        return self._progress

    async def busy(self) -> str | None:
        """For the idle query: why the queue will do more work without outside help (an
        upload running, a sync pass due, jobs queued or retrying while online), or None."""
        active = await self._look(self.journal.has_active)  # an empty journal: one read
        queued = (active and self._running and not self._stopping and self.store.link.online
                  and await self._look(self.journal.next_due) is not None)
        # the counters after the journal: a job claimed meanwhile was counted before its
        # claim; a claim of an empty journal finds nothing (a worker woken by a sync pass:
        # that claim made a mount that had just gone idle look busy)
        if self._processing > self._claiming or (self._claiming and active):
            phases = [f"job {job_id}: {phase}" for job_id, phase in self._phases.items()]
            if self._claiming:
                phases.append(f"{self._claiming} claiming a job")
            return f"uploading ({', '.join(phases)})"
        if self.commits.due:
            return "sync pass due"
        if not self._running or self._stopping or not self.store.link.online:
            return None
        if not self._cleaned.is_set():
            return "starting"
        return "queued" if queued else None

    def status(self) -> dict[str, Any]:
        """Pending files/bytes, oldest age, failures, retrying, conflicts; `read_only`:
        kept for a read-write mount. Blocking."""
        return {**self.journal.summary(), "read_only": self.read_only}

    def pending(self, bucket: str, key: str) -> bool:
        """Is a change of the key (an upload or a removal) still journalled?"""
        return (bucket, key) in self._latest

    def pending_version(self, bucket: str, key: str) -> Path | None:
        """The staging file with the newest local bytes of a key not yet in S3, or None
        (also when only metadata changes of the key are pending: S3 has its bytes)."""
        latest = self._latest.get((bucket, key))
        return self.staging.path(latest[1]) if latest and latest[1] else None

    # ------------------------------------------------------------ blocking helpers

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._disk)

    async def _sync_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._syncing)

    @staticmethod
    async def _look(fn: Callable[..., T], *args: Any) -> T:
        """A read of the journal for the idle query: never behind the writes' threads."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args))

    def _for_light(self, op: str, size: int) -> bool:
        """Is a job of `op` and `size` one to wake a light worker for? One it claims
        (`is_light`), except a metadata change while a light worker already watches for
        the burst of them to pause (it would claim nothing before)."""
        if op == "meta" and self._meta_watchers:
            return False
        return is_light(op, size, LIGHT_PUT_BYTES, copies=True)

    def _notify(self, light: bool = True) -> None:
        """Tell everyone the queue changed; `light`: it may have a job a light worker takes
        (`_for_light`)."""
        self._changed.set()
        self._changed = trio.Event()
        self._idle_any.unpark(count=1)
        if light:
            self._light_changed.set()
            self._light_changed = trio.Event()
            self._idle_light.unpark(count=1)
        self._progressed()

    def _unhold(self) -> None:
        """Wake the workers waiting for a burst to pause: someone is urgent, or stopping."""
        self._unheld.set()
        self._unheld = trio.Event()

    def _progressed(self) -> None:
        """Wake the idle query (not the workers: a sync pass gives them nothing to do)."""
        self._progress.set()
        self._progress = trio.Event()

    def _replay(self) -> None:
        requeued = self.journal.recover()
        if requeued:
            log.info("%d interrupted upload(s) queued again", requeued)
        self.commits.check_after_restart()
        orphans = self.staging.ids() - self.journal.staging_ids()
        written = [staging_id for staging_id in orphans if self.staging.size(staging_id)]
        if written:
            log.warning("removing %d staging file(s) no upload needs (writes never closed, "
                        "or uploaded just before a crash)", len(written))
        if len(orphans) > len(written):  # made ahead for new files (staging.SPARES)
            log.info("removing %d empty staging file(s) no upload needs (made ahead for "
                     "new files, or never written)", len(orphans) - len(written))
        for staging_id in orphans:
            self.staging.discard(staging_id)

    def _enqueue(self, bucket: str, key: str, staging_id: str, expected: Expected,
                 meta: Posix | None, settle: Callable[[], tuple[int, int | None]] | None,
                 not_before: float = 0.0) -> int:
        size, crc = settle() if settle is not None else (self.staging.size(staging_id), None)
        if size <= rewrites.MIN_BYTES:
            not_before = 0.0  # a small file is cheap to send again (rewrites.py)
        if size > FSYNC_AT_CLOSE:
            self.staging.commit(staging_id)  # durable before its durable journal row
            crash_point("staged")
            job_id = self.journal.enqueue(bucket, key, staging_id, size, expected, meta=meta,
                                          not_before=not_before)
        else:
            if crc is None:
                crc = self.staging.crc32(staging_id)
            crash_point("staged")
            job_id = self.journal.enqueue(bucket, key, staging_id, size, expected, crc32=crc,
                                          meta=meta, not_before=not_before)
            self.commits.journalled(job_id, staging_id)
        crash_point("journalled")
        return job_id

    async def _journal(self, fn: Callable[..., T], *args: Any) -> T:
        """A point write to the journal, `fn(*args)`: on the trio loop if no thread holds
        the journal's writer lock (it never waits for one), else in a thread. The work is
        a row or two written, not fsynced (the journal checkpoints in the sync pass, never
        at a commit), with at most a small file's bytes settled: tens of microseconds,
        against a thread round trip of hundreds on a busy machine, which was half of what
        closing a small file cost (`cp -r` of 1,000 files) and of a `chmod`'s."""
        with self.journal.writer_if_free() as free:
            if free:
                return fn(*args)
        return await self._io(fn, *args)

    def _enqueue_delete(self, bucket: str, key: str, expected: Expected) -> int:
        return self.journal.enqueue(bucket, key, "", 0, expected, op="delete")

    async def make_durable(self) -> None:
        """Run a sync pass now (see groupcommit.py)."""
        await self.commits.make_durable()

    # ------------------------------------------------------------ workers

    async def _run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(self.background.run, self.commits.run,
                                                     kind=UPLOAD_SYNC))
                await self.background.run(self._abort_leftovers, kind=UPLOAD_CLEANUP)
                self._cleaned.set()
                self._notify()
                async with trio.open_nursery() as workers:
                    for number in range(self.workers):
                        light = number >= HEAVY_UPLOADS
                        workers.start_soon(functools.partial(self.background.run, self._worker,
                                                             light, kind=UPLOAD_WORKER))
                nursery.cancel_scope.cancel()
        finally:
            try:
                await self.commits.now()  # shielded: also when the daemon is cancelled
            except (S3FuseError, OSError) as exc:
                log.warning("closed files not made safe from a power loss at exit: %s", exc)
            self._stopped.set()

    async def _abort_leftovers(self) -> None:
        """Abort the multipart uploads a crash left behind (recorded ones only) and delete
        the condition probe's scratch keys it left, before any new upload starts. Each
        request is abandoned when the daemon stops (what is left is tried again at the next
        start): a black-holed one held the unmount for its whole timeout (28 s)."""
        if await self._io(self.journal.probe_keys):
            await self._until_online()
            try:
                await trio.to_thread.run_sync(self.uploader.conditions.remove_leftovers,
                                              limiter=self._uploads, abandon_on_cancel=True)
            except S3FuseError as exc:  # Offline included: tried again at the next start
                log.info("scratch keys of the condition probe not deleted yet: %s", exc)
        for bucket, key in await self._io(self.journal.multipart_keys):
            while not self._stopping:
                await self._until_online()
                try:
                    await trio.to_thread.run_sync(
                        functools.partial(self.uploader.abort_leftovers, bucket, key),
                        limiter=self._uploads, abandon_on_cancel=True)
                except Offline:
                    continue
                except S3FuseError as exc:
                    log.warning("multipart uploads left at s3://%s/%s not aborted: %s",
                                bucket, key, exc)
                break

    async def _until_online(self) -> None:
        """Wait for the link to come back (or the queue to stop): an event, not a poll."""
        while True:
            changed, link_changed = self._changed, self.store.link.changed()
            if self.store.link.online or self._stopping:
                return
            await first_set(changed, link_changed)

    async def _worker(self, light: bool) -> None:
        while (job := await self._next_job(light)) is not None:
            try:
                await self._process(job)
            finally:
                self._processing -= 1  # counted from its claim on, in _next_job
                self._phases.pop(job.id, None)

    async def _next_job(self, light: bool) -> Job | None:
        warned = False
        while True:
            await self._until_online()
            await self._writers_first()
            if self._stopping:
                return None
            with self._copies_now(light) as copies:
                # before asking: a job may come while we ask (for a light worker, one it
                # may take: a chmod's stream of copies would keep it asking all along)
                changed = self._light_changed if light else self._changed
                self._processing += 1  # before the claim: the idle query never misses a job
                self._claiming += 1
                job, unwritable = None, False
                light_max = LIGHT_PUT_BYTES if light else None
                held_keys, held, hold_ends = self._holding()
                try:
                    job = await self._io(self.journal.claim, time.time(), light_max, copies,
                                         held_keys, held)
                    if job is not None and (job.bucket, job.key) in self._held_keys:
                        # held while it was claimed (`settled`: a rename copies it now):
                        # given back as it was
                        await self._io(functools.partial(self.journal.requeue, job.id, None, 0.0,
                                                         counted=False, unsent=not job.sent))
                        job = None
                        self._notify()  # the settling waits for its end
                    if job is not None:
                        self._rewrites.started(job.bucket, job.key)
                except (S3FuseError, OSError, sqlite3.Error) as exc:  # CacheFull: wait, never end
                    if not warned:  # the worker (and with it the daemon)
                        log.warning("cannot start uploads: the journal is not writable (%s)", exc)
                        warned = True
                    unwritable = True
                finally:
                    self._claiming -= 1
                    if job is None:
                        self._processing -= 1
                if job is not None:
                    return job
                if unwritable:
                    await trio.sleep(RECORD_RETRY)
                    continue
                # a light worker waits for a light job only: one that a big job left due
                # would otherwise claim nothing and ask again at once, round and round
                due = await self._io(self.journal.next_due, light_max, copies, held_keys, held)
                if changed.is_set() or self._stopping:
                    continue  # a change came while we asked: no one woke us for it
                due = hold_ends if due is None else min(due, hold_ends)
                delay = math.inf if due == math.inf else max(due - time.time(), 0.0)
                if light and not copies:  # copies wait for the chmod to pause: look then
                    delay = min(delay, self._meta_bursts.quiet_in(math.inf))
                with trio.move_on_after(delay):
                    await (self._idle_light if light else self._idle_any).park()

    @contextlib.contextmanager
    def _copies_now(self, light: bool) -> Iterator[bool]:
        """May this worker take small objects' metadata copies now (a heavy one: always;
        a light one: unless a burst of metadata changes goes on)? A light worker told no
        watches for the burst to pause meanwhile: no metadata change wakes another one."""
        copies = not light or not self._meta_bursts.quiet_in(math.inf)
        self._meta_watchers += not copies
        try:
            yield copies
        finally:
            self._meta_watchers -= not copies

    async def _writers_first(self) -> None:
        """Uploads wait while a burst of closes goes on (burst.py); fsync and sync do not."""
        await self._bursts.wait_for_pause(lambda: not self._stopping and not self._urgent,
                                          lambda: self._unheld)

    async def _process(self, job: Job) -> None:
        outcome: Callable[[], None]
        result: UploadResult | None = None
        # no key: anyone may ask the idle query (control.py), as for the status summary
        self._phases[job.id] = f"{job.op}: waiting for a slot or sending"
        try:
            # abandoned when the daemon is cancelled at exit: the job stays journalled as
            # uploading and the next start queues it again
            result = await trio.to_thread.run_sync(self.uploader.upload, job, limiter=self._uploads,
                                                   abandon_on_cancel=True)
        except Offline as exc:  # not an attempt: wait for the link
            outcome = functools.partial(self.journal.requeue, job.id, str(exc), 0.0, counted=False,
                                        unsent=isinstance(exc, NotSent) and not job.sent)
        except Interrupted:  # stopping: the next start goes on
            outcome = functools.partial(self.journal.requeue, job.id, None, 0.0, counted=False)
        except S3FuseError as exc:
            outcome = self._failure(job, exc, permanent=retry.is_permanent(exc))
        except OSError as exc:  # the staging file cannot be read: retrying will not help
            outcome = self._failure(job, exc, permanent=True)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the queue
            log.exception("upload of %s crashed", job.uri)
            outcome = self._failure(job, exc, permanent=False)
        else:
            crash_point("uploaded")
            outcome = functools.partial(self.journal.done, job.id, result.etag, result.conflict_key,
                                        kept_remote=result.kept_remote)
            if self.keep_uploaded is not None and job.op == "put":
                self._phases[job.id] = f"{job.op}: keeping its bytes in the block cache"
                await self._io(self._keep, job, result)
        if result is not None:
            # The tree learns the new ETag before the journal forgets the job: a crash in
            # between only replays the upload, while the other order could lose the tree's
            # update, and the stored listing hid the file until --metadata-ttl passed.
            self._tell_uploaded(job, result)
            self._phases[job.id] = f"{job.op}: storing the listings it changed"
            await self._flush_listeners(job)
        self._phases[job.id] = f"{job.op}: journalling its end"
        await self._record(job, outcome)
        if result is not None:
            latest = self._latest.get((job.bucket, job.key))
            if latest is not None and latest[0] == job.id and job.op == "meta":
                await self._reload_latest(job.bucket, job.key, latest)  # a failed put may stay
            elif latest is not None and latest[0] == job.id:
                del self._latest[(job.bucket, job.key)]
            elif (latest is not None and job.staging_id and latest[1] == job.staging_id
                  and result.conflict_key is None):
                # only metadata changes follow: S3 has the newest bytes now
                self._latest[(job.bucket, job.key)] = (latest[0], "")
            self._tell_uploaded(job, result)  # again: no longer pending (the local view goes)
        self.commits.want()
        # A light worker is woken only for a job it takes: after each metadata copy of a
        # `chmod -R` still going on one would search the queued copies for a light job
        # under the journal's writer lock, in vain (the chmod's own journal writes waited:
        # 2x); one light worker watches for the chmod to pause instead (`_copies_now`).
        self._notify(light=self._for_light(job.op, job.size))

    async def _reload_latest(self, bucket: str, key: str, seen: tuple[int, str]) -> None:
        """`_latest` of a key from the journal, unless a change of the key came meanwhile."""
        fresh = await self._io(self.journal.latest_of, bucket, key)
        if self._latest.get((bucket, key)) != seen:
            return
        if fresh is None:
            del self._latest[(bucket, key)]
        else:
            self._latest[(bucket, key)] = fresh

    def _tell_uploaded(self, job: Job, result: UploadResult) -> None:
        """Tell the listeners, unless a newer job of the key was told already.

        A job's second telling comes after awaits (the journal write, a reload) in which
        the key's next job can land and be told: passed on, the older landing overwrote the
        newer one in the stored listing (a renamed-over file showed its old type: the
        kernel answered EIO, pjdfstest rename/09.t)."""
        if self.on_uploaded is None:
            return
        where = (job.bucket, job.key)
        newest = self._told.pop(where, job.id)
        self._told[where] = max(newest, job.id)  # re-inserted: the newest keys stay
        if newest > job.id:
            log.debug("landing of job %d of %s not told: job %d landed after it", job.id,
                      job.uri, newest)
            return
        if len(self._told) > TOLD_MAX:
            del self._told[next(iter(self._told))]
        try:  # with the size of what was uploaded, not of what is written now
            self.on_uploaded(job.bucket, job.key,
                             dataclasses.replace(result, size=job.size, posix=job.meta))
        except Exception:  # noqa: BLE001 - a listener must not stop the queue
            log.exception("on_uploaded listener failed for %s", job.uri)

    async def _flush_listeners(self, job: Job) -> None:
        """Wait until what the listeners wrote is on disk (before the journal forgets the
        job). Cancelled (at exit), the job stays journalled as uploading and is replayed."""
        writes = self.listener_writes
        if writes is None or not writes.queued():  # written at once (the usual case)
            return
        try:
            await trio.to_thread.run_sync(writes.flush, limiter=self._flushes,
                                          abandon_on_cancel=True)
        except Exception:  # noqa: BLE001 - a listener must not stop the queue
            log.exception("on_uploaded listeners not flushed for %s", job.uri)

    async def _record(self, job: Job, outcome: Callable[[], None]) -> None:
        """Write the outcome to the journal; while the disk is full, try again every
        RECORD_RETRY seconds instead of letting the error end the worker (and the daemon).
        Cancelled (at exit) between tries, the job stays journalled as uploading: the next
        start replays it, and the replay recognises bytes already in S3."""
        warned = False
        while True:
            with trio.CancelScope(shield=True):  # the bytes are in S3: record it even if cancelled
                try:
                    await self._io(outcome)
                    return
                except (S3FuseError, OSError, sqlite3.Error) as exc:  # CacheFull: disk full
                    if not warned:
                        log.warning("cannot record the upload of %s in the journal (%s): "
                                    "retrying every %.0fs", job.uri, exc, RECORD_RETRY)
                        warned = True
            await trio.sleep(RECORD_RETRY)

    def _keep(self, job: Job, result: UploadResult) -> None:
        try:
            self.keep_uploaded(job, result, self.staging.path(job.staging_id))  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a cache copy is an optimisation, never a failure
            log.debug("uploaded bytes of %s not kept in the cache", job.uri, exc_info=True)

    def _failure(self, job: Job, exc: BaseException, *, permanent: bool) -> Callable[[], None]:
        error = str(exc) or type(exc).__name__
        if permanent:
            log.error("upload of %s failed and is kept until retried: %s", job.uri, error)
            return functools.partial(self.journal.fail, job.id, error)
        delay = self.retry.delay(job.attempts)
        log.info("upload of %s failed (attempt %d), retrying in %.1fs: %s",
                 job.uri, job.attempts + 1, delay, error)
        return functools.partial(self.journal.requeue, job.id, error, delay)
