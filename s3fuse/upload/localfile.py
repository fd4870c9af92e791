"""One key being written: its staging file and the state machine of its lifecycle.

Every open handle of a key shares one LocalFile, so readers and writers of the same
file see the same bytes. What a flush, a write or the last close must do depends on
where the staging file stands with the upload queue; that is one explicit state,
changed only by the transition methods below. The write-back layer (writeback.py)
is the only caller of those transitions; every field is read-only from outside.
Disk I/O runs in threads (`limiter`).

States (`State`) — who holds the staging file, and whether the queue lacks its bytes:

- CLEAN: ours, nothing to upload (opened without change, a copy of the queued version,
  or a version dropped after a write error). A flush does nothing; the last close
  deletes the staging file.
- DIRTY: ours, changed since the last submit (or created/emptied by its open, or renamed).
  A flush submits it; the last close deletes it if it never was.
- QUEUED: submitted: the queue owns the staging file, which is now immutable, so a write
  first copies it (copy-on-write from the open descriptor: it works even after the
  upload deleted the file). A flush does nothing; the last close keeps the file.
- CLOSED: the last user is gone and the descriptor closed. Nothing is legal any more.

A new file's staging file is made by the first bytes that reach the disk. Writes of up to
PIECE_MAX bytes at the end of the file are gathered in memory, up to TAIL_MAX bytes (the
*tail*; TAILS_MAX over all files), and written to
the staging file by the next change that is not such an append, by the submit, or by a
read that reaches them (reads of the tail alone are answered from memory); the queue runs
the submit's last step (`settle`) in the thread that journals the file. So a small new
file costs one thread round trip from create to close, not three (create, write, journal),
and a writer of small pieces (`tar -x` writes 10 KiB at a time, `dd bs=4k` 4 KiB) one per
TAIL_MAX bytes instead of one per write(2). The cache disk's reserve is claimed at each
write, so ENOSPC from it still comes at write(2); a failure to write the tail itself (a
full disk, EFBIG) is owed like a failed write: the next change or close reports it and
the version is dropped, as a local file system reports a failed write-back.

Appends that do not fit the tail (a `cp`'s 1 MiB writes, or the piece that overflows a
full tail) are written *behind* (`_Behind`): the tail and the piece go to the staging file
in a worker thread while write(2) returns, one such write in flight per file. A 64 MiB
`cp` paid a thread hop per 1 MiB write (~0.45 ms: a third of its close's time over the
pyfuse3 floor); behind, the pwrite runs on the other core while the next write comes
through the kernel. Everything else that touches the staging file (a change that is not
such an append, a read reaching those bytes, a flush, the last close) first waits for it
(`written_behind`); its failure is owed like the tail's.

Orthogonal to the state: `unlinked` (the key was removed or renamed over while open:
never submitted again, the bytes live on for the open handles), `users` (open
handles), and `error` (the errno of a failed write or truncate, owed to the next flush).

| transition             | method             | from                  | to                          |
| ---------------------- | ------------------ | --------------------- | --------------------------- |
| open                   | `LocalFile(...)`   | -                     | CLEAN, 0 users              |
| first bytes            | `fill_from`        | CLEAN, 0 users        | CLEAN                       |
| created or emptied     | `created`          | CLEAN                 | DIRTY                       |
| a handle opens         | `adopt`            | not CLOSED            | same, users + 1             |
| write, truncate        | `write`,`truncate` | CLEAN, DIRTY          | DIRTY                       |
|                        |                    | QUEUED                | (copy: CLEAN) then DIRTY    |
| write fails            | `write`,`truncate` | not CLOSED            | unchanged (or CLEAN after   |
|                        |                    |                       | the copy), error = errno    |
| flush owes an error    | `take_error`       | DIRTY                 | CLEAN, error cleared        |
|                        |                    | CLEAN, QUEUED         | unchanged, error cleared    |
| flush submits          | `submitted`        | DIRTY, named          | QUEUED, job = the new job   |
| unlink, replaced       | `unlink`           | named, not CLOSED     | same, unlinked              |
| rename                 | `rename`           | CLEAN, DIRTY, named   | DIRTY under the new key     |
|                        |                    | QUEUED, named         | QUEUED (a staging file      |
|                        |                    |                       | already submitted as `key`) |
| a handle closes        | `release`          | users > 0             | same, users - 1             |
| last user gone         | `close`            | not CLOSED, 0 users   | CLOSED                      |

Anything else raises IllegalTransition: a bug in the caller, never an answer to a user.
"""
from __future__ import annotations

import enum
import errno
import functools
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, TypeVar

import trio

from ..cache.overlay import Change
from .journal import UNKNOWN, Expected
from .queue import FSYNC_AT_CLOSE
from .staging import Staging, start_writeback

T = TypeVar("T")

#: Start writeback of a file being written every so many bytes, so dirty pages never pile
#: up and the fsync at close waits for the last few MiB only.
WRITEBACK_STEP = 8 << 20
#: Bytes appended at the end of a file gathered in memory before one thread round trip
#: writes them (see the top): each write(2) through FUSE otherwise cost a hop to a worker
#: thread and back (~150 us here), 200 us per 4 KiB write against rclone's ~90 us; with
#: 128 KiB tails the hops were still a fifth of a 10 KiB writer's time.
TAIL_MAX = 1 << 20
#: Only writes of at most this much are appended to a tail: a bigger one is already
#: many bytes for one thread hop, and is written behind (see the top) or at once.
PIECE_MAX = 128 << 10
#: ... and in the tails of all files at once (a writer of 1,000 shards, appending to each
#: in turn, must not hold 1 MiB per file): past it, appends go to the staging file.
TAILS_MAX = 32 << 20
#: The most a submit may write on the trio loop (`settles_quickly`).
QUICK_SETTLE_MAX = 128 << 10


class TailBudget:
    """The bytes held in tails, over every LocalFile; taken on the loop, given back from
    the threads that write the tails out (hence the lock)."""

    def __init__(self, limit: int = TAILS_MAX):
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self, n: int) -> bool:
        with self._lock:
            if self._held + n > self.limit:
                return False
            self._held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self._held -= n


TAILS = TailBudget()


class _Behind:
    """Bytes appended at `at`, being written to the staging file by a worker thread."""

    __slots__ = ("pieces", "at", "size", "done", "error")

    def __init__(self, pieces: list[bytes | bytearray], at: int):
        self.pieces = pieces
        self.at = at
        self.size = sum(len(p) for p in pieces)
        self.done = trio.Event()
        self.error: OSError | None = None


class State(enum.Enum):
    CLEAN = "clean"
    DIRTY = "dirty"
    QUEUED = "queued"
    CLOSED = "closed"


OPEN = (State.CLEAN, State.DIRTY, State.QUEUED)


class IllegalTransition(RuntimeError):
    """A transition the state machine does not allow: a bug (the FUSE boundary logs it
    with its traceback and answers EIO)."""


class LocalFile:
    def __init__(self, staging: Staging, staging_id: str, path: Path | None, *, bucket: str,
                 key: str,
                 expected: Expected, change: Change, limiter: trio.CapacityLimiter):
        self.bucket = bucket
        self.lock = trio.Lock()  # writes, truncates, submits and renames one at a time
        #: Set while a flush journals this file (writeback.py): a removal of its key waits
        #: for it, so the version closed is journalled before the removal, never after.
        self.submitting: trio.Event | None = None
        self._staging = staging
        self._limiter = limiter
        self._staging_id = staging_id
        self._key = key
        self._expected = expected
        self._change = change
        # path None: a new file, whose staging file the first bytes on disk make (_file)
        self._fd: int | None = None if path is None else os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._size = 0 if self._fd is None else os.fstat(self._fd).st_size
        self._change.size = self._size
        self._state = State.CLEAN
        self._unlinked = False
        self._users = 0
        self.writers = 0  # write handles open on it (`s3fuse umount` refuses while any is)
        #: Its last version failed (a write or its journalling: ENOSPC) and was dropped:
        #: the kernel's size and pages are that version's, to be dropped (fs/ops.py).
        self.failed_version = False
        self._error: int | None = None
        self._job: int | None = None
        self._revision = 0
        self._written_back = 0        # writeback started up to here (sequential writers)
        self._crc: int | None = 0 if self._size == 0 else None  # see settle()
        self._tail = bytearray()  # bytes appended at _tail_at, not in the staging file yet
        self._tail_at = 0
        self._behind: _Behind | None = None  # bytes being written by a thread (see the top)

    # ------------------------------------------------------------ read-only view

    @property
    def state(self) -> State:
        """Where the staging file stands."""
        return self._state

    @property
    def key(self) -> str:
        """The key the file is uploaded as."""
        return self._key

    @property
    def staging_id(self) -> str:
        """The current staging file."""
        return self._staging_id

    @property
    def expected(self) -> Expected:
        """If-Match of the next submit: what S3 held when the file was opened."""
        return self._expected

    @property
    def change(self) -> Change:
        """The overlay entry: size, mtime and POSIX metadata as listings show them (the
        metadata, stamped with the time of the last write, is what the upload stores)."""
        return self._change

    @property
    def size(self) -> int:
        """The size of the local bytes."""
        return self._size

    @property
    def fd(self) -> int | None:
        """The staging file, open read-write (None: a new file none of whose bytes reached
        the disk yet; a submitted one always has it)."""
        return self._fd

    @property
    def users(self) -> int:
        """Open handles."""
        return self._users

    @property
    def unlinked(self) -> bool:
        """Removed (or renamed over) while open: never submitted again."""
        return self._unlinked

    @property
    def error(self) -> int | None:
        """The errno of a failed write or truncate, owed to the next flush."""
        return self._error

    @property
    def job(self) -> int | None:
        """The last submitted upload."""
        return self._job

    @property
    def revision(self) -> int:
        """Bumped by every change (the page-cache version)."""
        return self._revision

    @property
    def version(self) -> str:
        return f"local:{self._staging_id}:{self._revision}"

    @property
    def to_submit(self) -> bool:
        """Does the next flush (with no error owed) submit the file?"""
        return self._state is State.DIRTY and not self._unlinked

    def __repr__(self) -> str:
        return (f"<LocalFile s3://{self.bucket}/{self._key} {self._state.value}"
                f"{' unlinked' if self._unlinked else ''} users={self._users}>")

    # ------------------------------------------------------------ transitions

    def _require(self, *states: State, named: bool = False, idle: bool = False) -> None:
        if (self._state not in states or (named and self._unlinked)
                or (idle and self._users)):
            raise IllegalTransition(f"{self!r}: not {'/'.join(s.value for s in states)}"
                                    f"{', named' if named else ''}{', unused' if idle else ''}")

    async def fill_from(self, read: Callable[[int, int], Any], size: int, chunk: int = 8 << 20) -> None:
        """The first bytes: the current content (from S3 or the cache), before any user."""
        self._require(State.CLEAN, idle=True)
        offset = 0
        while offset < size:
            data = await read(offset, min(chunk, size - offset))
            if not data:
                raise OSError(f"s3://{self.bucket}/{self._key}: short read at {offset} of {size}")
            await self._io(self._fill, bytes(data), offset)
            offset += len(data)
        self._size = size
        self._change.size = size
        self._crc = 0 if size == 0 else None

    def created(self, mtime_ns: int | None = None) -> None:
        """A new or emptied file is a change even with no write (uploaded empty), made
        at `mtime_ns` (a new file: the time its create showed the kernel), else now."""
        self._require(State.CLEAN)
        self._state = State.DIRTY
        self._change.wrote(time.time_ns() if mtime_ns is None else mtime_ns)

    def adopt(self) -> None:
        """One more open handle."""
        self._require(*OPEN)
        self._users += 1

    def release(self) -> None:
        """One open handle fewer (the caller closes the file once none is left)."""
        if self._users <= 0:
            raise IllegalTransition(f"{self!r}: released more often than adopted")
        self._users -= 1

    async def write(self, offset: int, data: bytes, append: bool = False) -> int:
        """Write `data` at `offset`, or with `append` at the end of the file as it is when
        the write runs (O_APPEND: the kernel's offset is its idea of the size, which may
        be older than ours; libfuse leaves O_APPEND to the file system without the
        writeback cache)."""
        if self.lock.locked():
            await self.lock.acquire()
        else:  # taken at once, without `acquire`'s two trips through trio's scheduler:
            self.lock.acquire_nowait()  # they were a third of a 10 KiB writer's time
        try:
            if append:
                offset = self._size
            if self._tail_takes(offset, len(data)):
                self._append(data)  # no await: nothing else runs meanwhile
                written = len(data)
            elif self._behind_takes(offset, len(data)):
                written = await self._write_behind(data)
            else:
                written = await self._changing(self._pwrite, data, offset)
            return self._wrote(offset, written)
        finally:
            self.lock.release()

    def _wrote(self, offset: int, written: int) -> int:
        self._size = max(self._size, offset + written)
        self._changed()
        return written

    async def truncate(self, size: int) -> None:
        async with self.lock:
            await self._changing(self._ftruncate, size)
            if size != self._size:
                self._crc = 0 if size == 0 else None
            self._size = size
            self._changed()

    def _tail_takes(self, offset: int, size: int) -> bool:
        """Does this write go to the tail: at the end of a file of ours, with room left in
        the tail and on the cache disk? When the disk's room needs cached blocks evicted
        (disk work), the write goes to a thread, which evicts them or answers ENOSPC."""
        self._require(*OPEN)
        return (size <= PIECE_MAX and len(self._tail) + size <= TAIL_MAX
                and self._holds_append(offset, size))

    def _behind_takes(self, offset: int, size: int) -> bool:
        """Does this append go to the staging file behind the writer's back (see the top):
        at the end of a file of ours, with room in the tails' budget and on the cache disk
        by its free space now (one statvfs, microseconds: a disk another program filled
        since the last look fails this write(2) in a thread, not the next one)?"""
        return self._holds_append(offset, size, fresh=True)

    def _holds_append(self, offset: int, size: int, fresh: bool = False) -> bool:
        """May memory hold an append of `size` bytes at `offset` until a thread writes it:
        at the end of a file of ours, no error owed, room in the tails' budget (taken) and
        on the cache disk without evicting (`fresh`: by its free space now)?"""
        if (offset != self._size or self._state is State.QUEUED or self._error is not None
                or not TAILS.take(size)):
            return False
        if not self._staging.claim_now(size, fresh):
            TAILS.give(size)
            return False
        return True

    async def _write_behind(self, data: bytes) -> int:
        """Start writing the tail and `data` (appended at the end) in a thread, once the
        write behind before it is done; a failure of that one fails this write(2)."""
        try:
            await self._written_behind_or_raise()
        except OSError:
            TAILS.give(len(data))
            raise
        at = self._tail_at if self._tail else self._size
        pieces: list[bytes | bytearray] = [self._tail, data] if self._tail else [data]
        self._tail = bytearray()
        self._crc_appended(data)
        behind = self._behind = _Behind(pieces, at)
        trio.lowlevel.spawn_system_task(self._behind_task, behind, name="s3fuse write-behind")
        return len(data)

    async def _behind_task(self, behind: _Behind) -> None:
        try:
            await self._io(self._write_pieces, behind)
        except OSError as exc:
            behind.error = exc
        except Exception as exc:  # a system task's exception would end trio.run: owed as EIO
            behind.error = OSError(errno.EIO, f"write behind failed: {exc!r}")
        finally:
            TAILS.give(behind.size)
            behind.done.set()

    def _write_pieces(self, behind: _Behind) -> None:
        """pwritev of a write behind (blocking): the staging file holds it, or it raised."""
        fd = self._file()
        views = [memoryview(p) for p in behind.pieces]
        done = 0
        while done < behind.size:  # short only at a limit: the next call says which
            skip, rest = done, []
            for v in views:
                if skip >= len(v):
                    skip -= len(v)
                else:
                    rest.append(v[skip:])
                    skip = 0
            done += os.pwritev(fd, rest, behind.at + done)
        self._start_writeback(behind.at, behind.at + done)

    def _no_write_behind(self, doing: str) -> None:
        if self._behind is not None and not self._behind.done.is_set():
            raise IllegalTransition(f"{self!r}: {doing} with a write behind in flight")

    async def written_behind(self) -> None:
        """Wait until no write behind is in flight; its failure is owed (never raises)."""
        behind = self._behind
        if behind is None:
            return
        await behind.done.wait()
        if self._behind is behind:
            self._behind = None
            if behind.error is not None:
                self._error = behind.error.errno or errno.EIO

    async def _written_behind_or_raise(self) -> None:
        """written_behind, and a failure it owes fails the change that waited for it."""
        behind = self._behind
        await self.written_behind()
        if behind is not None and behind.error is not None:
            raise behind.error

    def _append(self, data: bytes) -> None:
        """Add `data` to the tail (at the end of the file; on the loop, with the lock held)."""
        if not self._tail:
            self._tail_at = self._size
        self._tail += data
        self._crc_appended(data)

    def _crc_appended(self, data: bytes) -> None:
        """The CRC with `data` appended at the end, while the file is written in order
        from empty and small enough for the queue to journal it with its CRC."""
        if self._crc is not None:
            end = self._size + len(data)
            self._crc = zlib.crc32(data, self._crc) if end <= FSYNC_AT_CLOSE else None

    async def _changing(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write or truncate on a staging file of ours (after the tail); a
        failure is owed to the next flush (ENOSPC: reported now, and again by close; see
        WriteBack.flush)."""
        self._require(*OPEN)
        try:
            await self._written_behind_or_raise()
            await self._own_copy()
            return await self._io(self._after_tail, fn, *args)
        except OSError as exc:
            self._error = exc.errno or errno.EIO
            raise

    def _after_tail(self, fn: Callable[..., T], *args: Any) -> T:
        self._write_tail()
        return fn(*args)

    def _write_tail(self) -> None:
        """The tail to the staging file (blocking; with the lock held). Its bytes stay
        readable from memory until written; a failure drops them and is owed."""
        tail, at = self._tail, self._tail_at
        if not tail:
            return
        try:  # no append meanwhile (they take the lock): the view cannot see a resize
            fd = self._file()
            done = 0
            with memoryview(tail) as view:
                while done < len(tail):  # short only at a limit: the next call says which
                    done += os.pwrite(fd, view[done:], at + done)
        except OSError as exc:
            self._error = exc.errno or errno.EIO
            raise
        finally:
            self._tail = bytearray()  # only now: a read meanwhile still finds them here
            TAILS.give(len(tail))
        self._start_writeback(at, at + done)

    @property
    def settles_quickly(self) -> bool:
        """Is `settle` microseconds of work: at most QUICK_SETTLE_MAX bytes to write, nothing to
        read back (the CRC is known) and no fsync (a small file)? The queue then runs it
        on the trio loop when it can (queue.py), saving a thread round trip per close."""
        return self._size <= QUICK_SETTLE_MAX and self._crc is not None

    def settle(self) -> tuple[int, int | None]:
        """For the submit, in the queue's thread (blocking; with the lock held): the tail
        reaches the staging file; returns its size and, when known, its CRC-32 (a file
        written in order from empty, up to FSYNC_AT_CLOSE bytes: the queue journals a small
        file with it and need not read it back; a larger one is fsynced instead)."""
        self._no_write_behind("settled")
        self._write_tail()
        self._file()  # a file never written is uploaded empty
        return self._size, self._crc

    def _file(self) -> int:
        """The staging file's descriptor, made first for a new file (blocking)."""
        if self._fd is None:
            self._fd = self._staging.make(self._staging_id)
        return self._fd

    def _fill(self, data: bytes, offset: int) -> int:
        return os.pwrite(self._file(), data, offset)

    async def _own_copy(self) -> None:
        """Copy-on-write: a submitted staging file belongs to the queue (QUEUED -> CLEAN)."""
        if self._state is not State.QUEUED:
            return
        copy_id, path = await self._io(self._staging.copy_fd, self._fd)
        old = self._fd
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        os.close(old)
        self._staging_id = copy_id
        self._expected = UNKNOWN  # based on the version just queued (the journal chains them)
        self._state = State.CLEAN

    def _changed(self) -> None:
        self._state = State.DIRTY
        self._revision += 1
        self._change.size = self._size
        self._change.wrote(time.time_ns())

    def _pwrite(self, data: bytes, offset: int) -> int:
        """pwrite, and every WRITEBACK_STEP bytes start writing them to disk (blocking)."""
        self._staging.claim(len(data))  # ENOSPC at the cache disk's reserve
        written = os.pwrite(self._file(), data, offset)
        end = offset + written
        if self._crc is not None:  # the lock is held: no other change meanwhile
            in_order = offset == self._size and end <= FSYNC_AT_CLOSE
            self._crc = zlib.crc32(memoryview(data)[:written], self._crc) if in_order else None
        self._start_writeback(offset, end)
        return written

    def _start_writeback(self, offset: int, end: int) -> None:
        """Every WRITEBACK_STEP bytes written, start writing them to disk (blocking)."""
        if end - self._written_back >= WRITEBACK_STEP:
            start = min(self._written_back, offset)
            start_writeback(self._fd, start, end - start)
            self._written_back = end

    def _ftruncate(self, size: int) -> None:
        os.ftruncate(self._file(), size)  # the descriptor after the copy-on-write, never before

    def take_error(self) -> int | None:
        """The errno owed to this flush, once; its version is dropped (never submitted)."""
        self._require(*OPEN)
        code, self._error = self._error, None
        if code is not None and self._state is State.DIRTY:
            self._state = State.CLEAN
            self.failed_version = True
        return code

    def submitted(self, job: int) -> None:
        """The queue journalled the staging file as `job`: it is the queue's now."""
        self._require(State.DIRTY, named=True)
        if self._error is not None:
            raise IllegalTransition(f"{self!r}: submitted with a write error owed")
        self._job = job
        self._state = State.QUEUED
        self.failed_version = False

    def unlink(self) -> None:
        """The key was removed (or renamed over): these bytes are never submitted again."""
        self._require(*OPEN, named=True)
        self._unlinked = True

    def rename(self, key: str, change: Change, *, expected: Expected = UNKNOWN,
               staging_id: str | None = None, job: int | None = None) -> None:
        """The file is `key` now. Its own bytes become a change of the new key (DIRTY),
        uploaded on the condition `expected` (what the renamer saw at `key`); a queued file
        needs `staging_id`, the queued bytes already submitted as `key` (`job`, on that
        condition: the next versions chain on it)."""
        self._require(*OPEN, named=True)
        if (self._state is State.QUEUED) != (staging_id is not None and job is not None):
            raise IllegalTransition(f"{self!r}: rename to {key!r} needs a submitted staging "
                                    "file exactly when queued")
        self._key = key
        self._expected = expected if staging_id is None else UNKNOWN
        self._change = change
        if staging_id is not None:
            self._staging_id = staging_id
            self._job = job
        else:
            self._state = State.DIRTY

    def close(self) -> str | None:
        """The last user is gone: close the descriptor. Returns the staging file nobody
        else holds (to be deleted), or None when the queue owns it."""
        self._require(*OPEN, idle=True)
        self._no_write_behind("closed")
        if self._fd is not None:
            os.close(self._fd)
        TAILS.give(len(self._tail))
        self._tail = bytearray()
        ours = None if self._state is State.QUEUED else self._staging_id
        self._state = State.CLOSED
        return ours

    # ------------------------------------------------------------ reads

    async def read(self, offset: int, size: int) -> bytes:
        """Every byte whose write returned before this read began, wherever it is: on
        disk, in the tail, or being written behind. Looked at again after every wait: a
        writer waiting meanwhile may have moved the tail into a new write behind."""
        self._require(*OPEN)
        while True:
            behind, tail, at = self._behind, self._tail, self._tail_at
            if behind is not None and not behind.done.is_set() and offset + size > behind.at:
                await self.written_behind()  # reaches bytes not on disk yet
                continue
            if tail and offset >= at:  # past the bytes on disk: from memory
                return bytes(tail[offset - at:offset - at + size])
            if not tail or offset + size <= at:
                break
            async with self.lock:  # partly in the tail: written out first (no write behind
                await self.written_behind()  # in flight then: it may make the file)
                await self._io(self._write_tail)
        if self._fd is None:  # nothing written yet
            return b""
        # A descriptor of its own: a write meanwhile may copy the file (`_own_copy`) and
        # close this one while the pread runs in its thread, and a number closed under a
        # pread can be another file's by then (EBADF, ESPIPE, or its bytes).
        fd = os.dup(self._fd)
        try:
            return await self._io(os.pread, fd, size, offset)
        finally:
            os.close(fd)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)
