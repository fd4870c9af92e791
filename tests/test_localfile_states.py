"""The lifecycle of a locally written file (upload/localfile.py) as driven by the write-back
layer (upload/writeback.py): every legal transition, illegal ones refused, copy-on-write
after a submit, a failed write reported once, unlink and rename while open, the last close.

Real staging files in tmp_path and a small recording stand-in for the upload queue; a
write fails for real by lowering RLIMIT_FSIZE (EFBIG), as a full disk fails with ENOSPC.
"""
from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

from s3fuse.errors import CacheFull
from s3fuse.cache.overlay import Overlay
from s3fuse.posix import Posix
from s3fuse.upload import UNKNOWN, Staging
from s3fuse.upload.journal import Expected
from s3fuse.upload.localfile import IllegalTransition, LocalFile, State, TailBudget
from s3fuse.upload.writeback import WriteBack
from s3fuse.util.supervisor import Supervisor

B = "bucket"


@dataclass
class Submitted:
    key: str
    staging_id: str
    expected: Expected
    data: bytes  # the staging file's bytes when submitted: they must never change
    meta: Posix | None = None  # the POSIX metadata the upload stores


class RecordingQueue:
    """The upload queue as the write-back layer sees it: it records submits and removals
    and holds the newest staging file per key, as the real one does, until `upload`."""

    def __init__(self, staging: Staging):
        self.staging = staging
        self.on_uploaded: Callable[[str, str, Any], None] | None = None
        self.submits: list[Submitted] = []
        self.deletes: list[str] = []
        self.latest: dict[str, str] = {}    # key -> staging id ("" for a removal)
        self.refuse: OSError | None = None  # the next submit fails (a full journal)
        self.gate: trio.Event | None = None  # submits wait for it
        self.known: list[bool] = []          # per settled submit: was the CRC known?
        self.background = Supervisor()       # unbound: no staging files made ahead here
        self.quick: list[bool] = []          # per submit: may it settle on the loop?

    @contextlib.contextmanager
    def holding_key(self, bucket: str, key: str) -> Iterator[None]:
        yield  # holds are the real queue's (tests/test_queue_unit.py)

    def hold(self, job_id: int) -> None:
        pass

    def hold_as(self, job_id: int, successor: int) -> None:
        pass

    def unhold(self, job_id: int) -> None:
        pass

    async def submit(self, bucket: str, key: str, staging_id: str,
                     expected: Expected = UNKNOWN, meta: Posix | None = None,
                     settle: Callable[[], tuple[int, int | None]] | None = None,
                     quick: bool = False) -> int:
        self.quick.append(quick)
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse is not None:
            exc, self.refuse = self.refuse, None
            raise exc
        known = None if settle is None else await trio.to_thread.run_sync(settle)
        data = self.staging.path(staging_id).read_bytes()
        if known is not None:  # what the writer kept track of is what the file holds
            size, crc = known
            assert size == len(data) and crc in (None, zlib.crc32(data)), (known, data[:40])
            self.known.append(crc is not None)
        self.submits.append(Submitted(key, staging_id, expected, data, meta))
        self.latest[key] = staging_id
        return len(self.submits)

    async def delete(self, bucket: str, key: str, expected: Expected = UNKNOWN) -> int:
        self.deletes.append(key)
        self.latest[key] = ""
        return -len(self.deletes)

    async def cancel(self, bucket: str, key: str) -> None:
        self.latest.pop(key, None)

    def pending(self, bucket: str, key: str) -> bool:
        return key in self.latest

    def pending_version(self, bucket: str, key: str) -> Path | None:
        staging_id = self.latest.get(key)
        return self.staging.path(staging_id) if staging_id else None

    def upload(self, key: str) -> None:
        """The newest version of `key` reached S3: its staging file is deleted."""
        self.staging.discard(self.latest.pop(key))

    def keys(self) -> list[str]:
        return [s.key for s in self.submits]


@dataclass
class Rig:
    writes: WriteBack
    queue: RecordingQueue
    staging: Staging
    overlay: Overlay

    def files(self) -> set[str]:
        return self.staging.ids()

    def bytes_of(self, local: LocalFile) -> bytes:
        return self.staging.path(local.staging_id).read_bytes()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    staging = Staging(tmp_path / "staging")
    queue = RecordingQueue(staging)
    overlay = Overlay()
    return Rig(WriteBack(queue, staging, overlay), queue, staging, overlay)  # type: ignore[arg-type]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG (a real failing write, like ENOSPC)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


async def new_file(rig: Rig, key: str = "k") -> LocalFile:
    return await rig.writes.open(B, key, truncate=True, expected=None)


async def existing_file(rig: Rig, data: bytes, key: str = "k") -> LocalFile:
    async def read(offset: int, size: int) -> bytes:
        return data[offset:offset + size]
    return await rig.writes.open(B, key, truncate=False, expected="etag0", size=len(data),
                                 read=read)


# ------------------------------------------------------------------ legal transitions

async def test_new_file_write_flush_copy_on_write_and_close(rig: Rig):
    local = await new_file(rig)
    assert (local.state, local.users, local.unlinked) == (State.DIRTY, 1, False)  # created
    assert local.expected is None  # If-None-Match: it did not exist

    await local.write(0, b"hello")
    assert (local.state, local.size, local.revision) == (State.DIRTY, 5, 1)
    assert rig.overlay.get(B, "k").size == 5

    await rig.writes.flush(local)  # close of a writer: submitted, the queue's now
    first = local.staging_id
    assert (local.state, local.job) == (State.QUEUED, 1)
    assert [(s.key, s.staging_id, s.expected, s.data) for s in rig.queue.submits] == \
        [("k", first, None, b"hello")]

    await rig.writes.flush(local)  # nothing written since: nothing submitted
    assert len(rig.queue.submits) == 1

    await local.write(5, b" world")  # copy-on-write: the submitted file stays as it was
    assert local.state is State.DIRTY and local.staging_id != first
    assert local.expected is UNKNOWN  # based on the version just queued
    assert rig.staging.path(first).read_bytes() == b"hello"
    assert rig.bytes_of(local) == b"hello world"
    assert await local.read(0, 100) == b"hello world"

    await rig.writes.release(local)  # the last writer closes: submitted, then closed
    assert (local.state, local.users, local.job) == (State.CLOSED, 0, 2)
    assert [s.data for s in rig.queue.submits] == [b"hello", b"hello world"]
    assert rig.files() == {first, rig.queue.submits[1].staging_id}  # both the queue's
    assert rig.writes.local(B, "k") is None


async def test_opened_unchanged_is_clean_and_its_close_discards_everything(rig: Rig):
    local = await existing_file(rig, b"from s3")
    assert (local.state, local.size, local.expected) == (State.CLEAN, 7, "etag0")
    assert await local.read(0, 100) == b"from s3"
    reader = rig.writes.reader(B, "k")  # a read-only open shares it
    assert reader is local and local.users == 2

    await rig.writes.release(local, writer=False)
    await rig.writes.flush(local)
    assert local.state is State.CLEAN and rig.queue.submits == []

    await rig.writes.release(local)
    assert local.state is State.CLOSED
    assert rig.files() == set() and rig.queue.submits == []
    assert rig.overlay.get(B, "k") is None  # S3 was right all along


async def test_truncate_and_reopen_with_truncate_are_changes(rig: Rig):
    local = await existing_file(rig, b"0123456789")
    await local.truncate(4)
    assert (local.state, local.size, rig.bytes_of(local)) == (State.DIRTY, 4, b"0123")
    await rig.writes.flush(local)
    assert local.state is State.QUEUED

    again = await rig.writes.open(B, "k", truncate=True, expected=None)  # O_TRUNC: emptied
    assert again is local and local.users == 2
    assert (local.state, local.size) == (State.DIRTY, 0)
    assert rig.queue.submits[0].data == b"0123"  # copied before the truncate
    await rig.writes.release(again)
    await rig.writes.release(local)
    assert [s.data for s in rig.queue.submits] == [b"0123", b""]


async def test_reopening_a_queued_key_edits_a_copy_of_its_pending_version(rig: Rig):
    local = await new_file(rig)
    await local.write(0, b"v1")
    await rig.writes.release(local)
    queued = rig.queue.submits[0].staging_id

    again = await rig.writes.open(B, "k", truncate=False, expected="etag-old")
    assert again is not local and again.state is State.CLEAN
    assert again.staging_id != queued and again.expected is UNKNOWN  # chained by the journal
    await again.write(2, b"+v2")
    await rig.writes.release(again)
    assert [s.data for s in rig.queue.submits] == [b"v1", b"v1+v2"]
    assert rig.staging.path(queued).read_bytes() == b"v1"


# ------------------------------------------------------------------ write errors

async def test_failed_write_is_reported_once_and_that_version_never_submitted(rig: Rig):
    local = await existing_file(rig, b"abc")
    await local.write(0, b"A")
    with file_size_limit(16), pytest.raises(OSError) as failed:
        await local.write(16, b"past the limit")
    assert failed.value.errno == errno.EFBIG
    assert (local.state, local.error) == (State.DIRTY, errno.EFBIG)
    await local.write(1, b"B")  # a later write does not clear what is owed

    with pytest.raises(OSError) as reported:
        await rig.writes.flush(local)  # close reports it ...
    assert reported.value.errno == errno.EFBIG
    assert (local.state, local.error) == (State.CLEAN, None)
    await rig.writes.flush(local)  # ... once
    assert rig.queue.submits == []  # and that version is never uploaded

    await local.write(2, b"C")  # writes after the error start a new version
    await rig.writes.release(local)
    assert [s.data for s in rig.queue.submits] == [b"ABC"]
    assert local.state is State.CLOSED


async def test_failed_copy_on_write_keeps_the_queued_version(rig: Rig):
    local = await new_file(rig)
    await local.write(0, b"x" * 64)
    await rig.writes.flush(local)
    queued = local.staging_id
    before = rig.files()

    with file_size_limit(32), pytest.raises(OSError) as failed:
        await local.write(0, b"y")  # the copy of the queued file does not fit
    assert failed.value.errno == errno.EFBIG
    assert (local.state, local.staging_id, local.error) == (State.QUEUED, queued, errno.EFBIG)
    assert rig.files() == before  # no half copy left behind

    with pytest.raises(OSError):
        await rig.writes.flush(local)
    assert local.state is State.QUEUED and len(rig.queue.submits) == 1
    await rig.writes.release(local)
    assert local.state is State.CLOSED and rig.files() == {queued}  # still the queue's


async def test_refused_submit_leaves_the_file_dirty_and_close_discards_it(rig: Rig):
    local = await new_file(rig)
    await local.write(0, b"data")
    other = await rig.writes.open(B, "k", truncate=False, expected=UNKNOWN)
    rig.queue.refuse = OSError(errno.ENOSPC, "journal full")
    with pytest.raises(OSError):
        await rig.writes.release(other)
    assert (local.state, local.users) == (State.DIRTY, 1)  # still ours to write and submit

    rig.queue.refuse = OSError(errno.ENOSPC, "journal full")
    with pytest.raises(OSError):
        await rig.writes.release(local)
    assert local.state is State.CLOSED and rig.files() == set()  # never submitted: discarded
    assert rig.queue.submits == []


# ------------------------------------------------------------------ names

async def test_unlink_while_open_is_never_uploaded(rig: Rig):
    local = await new_file(rig)
    await local.write(0, b"scratch")
    await rig.writes.remove(B, "k")
    assert local.unlinked and local.state is State.DIRTY
    assert rig.writes.local(B, "k") is None and rig.overlay.get(B, "k").deleted

    await local.write(7, b" more")  # still readable and writable through its handles
    assert await local.read(0, 100) == b"scratch more"
    await rig.writes.flush(local)
    await rig.writes.release(local)
    assert local.state is State.CLOSED
    assert rig.queue.submits == [] and rig.queue.deletes == ["k"] and rig.files() == set()


async def test_unlink_of_a_queued_open_file_keeps_the_queued_bytes_for_the_queue(rig: Rig):
    local = await new_file(rig)
    await local.write(0, b"closed once")
    await rig.writes.flush(local)
    queued = local.staging_id
    await rig.writes.remove(B, "k")
    await local.write(0, b"C")  # copy-on-write even when unlinked: the queue owns `queued`
    await rig.writes.release(local)
    assert rig.files() == {queued} and len(rig.queue.submits) == 1


async def test_rename_while_open_submits_under_the_new_key_at_close(rig: Rig):
    local = await existing_file(rig, b"old bytes", key="a")
    assert await rig.writes.move_local(B, "a", "b")
    assert (local.key, local.state, local.expected) == ("b", State.DIRTY, UNKNOWN)
    assert rig.writes.local(B, "a") is None and rig.writes.local(B, "b") is local
    assert rig.overlay.get(B, "a").deleted and rig.overlay.get(B, "b").size == 9
    assert rig.queue.deletes == ["a"] and rig.queue.submits == []

    await local.write(0, b"new")
    await rig.writes.release(local)
    assert [(s.key, s.data) for s in rig.queue.submits] == [("b", b"new bytes")]


async def test_rename_while_queued_submits_the_queued_bytes_at_once(rig: Rig):
    local = await new_file(rig, key="a")
    await local.write(0, b"closed")
    await rig.writes.flush(local)
    queued = local.staging_id

    assert await rig.writes.move_local(B, "a", "b")
    assert (local.key, local.state, local.job) == ("b", State.QUEUED, 2)
    moved = rig.queue.submits[1]
    assert (moved.key, moved.expected, moved.data) == ("b", UNKNOWN, b"closed")
    assert moved.staging_id == local.staging_id != queued
    assert os.path.samefile(rig.staging.path(queued), rig.staging.path(moved.staging_id))
    assert rig.queue.deletes == ["a"]

    await local.write(0, b"C")  # the link is the queue's too: copied first
    assert rig.staging.path(moved.staging_id).read_bytes() == b"closed"
    await rig.writes.release(local)
    assert [(s.key, s.data) for s in rig.queue.submits] == \
        [("a", b"closed"), ("b", b"closed"), ("b", b"Closed")]


async def test_rename_while_queued_after_its_upload_copies_the_open_file(rig: Rig):
    local = await new_file(rig, key="a")
    await local.write(0, b"uploaded")
    await rig.writes.flush(local)
    rig.queue.upload("a")  # S3 has it, the staging file is gone; the descriptor still reads
    assert await rig.writes.move_local(B, "a", "b")
    assert local.state is State.QUEUED
    assert [(s.key, s.data) for s in rig.queue.submits] == [("a", b"uploaded"), ("b", b"uploaded")]
    await rig.writes.release(local)
    assert rig.files() == {local.staging_id}


async def test_rename_onto_an_open_file_unlinks_it(rig: Rig):
    target = await new_file(rig, key="b")
    await target.write(0, b"target")
    source = await new_file(rig, key="a")
    await source.write(0, b"source")
    assert await rig.writes.move_local(B, "a", "b")
    assert target.unlinked and not source.unlinked
    await rig.writes.release(target)
    await rig.writes.release(source)
    assert [(s.key, s.data) for s in rig.queue.submits] == [("b", b"source")]
    assert rig.files() == {source.staging_id}


async def while_the_last_close_waits(rig: Rig, local: LocalFile,
                                    *others: Callable[[], Awaitable[Any]]) -> None:
    """Release the last handle of a DIRTY `local`; while its submit waits, start `others`
    (each until it blocks); then let the submit through and wait for all of them."""
    rig.queue.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.writes.release, local)
        await trio.testing.wait_all_tasks_blocked()
        assert local.users == 0 and local.state is State.DIRTY  # its flush holds the lock
        for other in others:
            nursery.start_soon(other)
            await trio.testing.wait_all_tasks_blocked()
        rig.queue.gate.set()


async def test_rename_of_a_file_closing_meanwhile_moves_its_queued_version(rig: Rig):
    """The last close finishes while the rename waits for the file: the queued version
    is renamed (the old code renamed the closed file and lost it)."""
    local = await new_file(rig, key="a")
    await local.write(0, b"x")
    await while_the_last_close_waits(rig, local, lambda: rig.writes.move_local(B, "a", "b"))
    assert [(s.key, s.data) for s in rig.queue.submits] == [("a", b"x"), ("b", b"x")]
    assert rig.queue.deletes == ["a"] and rig.writes.local(B, "b") is None
    assert local.state is State.CLOSED and local.key == "a"


# ------------------------------------------------------------------ the last user

async def test_two_last_handles_released_during_one_flush_close_once(rig: Rig):
    local = await new_file(rig)
    await local.write(0, b"x")

    async def read_and_close() -> None:
        assert rig.writes.reader(B, "k") is local
        await rig.writes.release(local, writer=False)
    await while_the_last_close_waits(rig, local, read_and_close)
    assert local.state is State.CLOSED and local.users == 0
    assert [s.data for s in rig.queue.submits] == [b"x"]


async def test_open_with_truncate_while_the_last_handle_closes_keeps_the_file(rig: Rig):
    local = await new_file(rig)
    await local.write(0, b"first")
    opened: list[LocalFile] = []

    async def reopen() -> None:
        opened.append(await rig.writes.open(B, "k", truncate=True, expected=None))
    await while_the_last_close_waits(rig, local, reopen)
    assert opened == [local]
    assert (local.state, local.users, local.size) == (State.DIRTY, 1, 0)
    await local.write(0, b"second")
    await rig.writes.release(local)
    assert [s.data for s in rig.queue.submits] == [b"first", b"second"]


async def test_failed_fill_closes_and_discards(rig: Rig):
    async def short(offset: int, size: int) -> bytes:
        return b""
    with pytest.raises(OSError, match="short read"):
        await rig.writes.open(B, "k", truncate=False, expected="e", size=10, read=short)
    assert rig.writes.local(B, "k") is None and rig.files() == set()


# ------------------------------------------------------------------ illegal transitions

FIELDS = ("state", "key", "staging_id", "expected", "change", "size", "fd", "users",
          "unlinked", "error", "job", "revision", "version")


async def test_fields_are_read_only(rig: Rig):
    local = await new_file(rig)
    for name in FIELDS:
        with pytest.raises(AttributeError):
            setattr(local, name, getattr(local, name))
    await rig.writes.release(local)


async def closed(rig: Rig) -> LocalFile:
    local = await new_file(rig)
    await rig.writes.release(local)
    return local


async def queued(rig: Rig) -> LocalFile:
    local = await new_file(rig)
    await rig.writes.flush(local)
    return local


async def clean(rig: Rig) -> LocalFile:
    return await existing_file(rig, b"abc")


async def unlinked(rig: Rig) -> LocalFile:
    local = await new_file(rig)
    await rig.writes.remove(B, "k")
    return local


ILLEGAL: dict[str, tuple[Callable[[Rig], Any], Callable[[LocalFile, Rig], Any]]] = {
    "submit a clean file": (clean, lambda f, r: f.submitted(7)),
    "submit a queued file": (queued, lambda f, r: f.submitted(7)),
    "submit an unlinked file": (unlinked, lambda f, r: f.submitted(7)),
    "created twice": (new_file, lambda f, r: f.created()),
    "fill after a user": (clean, lambda f, r: f.fill_from(None, 0)),
    "close with users": (clean, lambda f, r: f.close()),
    "unlink twice": (unlinked, lambda f, r: f.unlink()),
    "rename an unlinked file": (unlinked, lambda f, r: f.rename("x", r.overlay.file(B, "x", 0))),
    "rename a queued file without its submit": (
        queued, lambda f, r: f.rename("x", r.overlay.file(B, "x", 0))),
    "rename an own file with a staging file": (
        clean, lambda f, r: f.rename("x", r.overlay.file(B, "x", 0), staging_id="0" * 32, job=3)),
    "adopt a closed file": (closed, lambda f, r: f.adopt()),
    "release a closed file": (closed, lambda f, r: f.release()),
    "write a closed file": (closed, lambda f, r: f.write(0, b"x")),
    "truncate a closed file": (closed, lambda f, r: f.truncate(0)),
    "read a closed file": (closed, lambda f, r: f.read(0, 1)),
    "flush a closed file": (closed, lambda f, r: r.writes.flush(f)),
    "close twice": (closed, lambda f, r: f.close()),
}


@pytest.mark.parametrize("case", ILLEGAL)
async def test_illegal_transitions_are_refused(rig: Rig, case: str):
    make, transition = ILLEGAL[case]
    local = await make(rig)
    before = (local.state, local.users, local.unlinked, local.key, local.staging_id, local.job)
    with pytest.raises(IllegalTransition):
        result = transition(local, rig)
        if hasattr(result, "__await__"):
            await result
    assert (local.state, local.users, local.unlinked, local.key, local.staging_id,
            local.job) == before


async def test_submit_with_an_error_owed_is_refused(rig: Rig):
    local = await new_file(rig)
    with file_size_limit(8), pytest.raises(OSError):
        await local.write(8, b"x")
    with pytest.raises(IllegalTransition):
        local.submitted(1)
    assert local.state is State.DIRTY and local.error == errno.EFBIG
    with pytest.raises(OSError):
        await rig.writes.release(local)


async def test_a_file_written_in_order_is_submitted_with_its_crc(rig: Rig):
    """The queue journals a small file with the CRC-32 of its bytes: a file written in
    order from empty hands it over (kept while writing; the fake queue checks each one
    against the bytes), so the close reads nothing back; any other write makes it unknown
    (the queue then reads the file)."""
    local = await new_file(rig)
    await local.write(0, b"abc")
    await local.write(3, b"def")
    await rig.writes.flush(local)
    await local.write(6, b"g")  # copy-on-write: the copy has the same bytes, so the same CRC
    await rig.writes.flush(local)
    await local.write(0, b"X")  # an overwrite: unknown
    await rig.writes.flush(local)
    await local.truncate(0)  # emptied: known again
    await local.write(0, b"new")
    await rig.writes.flush(local)
    await local.write(10, b"hole")  # past the end: unknown
    await rig.writes.release(local)
    assert rig.queue.known == [True, True, False, True, False]
    assert [s.data for s in rig.queue.submits] == [
        b"abcdef", b"abcdefg", b"Xbcdefg", b"new", b"new" + bytes(7) + b"hole"]


async def test_an_opened_file_and_a_large_one_have_no_crc(rig: Rig,
                                                          monkeypatch: pytest.MonkeyPatch):
    """Bytes filled from S3 were not written here, and past FSYNC_AT_CLOSE a file is
    fsynced at close instead: no CRC is kept for either."""
    local = await existing_file(rig, b"from s3")
    await local.write(7, b"!")
    await rig.writes.release(local)
    monkeypatch.setattr("s3fuse.upload.localfile.FSYNC_AT_CLOSE", 4)
    small = await new_file(rig, "small")
    await small.write(0, b"1234")
    await rig.writes.release(small)
    large = await new_file(rig, "large")
    await large.write(0, b"1234")
    await large.write(4, b"5")
    await rig.writes.release(large)
    assert rig.queue.known == [False, True, False]


async def test_only_a_small_file_with_its_crc_settles_on_the_loop(
        rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """The queue may settle a submit on the trio loop only when that is microseconds of
    work: a small file whose CRC is known (nothing read back, no fsync). Above QUICK_SETTLE_MAX
    bytes, or with an unknown CRC (bytes from S3), a thread settles it."""
    monkeypatch.setattr("s3fuse.upload.localfile.QUICK_SETTLE_MAX", 8)
    small = await new_file(rig, "small")
    await small.write(0, b"1234")
    await rig.writes.release(small)
    large = await new_file(rig, "large")
    await large.write(0, b"123456789")
    await rig.writes.release(large)
    opened = await existing_file(rig, b"from s3")
    await opened.write(7, b"!")
    await rig.writes.release(opened)
    assert rig.queue.quick == [True, False, False]
    assert rig.queue.known == [True, True, False]


async def test_the_first_small_write_is_held_until_the_submit(rig: Rig):
    """A new file's first small write waits in memory (no thread round trip): reads see
    it, and the submit (or the next change) writes it to the staging file first."""
    local = await new_file(rig)
    await local.write(0, b"held")
    assert local.staging_id not in rig.files()  # not on disk yet, nor its staging file
    assert await local.read(1, 2) == b"el" and local.size == 4
    await rig.writes.flush(local)
    assert rig.queue.submits[-1].data == b"held" and rig.queue.known == [True]
    await local.write(4, b"!")  # a copy of the queued file, then the write: on disk at once
    assert rig.bytes_of(local) == b"held!"

    other = await new_file(rig, "other")
    assert await other.read(0, 10) == b"" and other.staging_id not in rig.files()
    await other.write(0, b"first")
    await other.write(5, b" second")  # appended: still in memory
    assert other.staging_id not in rig.files()
    await other.write(0, b"F")  # not an append: the tail goes first, in the same round trip
    assert rig.bytes_of(other) == b"First second"
    await rig.writes.release(other)
    await rig.writes.release(local)
    assert [s.data for s in rig.queue.submits] == [b"held", b"First second", b"held!"]
    assert rig.queue.known == [True, False, True]  # written out of order: CRC unknown


async def test_appends_gather_in_the_tail_until_it_is_full(
        rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """Writes at the end of the file wait in memory, TAIL_MAX bytes at most, then go to
    the staging file in one round trip with the write that did not fit. Reads see every
    byte, from disk, memory or both; the CRC of bytes written in order stays known."""
    monkeypatch.setattr("s3fuse.upload.localfile.TAIL_MAX", 10)
    local = await new_file(rig)
    for offset, piece in enumerate(b"abcdefghij"):
        await local.write(offset, bytes([piece]))
    assert local.staging_id not in rig.files() and local.size == 10
    await local.write(10, b"k")  # the tail is full: it and this write go to the disk
    await local.written_behind()  # ... behind the writer's back
    assert rig.bytes_of(local) == b"abcdefghijk"
    await local.write(11, b"lmn")
    assert rig.bytes_of(local) == b"abcdefghijk"  # the new tail is in memory
    assert await local.read(12, 10) == b"mn"  # from the tail alone
    assert await local.read(9, 4) == b"jklm"  # across: the tail is written out first
    assert rig.bytes_of(local) == b"abcdefghijklmn"
    await local.write(14, b"o")
    await rig.writes.release(local)
    assert rig.queue.submits[-1].data == b"abcdefghijklmno"
    assert rig.queue.known == [True]


class _HeldPieces:
    """Holds every write behind in its thread until released (LocalFile._write_pieces)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        import threading
        self.started = threading.Semaphore(0)
        self.go = threading.Event()
        real = LocalFile._write_pieces

        def held(local: LocalFile, behind: Any) -> None:
            self.started.release()
            self.go.wait(10)
            real(local, behind)
        monkeypatch.setattr(LocalFile, "_write_pieces", held)

    async def wait_started(self) -> None:
        assert await trio.to_thread.run_sync(self.started.acquire, True, 10)


async def test_big_appends_return_before_the_disk_has_them_and_every_reader_waits(
        rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """A `cp`'s 1 MiB writes go to the staging file behind the writer's back, one at a
    time per file: write(2) returns at once, the next one waits for the one before, and
    a read, a truncate or the close's submit waits until the bytes are on disk."""
    held = _HeldPieces(monkeypatch)
    local = await new_file(rig)
    first, second = os.urandom(300_000), os.urandom(300_000)
    with trio.fail_after(5):
        assert await local.write(0, first) == len(first)  # returns, its pwrite held
    await held.wait_started()
    assert local.size == len(first) and local.staging_id not in rig.files()
    got: list[bytes] = []
    wrote: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, local.read(299_990, 10)))
        nursery.start_soon(lambda: _append(wrote, local.write(len(first), second)))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and wrote == []  # both wait for the first write behind
        held.go.set()
    assert got == [first[-10:]] and wrote == [len(second)]
    assert await local.read(299_990, 20) == first[-10:] + second[:10]
    await local.truncate(500_000)  # after the second write behind, never before it
    await rig.writes.release(local)
    assert rig.queue.submits[-1].data == (first + second)[:500_000]
    assert rig.files() == {local.staging_id}


async def test_a_read_sees_the_tail_a_writer_moved_behind_while_it_waited(
        rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """A small append waits in the tail after a write behind; a reader of it and a big
    append both wait for that write behind. When it is done the writer may run first and
    move the tail into a new write behind: the reader, looking again, waits for that one
    too, instead of reading the staging file without the tail (a short read, seen as the
    end of the file, although the append's write(2) had returned). Every wake order."""
    import threading
    gates = [threading.Event(), threading.Event()]
    calls: list[int] = []
    real = LocalFile._write_pieces

    def held(local: LocalFile, behind: Any) -> None:
        n = len(calls)
        calls.append(n)
        if n < 2:
            gates[n].wait(10)
        real(local, behind)
    monkeypatch.setattr(LocalFile, "_write_pieces", held)
    for attempt in range(10):
        gates[0].clear(), gates[1].clear(), calls.clear()
        local = await new_file(rig, f"k{attempt}")
        first, small, second = os.urandom(300_000), os.urandom(3000), os.urandom(300_000)
        await local.write(0, first)                  # behind, held
        await local.write(300_000, small)            # in the tail
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(local.write, 303_000, second)  # waits for the first
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lambda: _append(got, local.read(299_000, 8000)))
            await trio.testing.wait_all_tasks_blocked()
            gates[0].set()
            await trio.testing.wait_all_tasks_blocked()
            gates[1].set()
        assert got == [(first + small + second)[299_000:307_000]]
        await rig.writes.release(local)


async def test_a_failed_write_behind_fails_the_next_write_and_is_owed_to_the_close(rig: Rig):
    """A write behind that fails (a full disk past the reserve, EFBIG here) fails the
    write(2) after it, as a local file system's failed write-back fails a later call,
    and is owed to the close; that version is never submitted."""
    local = await new_file(rig)
    with file_size_limit(200_000):
        await local.write(0, b"x" * 300_000)  # returns: its pwrite fails behind
        with pytest.raises(OSError) as failed:
            await local.write(300_000, b"y" * 300_000)
        assert failed.value.errno == errno.EFBIG
    with pytest.raises(OSError) as owed:
        await rig.writes.release(local)
    assert owed.value.errno == errno.EFBIG and rig.queue.submits == []


async def test_a_close_waits_for_the_write_behind_even_of_an_unlinked_file(
        rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """The last close of a removed file submits nothing, but still waits for the thread
    writing to the descriptor it closes."""
    held = _HeldPieces(monkeypatch)
    local = await new_file(rig)
    await local.write(0, b"z" * 300_000)
    await held.wait_started()
    await rig.writes.remove(B, "k")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.writes.release, local)
        await trio.testing.wait_all_tasks_blocked()
        assert local.state is not State.CLOSED
        held.go.set()
    assert local.state is State.CLOSED and rig.queue.submits == [] and rig.files() == set()


async def test_the_tails_of_all_files_share_one_bound(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """Many files appended to at once hold at most TAILS_MAX in memory between them: past
    it, appends go to the staging file; a tail written out or dropped gives its room back."""
    budget = TailBudget(10)
    monkeypatch.setattr("s3fuse.upload.localfile.TAILS", budget)
    first, second = await new_file(rig, "first"), await new_file(rig, "second")
    await first.write(0, b"12345678")
    await second.write(0, b"abcd")  # no room left: on disk at once
    assert budget.held == 8 and rig.bytes_of(second) == b"abcd"
    assert first.staging_id not in rig.files()
    await rig.writes.release(first)  # its tail is written by the submit
    assert budget.held == 0
    await second.write(4, b"efgh")
    assert budget.held == 4
    third = await new_file(rig, "third")
    await third.write(0, b"xyz")
    await rig.writes.remove(B, "third")
    await rig.writes.release(third)  # dropped, never written: its room comes back too
    assert budget.held == 4
    await rig.writes.release(second)
    assert budget.held == 0
    assert sorted((s.key, s.data) for s in rig.queue.submits) == [
        ("first", b"12345678"), ("second", b"abcdefgh")]


async def test_an_append_that_needs_cached_blocks_evicted_goes_to_a_thread(rig: Rig):
    """The trio loop never evicts: when the cache disk has no room for an append without
    evicting blocks, the write takes the thread path, whose claim evicts or says ENOSPC."""
    claims: list[tuple[str, int]] = []

    def claim(n: int, fresh: bool = False) -> None:
        claims.append(("thread", n))
        raise OSError(errno.ENOSPC, "down to the reserve")

    rig.staging._claim = claim
    rig.staging._claim_now = lambda n, fresh=False: claims.append(("now", n)) is not None
    local = await new_file(rig)
    with pytest.raises(OSError) as failed:
        await local.write(0, b"abc")
    assert failed.value.errno == errno.ENOSPC and local.size == 0
    assert claims[-1] == ("thread", 3) and {c for c in claims[:-1]} == {("now", 3)}
    with pytest.raises(OSError) as owed:  # owed to the close, once; nothing submitted
        await rig.writes.release(local)
    assert owed.value.errno == errno.ENOSPC and rig.queue.submits == []


async def test_held_bytes_that_cannot_be_written_fail_the_close(rig: Rig):
    """When the held bytes do not fit (a full disk), the close reports it, once, and that
    version is never submitted: as a failed write."""
    local = await new_file(rig)
    await local.write(0, b"x" * 100)
    with file_size_limit(10):
        with pytest.raises(OSError) as failed:
            await rig.writes.flush(local)
    assert failed.value.errno == errno.EFBIG
    assert rig.queue.submits == [] and local.state is State.CLEAN
    await rig.writes.release(local)  # nothing owed any more, nothing to submit
    assert rig.queue.submits == [] and rig.files() == set()


async def test_a_read_in_flight_survives_the_copy_on_write_of_a_write_meanwhile(
        rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """A read's pread runs in a thread; a write meanwhile copies the queued file and closes
    its descriptor. The read has a descriptor of its own: it used to fail EBADF (or read
    whatever file got the number), seen as `tail -f` read a log `>>` kept appending to."""
    local = await new_file(rig)
    await local.write(0, b"x" * 200_000)  # past the tail: on disk
    await rig.writes.flush(local)
    assert local.state is State.QUEUED
    reading, resume = trio.Event(), trio.Event()
    real_io = LocalFile._io

    async def slow_pread(self: LocalFile, fn: Callable[..., Any], *args: Any) -> Any:
        if fn is os.pread:
            reading.set()
            await resume.wait()  # the descriptor is chosen; the pread has not run yet
        return await real_io(self, fn, *args)

    monkeypatch.setattr(LocalFile, "_io", slow_pread)
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, local.read(0, 10)))
        await reading.wait()
        await local.write(200_000, b"more")  # copy-on-write: the old descriptor is closed
        assert local.state is State.DIRTY
        fresh = os.open(os.devnull, os.O_RDONLY)  # may take the closed descriptor's number
        resume.set()
    os.close(fresh)
    assert got == [b"x" * 10]
    await rig.writes.release(local)


async def _append(into: list[Any], result: Awaitable[Any]) -> None:
    into.append(await result)


async def test_an_unmount_journals_the_open_files_past_one_that_cannot_be(rig: Rig):
    """At SIGTERM, files still open are journalled as their close would (`submit_open`).
    A full journal raises CacheFull, no OSError: it escaped, and the daemon died with a
    traceback, no drain and the other open files not journalled (found by a review)."""
    first, second = await new_file(rig, "first"), await new_file(rig, "second")
    await first.write(0, b"one")
    await second.write(0, b"two")
    rig.queue.refuse = CacheFull("upload journal: database or disk is full")  # type: ignore[assignment]
    await rig.writes.submit_open()
    assert [(s.key, s.data) for s in rig.queue.submits] == [("second", b"two")]


async def test_a_landing_the_stored_listing_could_not_record_stays_shown(rig: Rig):
    """A file closed and uploaded while the cache disk is full: the stored listing cannot
    learn it (CacheFull), so the overlay must keep showing it; cleared, the file vanished
    from `ls` and `stat` until the listing's TTL ran out, although it was in S3. Cleared
    once a telling of the landing is recorded."""
    from s3fuse.upload.uploader import UploadResult
    answers = [False, True]
    rig.writes.watch(B, lambda key, result: answers.pop(0))
    local = await new_file(rig)
    await local.write(0, b"hello")
    await rig.writes.release(local)
    rig.queue.upload("k")
    rig.writes._uploaded(B, "k", UploadResult(etag="e1"))   # the listing is full
    change = rig.overlay.get(B, "k")
    assert change is not None and not change.deleted and change.size == 5
    assert change.etag == "e1"                               # S3's version is read
    rig.writes._uploaded(B, "k", UploadResult(etag="e1"))   # told again, recorded
    assert rig.overlay.get(B, "k") is None and answers == []
