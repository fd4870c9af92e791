"""Write-back: files written through the mount, from open to the upload queue.

The FUSE layer (through a bucket tree) opens a LocalFile per key, writes into its
staging file, and on the first flush after writes the file is submitted: journalled
(durable) and queued for upload. Until S3 has every change, the overlay shows the
local state (sizes, new files and directories, removals) and reads of a key are
served from its local bytes. Removals are journalled too, in order with the uploads
of the same key, so an unlink made offline happens when the link returns; they carry
the ETag the user saw, as uploads do, so a newer version written in S3 meanwhile by
someone else is kept rather than deleted (uploader.py). A rename onto an existing key
replaces it on the same condition.

POSIX metadata (posix.py) travels with the changes: a file's upload stores the metadata
of the version opened or created, stamped with the time of its last write unless set
explicitly since (rsync sets mtime after writing); `set_posix` (chmod, chown, utimens,
xattrs) rides along a local or pending version of the key, or journals a copy of the
object onto itself (coalesced; journal.py); symlinks and special files are small staged
uploads (`create_special`). The overlay shows the pending metadata until S3 has it, and
after a restart is rebuilt with it from the journal.

This module alone drives the state machine of a LocalFile (localfile.py: opens, flushes,
unlinks, renames, last closes); other layers hold LocalFiles only to read, write and
truncate them through their handles.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator, Protocol

import trio

from ..cache.overlay import Change, Overlay
from ..errors import S3FuseError
from ..posix import Posix
from ..util.supervisor import UPLOAD_CLEANUP
from .journal import UNKNOWN, Expected, Job
from .localfile import LocalFile, State
from .queue import UploadQueue
from .staging import Staging
from .uploader import UploadResult

log = logging.getLogger(__name__)

FSYNC_WAIT = 300.0  # fsync gives up waiting for the upload (the bytes stay journalled)
#: Bytes of room on the cache disk a change journalled after its S3 request needs first
#: (`room_for_change`): a journal row and a listing entry, with WAL pages to spare
CHANGE_ROOM = 256 << 10
#: (key, result; None for a removal) -> recorded (False: the overlay must keep the change)
Listener = Callable[[str, UploadResult | None], bool]
Reader = Callable[[int, int], Awaitable[bytes | memoryview]]


class UploadedBytes:
    """Keeps what was just uploaded in the block cache, under the new ETag, so a file
    written here stays readable offline after its upload (as if it had been read)."""

    def __init__(self, put: Callable[[str, str, str, int, bytes], None], block_size: int,
                 limit: int):
        self.put = put
        self.block_size = block_size
        self.limit = limit

    def __call__(self, job: Job, result: UploadResult, path: Path) -> None:
        if result.conflict_key is not None or not result.etag or job.size > self.limit:
            return
        with open(path, "rb") as fh:
            for index in range(-(-job.size // self.block_size)):
                self.put(job.bucket, job.key, result.etag, index, fh.read(self.block_size))


class Follower(Protocol):
    """A read handle of a key that switches to the key's newest version once it is marked
    stale (tree/bucket/localsource.py, FollowingReader)."""

    bucket: str
    key: str
    stale: bool

    def take(self, local: LocalFile) -> None:
        """Read `local` from the next read on (the key's file, losing its name)."""


class StagedFile:
    """A read-only view of a key's pending local bytes (a staging file the queue holds)."""

    def __init__(self, fd: int, version: str, limiter: trio.CapacityLimiter):
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.version = version
        self._limiter = limiter

    async def read(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, self.fd, size, offset, limiter=self._limiter)

    def close(self) -> None:
        os.close(self.fd)


class WriteBack:
    def __init__(self, queue: UploadQueue, staging: Staging, overlay: Overlay):
        self.queue = queue
        self.staging = staging
        self.overlay = overlay
        self.limiter = trio.CapacityLimiter(4)
        self._open: dict[tuple[str, str], LocalFile] = {}
        self._unjournalled: dict[tuple[str, str], int] = {}  # changes shown, not journalled yet
        self._new_bytes: dict[tuple[str, str], int] = {}  # ... of them with bytes of their own
        self._listeners: dict[str, list[Listener]] = defaultdict(list)
        self._making_spares = False
        self._followers: dict[tuple[str, str], set[Follower]] = {}  # read handles by key
        # keys whose LocalFile an open is making (copying the pending version, or S3's
        # bytes): a second open waits and shares it; it made a copy of its own, and one
        # writer's bytes were lost at the close
        self._making: dict[tuple[str, str], trio.Event] = {}
        queue.on_uploaded = self._uploaded

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Replay the journal and show its pending changes (before the mount serves)."""
        await self.queue.start()
        jobs = await trio.to_thread.run_sync(self.queue.journal.pending)
        for job in jobs:
            if job.op == "delete":
                self.overlay.delete(job.bucket, job.key)
            elif job.key.endswith("/"):
                self.overlay.directory(job.bucket, job.key, job.meta)
            else:
                await self._show_pending(job)
        if jobs:
            log.info("%d change(s) from before the restart still to send to S3", len(jobs))

    async def _show_pending(self, job: Job) -> None:
        """The overlay of a file's newest journalled change: its pending bytes (with the
        metadata they will store), or new metadata of the bytes S3 has."""
        path = self.queue.pending_version(job.bucket, job.key)
        if path is None:
            if job.op == "meta" and job.meta is not None:
                etag = job.expected if isinstance(job.expected, str) else ""
                self.overlay.metadata(job.bucket, job.key, job.meta, size=job.size, etag=etag,
                                      mtime_ns=int(job.created * 1e9))
            return
        try:
            st = await trio.to_thread.run_sync(path.stat)
        except OSError:
            return
        stored = job.meta.mtime_ns if job.meta is not None else None
        self.overlay.file(job.bucket, job.key, st.st_size,
                          st.st_mtime_ns if stored is None else stored, job.meta)

    def watch(self, bucket: str, listener: Listener) -> None:
        """Tell `listener` (a bucket tree) when a key of `bucket` reached S3."""
        self._listeners[bucket].append(listener)

    def _uploaded(self, bucket: str, key: str, result: UploadResult) -> None:
        recorded = True
        for listener in self._listeners.get(bucket, ()):
            # no ETag: a removal, unless the remote version won (it may be gone: look again)
            told = listener(key, result if result.etag or result.kept_remote else None)
            recorded = recorded and told is not False
        local = self._open.get((bucket, key))
        if local is not None:
            if (local.state is State.QUEUED and not result.kept_remote
                    and self._landed_whole(bucket, key, result)
                    and local.change is self.overlay.get(bucket, key)):
                # Open, and unchanged since this version was submitted (an fsync, then an
                # fchmod before the close, as vim saves): S3 has its bytes under this ETag,
                # so a metadata change made now is a copy of that version, and reads after
                # the close go to it (an empty ETag there read whatever version the block
                # cache held under no ETag: the one before).
                local.change.etag = result.etag
            return
        if (bucket, key) in self._new_bytes:
            return  # newer bytes are shown and being journalled: this landing is older
        if (recorded and not self.queue.pending(bucket, key)
                and (bucket, key) not in self._unjournalled):
            self.overlay.clear(bucket, key)
        elif self._landed_whole(bucket, key, result):
            # (or not recorded in the stored listing, a full disk: the overlay keeps showing
            # the file, as S3's version, until a telling of a landing is recorded)
            # only metadata changes are left: the bytes shown are S3's version now
            change = self.overlay.get(bucket, key)
            if change is not None and not change.deleted and not change.is_dir:
                change.etag = result.etag

    def _landed_whole(self, bucket: str, key: str, result: UploadResult) -> bool:
        """Did a version land as `result.etag` with no bytes of the key left in the queue
        (and not as a conflict copy)?"""
        return bool(result.etag and result.conflict_key is None
                    and self.queue.pending_version(bucket, key) is None)

    # ------------------------------------------------------------ files

    def local(self, bucket: str, key: str) -> LocalFile | None:
        return self._open.get((bucket, key))

    def has_local(self, bucket: str, key: str) -> bool:
        return (bucket, key) in self._open or self.queue.pending_version(bucket, key) is not None

    async def open(self, bucket: str, key: str, *, truncate: bool, expected: Expected,
                   size: int = 0, read: Reader | None = None,
                   posix: Posix | None = None, mtime_ns: int | None = None) -> LocalFile:
        """The LocalFile of a key (shared with its other handles), one more user.

        Its starting bytes: nothing with `truncate`, else the pending local version, else
        `size` bytes from `read` (the object in S3, through the block cache). `posix`: the
        metadata of the version opened or created (pending metadata of the key wins), which
        its upload stores with the time of the last write. `mtime_ns`: the version's mtime
        when `posix` stores none (an object without headers shows LastModified), shown
        until a write: an open alone showed "now", and `touch -a` (an open, then futimens
        of the times shown) stored it as the new mtime."""
        where = (bucket, key)
        while (making := self._making.get(where)) is not None:
            await making.wait()  # another open is making the key's LocalFile: share it
        local = self._open.get(where)
        if local is None:
            self._making[where] = made = trio.Event()
            try:
                local = await self._new_local(bucket, key, truncate, expected, size, read, posix,
                                              mtime_ns)
            finally:
                del self._making[where]
                made.set()
            local.adopt()  # no wait since it was made: the others wake after this
            local.writers += 1  # until `release(writer=True)`
            # read handles opened meanwhile (on the pending version) are followers too
            self._stale_followers(bucket, key)
            return local
        if local.change.posix is None and posix is not None:
            local.change.posix = posix
        local.adopt()  # before any wait: the last other handle closing meanwhile keeps it open
        if truncate and local.size:
            try:
                await local.truncate(0)
            except BaseException:
                local.release()
                if local.users == 0:
                    await self._close(local)
                raise
        local.writers += 1  # until `release(writer=True)`
        self._stale_followers(bucket, key)
        return local

    async def _new_local(self, bucket: str, key: str, truncate: bool, expected: Expected,
                         size: int, read: Reader | None, posix: Posix | None,
                         mtime_ns: int | None = None) -> LocalFile:
        pending = None if truncate else self.queue.pending_version(bucket, key)
        if pending is not None:
            try:
                staging_id, path = await trio.to_thread.run_sync(self.staging.copy, pending.name)
                expected = UNKNOWN  # based on the pending version: the journal chains them
            except FileNotFoundError:  # uploaded meanwhile: S3 has these bytes
                pending = None
        if pending is None:  # its staging file is made by its first bytes (localfile.py)
            staging_id, path = self.staging.new_id(), None
            self._make_spares()
        change = self.overlay.get(bucket, key)
        if change is None or change.deleted or change.is_dir:
            change = self.overlay.file(bucket, key, 0, None if truncate else mtime_ns, posix=posix)
        elif change.posix is None:
            change.posix = posix
        local = LocalFile(self.staging, staging_id, path, bucket=bucket, key=key,
                          expected=expected, change=change, limiter=self.limiter)
        try:
            if pending is None and not truncate and read is not None and size:
                await local.fill_from(read, size)
        except BaseException:
            await self._discard(local.close())
            raise
        if truncate or (pending is None and read is None):
            # a new file (nothing expected in S3) keeps the mtime its create showed
            local.created(posix.mtime_ns if expected is None and posix is not None else None)
        self._open[(bucket, key)] = local
        return local

    def _make_spares(self) -> None:
        """Make staging files ahead in a worker thread when few are left (staging.SPARES)."""
        if self._making_spares or not self.staging.wants_spares():
            return
        self._making_spares = self.queue.background.spawn(self._spares, kind=UPLOAD_CLEANUP)

    async def _spares(self) -> None:
        try:
            await trio.to_thread.run_sync(self.staging.make_spares, limiter=self.limiter)
        finally:
            self._making_spares = False

    def open_for_writing(self) -> int:
        """Files written through the mount that a handle still holds open (`s3fuse umount`
        refuses to cut them off)."""
        return sum(1 for local in self._open.values() if local.writers)

    async def submit_open(self) -> None:
        """At unmount: journal what the files still open hold so far, as their close would.
        Their handles stop working with the mount; their bytes were discarded as "writes
        never closed" at the next start."""
        for local in list(self._open.values()):
            try:
                async with local.lock:
                    if local.state is not State.CLOSED:
                        await self._flush(local)
            except (OSError, S3FuseError, sqlite3.Error) as exc:  # a full disk (CacheFull),
                # a failed write: that version cannot go, the others still may
                log.warning("s3://%s/%s, open at unmount, not journalled: %s", local.bucket,
                            local.key, exc)

    async def flush(self, local: LocalFile, *, hold: bool = False,
                    held: int | None = None) -> int | None:
        """Close semantics: journal and queue the file if it changed since its last submit.
        `hold`: a writer handle's flush, whose upload waits for the handle's `release`
        (the handle stays open: its release follows, or this was a forked child's close
        of its copy; queue.py, `hold`); `held`: the job that handle holds already.
        Returns the job it holds now."""
        async with local.lock:
            if not hold:
                await self._flush(local)
                return held
            before = local.job
            with self.queue.holding_key(local.bucket, local.key):
                await self._flush(local)
                if local.job is None or local.job == before:
                    return held
                self.queue.hold(local.job)  # before the key's hold ends: no await between
            if held is not None:
                self.queue.unhold(held)  # superseded by the new one
            return local.job

    async def _flush(self, local: LocalFile) -> None:
        """flush with `local.lock` held."""
        await local.written_behind()
        self._owed(local)
        if not local.to_submit:
            return
        # Not journalled (e.g. a full disk) raises: the file stays DIRTY, ours to write.
        submitting = local.submitting = trio.Event()
        try:
            try:
                job = await self.queue.submit(local.bucket, local.key, local.staging_id,
                                              local.expected, local.change.posix,
                                              settle=local.settle, quick=local.settles_quickly)
            except OSError:
                self._owed(local)  # its tail could not be written: owed now
                raise
            local.submitted(job)
        finally:
            local.submitting = None
            submitting.set()
        log.debug("queued s3://%s/%s (%d bytes)", local.bucket, local.key, local.size)

    @staticmethod
    def _owed(local: LocalFile) -> None:
        """Raise the error a write of `local` left for this flush, if any."""
        code = local.take_error()
        if code is not None:
            # A write failed (ENOSPC): close reports it, once, like a local file system
            # reports a failed write-back, and that version is never uploaded (S3 and
            # the queue keep the last good one). Writes after this start a new version.
            raise OSError(code, f"{os.strerror(code)}: a write to s3://{local.bucket}/"
                                f"{local.key} failed, this version is not uploaded")

    async def release(self, local: LocalFile, writer: bool = True, held: int | None = None) -> None:
        """A handle is gone: a writer's (one `open` made) or the last one queues what is not
        queued yet; `held`: the job its last flush holds (flush), which may upload now."""
        local.release()
        if writer:
            local.writers = max(0, local.writers - 1)
        if held is not None:
            self.queue.unhold(held)
        try:
            if writer or local.users == 0:
                async with local.lock:
                    # Two last handles released while one flush waited: the first to
                    # finish closed the file, and nothing was left for the other.
                    if local.state is not State.CLOSED:
                        await self._flush(local)
        finally:  # a failed flush (reported by close already) must not leak the file
            if local.users == 0 and local.state is not State.CLOSED:
                await self._close(local)

    async def _close(self, local: LocalFile) -> None:
        """The last handle is gone: forget the LocalFile (and its staging file unless queued)."""
        await local.written_behind()  # its thread writes to the descriptor close closes
        ours = local.close()
        if self._open.get((local.bucket, local.key)) is local:
            del self._open[(local.bucket, local.key)]
        await self._discard(ours)  # never submitted (or removed before): not the queue's
        if (not self.queue.pending(local.bucket, local.key)   # opened, never changed:
                and (local.bucket, local.key) not in self._unjournalled):  # S3 is right
            self.overlay.clear(local.bucket, local.key, local.change.generation)

    async def _discard(self, staging_id: str | None) -> None:
        if staging_id is not None:
            await trio.to_thread.run_sync(self.staging.discard, staging_id)

    async def fsync(self, local: LocalFile) -> None:
        """Durable: uploaded while online; offline (or after FSYNC_WAIT), journalled on disk."""
        await self.flush(local)
        if local.job is None:
            return
        self.queue.unhold(local.job)  # a writer's last flush held it: fsync means now
        with trio.move_on_after(FSYNC_WAIT) as waited:
            uploaded = await self.queue.wait(local.job)  # UploadFailed (EIO): failed for good
        if waited.cancelled_caught or not uploaded:
            await self.queue.make_durable()  # a small file's staging file is fsynced now
        if waited.cancelled_caught:
            log.warning("fsync of s3://%s/%s: upload not done after %.0fs; the bytes are "
                        "journalled and will be uploaded", local.bucket, local.key, FSYNC_WAIT)

    def reader(self, bucket: str, key: str) -> LocalFile | StagedFile | None:
        """What a read-only open of `key` must read, when its newest bytes are local."""
        local = self._open.get((bucket, key))
        if local is not None:
            local.adopt()  # released by the handle's close
            return local
        path = self.queue.pending_version(bucket, key)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # uploaded meanwhile
            return None
        return StagedFile(fd, f"local:{path.name}", self.limiter)

    # ------------------------------------------------------------ names

    async def remove(self, bucket: str, key: str, expected: Expected = UNKNOWN) -> None:
        """Unlink a file or remove a directory marker (`key` ending with '/'); `expected`:
        the ETag the user saw (UNKNOWN for local changes: the journal chains them)."""
        await self._replace(bucket, key)
        await self.queue.delete(bucket, key, expected)
        self.overlay.delete(bucket, key)

    async def make_dir(self, bucket: str, marker: str, posix: Posix | None = None) -> None:
        """A directory: an empty `dir/` marker object (with the directory's metadata
        `posix`), queued like any upload."""
        staging_id, _ = await trio.to_thread.run_sync(self.staging.create)
        with self._journalling(bucket, marker):
            change = self.overlay.directory(bucket, marker, posix)
            async with self._undone_on_failure(bucket, marker, change, staging_id):
                await self.queue.submit(bucket, marker, staging_id, UNKNOWN, posix)

    async def create_special(self, bucket: str, key: str, body: bytes, posix: Posix,
                             expected: Expected) -> None:
        """A symlink (`body`: its target) or a fifo, socket or device node (empty body),
        typed by `posix`'s mode: a small staged upload, journalled like a closed file."""
        staging_id, path = await trio.to_thread.run_sync(self.staging.create)
        with self._journalling(bucket, key, new_bytes=True):
            change = self.overlay.file(bucket, key, len(body), posix=posix)
            async with self._undone_on_failure(bucket, key, change, staging_id):
                await trio.to_thread.run_sync(path.write_bytes, body, limiter=self.limiter)
                await self.queue.submit(bucket, key, staging_id, expected, posix)

    @contextlib.asynccontextmanager
    async def _undone_on_failure(self, bucket: str, key: str, change: Change,
                                 staging_id: str) -> AsyncIterator[None]:
        """A new key shown by `change` and staged in `staging_id`, both undone when the
        block (its journalling) fails: a mkdir that answered ENOSPC on a full disk was
        listed all the same, and never reached S3."""
        try:
            yield
        except BaseException:
            self.overlay.clear(bucket, key, change.generation)
            await self._discard(staging_id)
            raise

    async def room_for_change(self) -> None:
        """Room on the cache disk to journal a change (evicting cached blocks for it), or
        ENOSPC: asked before an S3 change that must be journalled after it (a rename's
        server-side copy), so that a full disk fails it before anything happened."""
        await trio.to_thread.run_sync(functools.partial(self.staging.claim, CHANGE_ROOM, fresh=True),
                                      limiter=self.limiter)

    def posix(self, bucket: str, key: str) -> Posix | None:
        """The metadata a pending change of `key` will store (None: none pending)."""
        change = self.overlay.get(bucket, key)
        return None if change is None or change.deleted else change.posix

    async def set_posix(self, bucket: str, key: str, posix: Posix, *, expected: Expected,
                        size: int, is_dir: bool = False) -> None:
        """The complete new metadata of `key` (a file, or a directory's `dir/` marker key).

        It rides along the key's open version (stored by its upload at close) or its queued
        one; else it is journalled as a copy of the object onto itself, on the condition
        `expected` (the ETag the caller saw; `size`: the object's). A directory with no
        marker (`expected` None) gets one, with the metadata."""
        local = self._open.get((bucket, key))
        if local is not None:
            async with local.lock:
                if self._open.get((bucket, key)) is local and local.to_submit:
                    local.change.set_posix(posix)  # its close uploads it
                    return
        if is_dir and expected is None and not self.queue.pending(bucket, key):
            await self.make_dir(bucket, key, posix)
            return
        with self._journalling(bucket, key):
            restore = self._show_posix(bucket, key, posix, size, expected)
            try:
                await self.queue.set_meta(bucket, key, posix, size, expected)
            except BaseException:
                restore()
                raise

    @contextlib.contextmanager
    def _journalling(self, bucket: str, key: str, new_bytes: bool = False) -> Iterator[None]:
        """A change of `key` is shown and not journalled yet: an older job of the key that
        finishes meanwhile must not clear what the overlay shows (`_uploaded`). With
        `new_bytes` (a moved or special file) it must not give the change its ETag either:
        that is the older version's (a metadata change of the same bytes takes it: they
        are S3's now)."""
        counts = (self._unjournalled, self._new_bytes) if new_bytes else (self._unjournalled,)
        for count in counts:
            count[(bucket, key)] = count.get((bucket, key), 0) + 1
        try:
            yield
        finally:
            for count in counts:
                left = count.pop((bucket, key)) - 1
                if left:
                    count[(bucket, key)] = left

    def _show_posix(self, bucket: str, key: str, posix: Posix, size: int,
                    expected: Expected) -> Callable[[], None]:
        """Show `posix` on the key's change (a new metadata-only one when it has none);
        returns what undoes it."""
        change = self.overlay.get(bucket, key)
        if change is None or change.deleted:
            etag = expected if isinstance(expected, str) else ""
            created = self.overlay.metadata(bucket, key, posix, size=size, etag=etag,
                                            mtime_ns=time.time_ns())
            return lambda: self.overlay.clear(bucket, key, created.generation)
        before = (change.posix, change.mtime_ns)

        def restore(change: Change = change) -> None:
            change.posix, change.mtime_ns = before
        change.set_posix(posix)
        return restore

    async def move_local(self, bucket: str, old: str, new: str,
                         target: Expected = UNKNOWN) -> bool:
        """Rename a key whose newest bytes are local: the new key gets them (a hard link
        of the staging file, or the open file itself), uploaded on the condition `target`
        (what the user saw at `new`: its ETag, None for nothing), and the old key is
        removed. False (and nothing done) when the local version was uploaded meanwhile:
        S3 has it."""
        moved = False
        removal: Expected = UNKNOWN  # queued versions of `old`: the journal chains them
        local = self._open.get((bucket, old))
        if local is not None:
            async with local.lock:
                if self._open.get((bucket, old)) is local:  # else its last close queued it
                    removal = await self._move_open(local, new, target)
                    moved = True
        if not moved and not await self._move_pending(bucket, old, new, target):
            return False
        self.move_followers(bucket, old, new)
        await self.queue.delete(bucket, old, removal)
        self.overlay.delete(bucket, old)
        return True

    async def _move_pending(self, bucket: str, old: str, new: str, target: Expected) -> bool:
        """Rename a key whose newest bytes wait in the queue: `new` gets a hard link."""
        pending = self.queue.pending_version(bucket, old)
        # the pending metadata goes with the bytes: read now, as the version is: the upload
        # may land while the staging file is cloned, and its landing clears the overlay
        meta = self.posix(bucket, old)
        try:
            if pending is None:
                raise FileNotFoundError(old)
            clone_id, path = await trio.to_thread.run_sync(self.staging.clone, pending.name)
        except FileNotFoundError:
            return False
        size = (await trio.to_thread.run_sync(path.stat)).st_size
        await self._replace(bucket, new)
        with self._journalling(bucket, new, new_bytes=True):
            self.overlay.file(bucket, new, size, posix=meta)
            await self.queue.submit(bucket, new, clone_id, target, meta)
        return True

    async def _move_open(self, local: LocalFile, new: str, target: Expected) -> Expected:
        """Rename an open file (with `local.lock` held). A queued one is submitted as `new`
        at once (a hard link of its queued bytes: they were closed, and the removal of the
        old key is journalled next); one with bytes of its own is submitted by its close.
        Both on the condition `target`. Returns the condition of the old key's removal."""
        bucket, old = local.bucket, local.key
        # A queued version was based on what the writer saw at open, but may be in S3 by
        # now (fsync): its removal follows it (the journal chains them), never "absent".
        removal = UNKNOWN if local.state is State.QUEUED else local.expected
        staging_id = job = None
        if local.state is State.QUEUED:
            try:
                staging_id, _ = await trio.to_thread.run_sync(self.staging.clone,
                                                              local.staging_id)
            except FileNotFoundError:  # uploaded and deleted meanwhile: copy the open file
                staging_id, _ = await trio.to_thread.run_sync(self.staging.copy_fd, local.fd)
        await self._replace(bucket, new)
        if staging_id is not None:
            try:
                # a handle's flush may hold the old key's version: so is its new one
                with self.queue.holding_key(bucket, new):
                    job = await self.queue.submit(bucket, new, staging_id, target,
                                                  local.change.posix)
                    if local.job is not None:
                        self.queue.hold_as(local.job, job)
            except BaseException:  # not journalled: the rename fails, the file stays `old`
                await self._discard(staging_id)
                raise
        del self._open[(bucket, old)]
        moved = self.overlay.file(bucket, new, local.size, local.change.mtime_ns,
                                  local.change.posix)
        local.rename(new, moved, expected=target, staging_id=staging_id, job=job)
        self._open[(bucket, new)] = local
        if local.users == 0:
            await self._flush(local)
        return removal

    # ------------------------------------------------------------ read handles

    def follow(self, follower: Follower) -> None:
        """`follower` (a read handle of its key) is marked stale when the key is opened for
        writing here, until `unfollow` or the key's file goes (unlinked, replaced)."""
        self._followers.setdefault((follower.bucket, follower.key), set()).add(follower)

    def unfollow(self, follower: Follower) -> None:
        where = (follower.bucket, follower.key)
        followers = self._followers.get(where)
        if followers is not None:
            followers.discard(follower)
            if not followers:
                del self._followers[where]

    def _stale_followers(self, bucket: str, key: str) -> None:
        for follower in self._followers.get((bucket, key), ()):
            follower.stale = True

    def move_followers(self, bucket: str, old: str, new: str) -> None:
        """The file at `old` is `new` now: its read handles follow it there."""
        moved = self._followers.pop((bucket, old), set())
        for follower in moved:
            follower.key = new
            follower.stale = True  # its next read reopens there: `old` is deleted in S3
        if moved:
            self._followers.setdefault((bucket, new), set()).update(moved)

    async def _replace(self, bucket: str, key: str) -> None:
        """A file open under `key` loses its name (it lives on for its handles), and read
        handles of it stop following the key (a new file there is another file).

        A close of that file journalling its version meanwhile finishes first: unlinked
        in the middle, the close failed (EIO) while its version stayed queued, and that
        version, journalled after the removal, landed as a conflict copy of a file the user
        had removed. Waiting takes no lock: the flush waits for nothing of other files."""
        replaced = self._open.get((bucket, key))
        while replaced is not None and replaced.submitting is not None:
            await replaced.submitting.wait()
            replaced = self._open.get((bucket, key))
        followers = self._followers.pop((bucket, key), ())
        replaced = self._open.pop((bucket, key), None)
        for follower in followers:
            if follower.stale and replaced is not None:
                follower.take(replaced)  # a writer changed it: the reader reads its bytes
            else:
                follower.stale = False  # keeps what it reads: the key names another file
        if replaced is not None:
            replaced.unlink()

    def settled(self, bucket: str, key: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """For a change of `key` made on S3's version (a rename's copy, an unlink): no change
        of it starts while the block runs, and a metadata copy being sent ends first; True
        when one did (S3's ETag may be new). queue.py."""
        return self.queue.settled(bucket, key)

    async def forget(self, bucket: str, key: str) -> None:
        """Drop the local changes of a key about to be overwritten in S3 directly (a rename
        onto it): its queued versions must not land after the new object."""
        await self._replace(bucket, key)
        await self.queue.cancel(bucket, key)
        self.overlay.clear(bucket, key)
