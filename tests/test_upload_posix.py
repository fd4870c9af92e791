"""POSIX metadata on the write path, against the in-memory store: uploads carry their
metadata (no extra request), metadata changes of uploaded objects are conditional copies
onto themselves, coalesced while unsent and chained after sent rows, dropped as
"kept-remote" when S3 changed, and journalled across offline periods and restarts.
Request counts come from MemoryStore."""
from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Callable

import pytest
import trio

from s3fuse.cache.overlay import Overlay
from s3fuse.errors import NotFound
from s3fuse.model import Entry
from s3fuse.posix import Posix, from_headers, to_headers
from s3fuse.store.memory import MemoryStore
from s3fuse.store.retry import tagged
from s3fuse.upload import UNKNOWN, Journal, Uploader, UploadQueue
from s3fuse.upload.conditions import PROBE_PUTS
from s3fuse.upload.journal import Expected
from s3fuse.upload.uploader import UploadResult
from s3fuse.upload.writeback import WriteBack
from tests.test_upload import counted_claims, until_retrying, upload_queue

B = "bucket"
SEC = 1_000_000_000


#: A directory's metadata, as its `dir/` marker stores it.
FOLDER = Posix(mode=stat.S_IFDIR | 0o755, uid=0, gid=0, mtime_ns=SEC)


def meta(mode: int = 0o644, mtime: int = 1_600_000_000, **fields: Any) -> Posix:
    return Posix(mode=stat.S_IFREG | mode, uid=1000, gid=1000, mtime_ns=mtime * SEC,
                 ctime_ns=mtime * SEC, atime_ns=mtime * SEC, **fields)


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket(B)
    return memory


def stored(store: MemoryStore, key: str) -> Posix:
    return from_headers(store.head(B, key).metadata or {}, is_dir=key.endswith("/"))


def offline(store: MemoryStore) -> None:
    """S3 unreachable, and the link knows it at once: the workers claim nothing more."""
    store.reachable = False
    store.link.failed("test: offline")


def copies(store: MemoryStore) -> int:
    return store.request_counts().get("CopyObject", 0)


async def synced(queue: UploadQueue) -> dict[str, Any]:
    status = await queue.sync(timeout=10)
    assert status["files"] == 0 and status["failures"] == []
    return status


async def uploaded(queue: UploadQueue, key: str, data: bytes = b"data",
                   posix: Posix | None = None) -> str:
    staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
    await trio.to_thread.run_sync(path.write_bytes, data)
    await queue.submit(B, key, staging_id, None, posix)
    await synced(queue)
    await workers_parked(queue)
    return queue.store.head(B, key).etag


async def workers_parked(queue: UploadQueue, timeout: float = 10.0) -> None:
    """Until every worker waits for work. After a sync a worker may still be asking the
    journal for a job in a thread: a change made then was claimed before a test's
    `offline` (under load: 11 jobs where 10 were expected, once in CI)."""
    with trio.fail_after(timeout):
        while (queue._idle_any.statistics().tasks_waiting
               + queue._idle_light.statistics().tasks_waiting) < queue.workers:
            await trio.sleep(0.005)


# ------------------------------------------------------------------ the queue


async def test_metadata_rides_along_with_puts_no_copy(tmp_path: Path, store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store) as queue:
        for n in range(20):
            staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
            path.write_bytes(b"x" * n)
            await queue.submit(B, f"tree/f{n}", staging_id, None, meta(0o600 + n % 8))
        await synced(queue)
    assert store.request_counts()["PutObject"] == 20 + PROBE_PUTS  # and the bucket's probe
    assert copies(store) == 0
    for n in range(20):
        assert stored(store, f"tree/f{n}") == meta(0o600 + n % 8)
        assert store.head(B, f"tree/f{n}").metadata == to_headers(meta(0o600 + n % 8))


async def test_multipart_uploads_carry_metadata(tmp_path: Path) -> None:
    store = MemoryStore(min_part_size=1 << 20)
    store.create_bucket(B)
    async with upload_queue(tmp_path, store, uploader=lambda s, j, st: Uploader(
            s, j, st, threshold=1 << 20, part_size=1 << 20)) as queue:
        await uploaded(queue, "big.bin", b"y" * (3 << 20), meta(0o755))
    assert store.request_counts()["CompleteMultipartUpload"] == 1
    assert stored(store, "big.bin") == meta(0o755)


async def test_metadata_set_while_queued_updates_the_put_in_place(tmp_path: Path,
                                                                  store: MemoryStore) -> None:
    offline(store)
    async with upload_queue(tmp_path, store) as queue:
        staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
        path.write_bytes(b"script")
        job = await queue.submit(B, "run.sh", staging_id, None, meta(0o644))
        assert await queue.set_meta(B, "run.sh", meta(0o755), 6, UNKNOWN) == job
        assert await queue.set_meta(B, "run.sh", meta(0o755, mtime=1_500_000_000), 6,
                                    UNKNOWN) == job
        store.reachable = True
        await synced(queue)
    assert store.objects(B) == {"run.sh": b"script"}
    assert stored(store, "run.sh") == meta(0o755, mtime=1_500_000_000) and copies(store) == 0


async def test_chmod_then_touch_of_uploaded_files_is_one_copy_each(tmp_path: Path,
                                                                   store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store) as queue:
        etags = {f"d/f{n}": await uploaded(queue, f"d/f{n}", b"%d" % n, meta()) for n in range(10)}
        offline(store)  # `chmod -R` then `touch -R` while offline: nothing sent yet
        for key, etag in etags.items():
            await queue.set_meta(B, key, meta(0o700), 1, etag)
        for key, etag in etags.items():
            await queue.set_meta(B, key, meta(0o700, mtime=1_234_567_890), 1, etag)
        assert (await trio.to_thread.run_sync(queue.status))["files"] == 10
        store.reachable = True
        await synced(queue)
    assert copies(store) == 10
    for key, etag in etags.items():
        assert stored(store, key) == meta(0o700, mtime=1_234_567_890)
        assert store.head(B, key).etag == etag  # the bytes are untouched


async def test_a_change_after_a_sent_upload_is_chained_on_its_etag(tmp_path: Path,
                                                                    store: MemoryStore) -> None:
    store.fail("PutObject", times=1, prefix="a.txt")  # the put is sent (and retried)
    async with upload_queue(tmp_path, store) as queue:
        staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
        path.write_bytes(b"alpha")
        put = await queue.submit(B, "a.txt", staging_id, None, meta(0o600))
        await until_retrying(queue)
        change = await queue.set_meta(B, "a.txt", meta(0o640), 5, UNKNOWN)
        assert change != put  # a sent row is never changed: a new row after it
        assert queue.pending_version(B, "a.txt") is not None  # the put's bytes are local still
        assert (await synced(queue))["conflicts"] == []
    assert store.objects(B) == {"a.txt": b"alpha"} and stored(store, "a.txt") == meta(0o640)
    assert copies(store) == 1


async def test_a_remote_change_wins_over_a_metadata_change(tmp_path: Path,
                                                           store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store) as queue:
        etag = await uploaded(queue, "shared.txt", b"ours", meta())
        gone = await uploaded(queue, "gone.txt", b"ours", meta())
        store.replace(B, "shared.txt", b"theirs, newer")  # someone else's changes, unseen
        store.delete_object(B, "gone.txt")
        await queue.set_meta(B, "shared.txt", meta(0o600), 4, etag)
        await queue.set_meta(B, "gone.txt", meta(0o600), 4, gone)
        status = await synced(queue)
    assert store.objects(B) == {"shared.txt": b"theirs, newer"}
    assert stored(store, "shared.txt") == Posix()  # their object, not our mode
    assert sorted((c["uri"], c["kind"]) for c in status["conflicts"]) == [
        (f"s3://{B}/gone.txt", "kept-remote"), (f"s3://{B}/shared.txt", "kept-remote")]


async def test_an_unknown_etag_is_looked_up_first(tmp_path: Path, store: MemoryStore) -> None:
    store.put_object(B, "foreign.txt", b"from another tool")
    async with upload_queue(tmp_path, store) as queue:
        await queue.set_meta(B, "foreign.txt", meta(0o750), 17, UNKNOWN)
        await synced(queue)
    assert store.request_counts()["HeadObject"] == 1 and copies(store) == 1
    assert stored(store, "foreign.txt") == meta(0o750)


async def test_a_replayed_copy_that_landed_is_not_a_conflict(tmp_path: Path,
                                                             store: MemoryStore) -> None:
    """A crash after the copy, before the journal forgot it: the condition no longer
    matches when the copy changed the ETag (multipart objects), but S3 holds our metadata."""
    store.put_object(B, "big.bin", b"z" * 10)
    old = "0" * 32 + "-3"  # the multipart ETag the change was made on
    store.copy_object(B, "big.bin", "big.bin", store.head(B, "big.bin").etag,
                      metadata=to_headers(meta(0o700)))  # the copy that landed
    async with upload_queue(tmp_path, store) as queue:
        await queue.set_meta(B, "big.bin", meta(0o700), 10, old)
        status = await synced(queue)
    assert status["conflicts"] == [] and stored(store, "big.bin") == meta(0o700)


async def test_a_pending_change_survives_a_restart_and_an_offline_period(
        tmp_path: Path, store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store) as queue:
        etag = await uploaded(queue, "keep.txt", b"kept", meta())
        offline(store)
        await queue.set_meta(B, "keep.txt", meta(0o400), 4, etag)
        status = await queue.drain(timeout=0.2)  # unmount while offline: stays journalled
        assert status["files"] == 1
    async with upload_queue(tmp_path, store) as queue:  # the next start, still offline
        [pending] = await trio.to_thread.run_sync(queue.journal.pending)
        assert (pending.op, pending.meta, pending.expected) == ("meta", meta(0o400), etag)
        assert queue.pending(B, "keep.txt") and queue.pending_version(B, "keep.txt") is None
        store.reachable = True
        await synced(queue)
    assert stored(store, "keep.txt") == meta(0o400) and copies(store) == 1


async def test_a_failed_upload_keeps_its_bytes_and_takes_the_newer_metadata(
        tmp_path: Path, store: MemoryStore) -> None:
    store.fail("PutObject", error="permanent", prefix="f.txt")
    async with upload_queue(tmp_path, store) as queue:
        staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
        path.write_bytes(b"precious")
        await queue.submit(B, "f.txt", staging_id, None, meta(0o600))
        assert len((await queue.sync(timeout=10))["failures"]) == 1
        await queue.set_meta(B, "f.txt", meta(0o644), 8, UNKNOWN)
        await queue.sync(timeout=10)  # the change finds nothing in S3: dropped
        assert queue.pending_version(B, "f.txt") is not None  # the bytes stay, failed
        assert await queue.retry_failed() == 1
        await synced(queue)
    assert store.objects(B) == {"f.txt": b"precious"} and stored(store, "f.txt") == meta(0o644)


# ------------------------------------------------------------------ the write-back layer


def writeback(queue: UploadQueue) -> WriteBack:
    return WriteBack(queue, queue.staging, Overlay())


async def write_file(writes: WriteBack, key: str, data: bytes, posix: Posix | None,
                     expected: Expected = None) -> None:
    local = await writes.open(B, key, truncate=True, expected=expected, posix=posix)
    await local.write(0, data)
    await writes.release(local)


async def test_an_upload_stores_the_time_of_the_last_write(tmp_path: Path,
                                                           store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        created = meta(0o640, mtime=1_000)
        await write_file(writes, "w.txt", b"written", created)
        change = writes.overlay.get(B, "w.txt")
        assert change is not None and change.mtime_ns > 1_000 * SEC
        shown = writes.posix(B, "w.txt")
        assert shown is not None and shown.mtime_ns == shown.ctime_ns == change.mtime_ns
        await synced(queue)
        landed = stored(store, "w.txt")
    assert landed.mode == stat.S_IFREG | 0o640 and landed.atime_ns == 1_000 * SEC
    assert landed.mtime_ns == change.mtime_ns


async def test_utimens_after_the_last_write_is_what_lands(tmp_path: Path,
                                                          store: MemoryStore) -> None:
    """rsync writes its temporary file, sets its mtime, then renames it."""
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        offline(store)  # nothing sent meanwhile: the changes ride along
        local = await writes.open(B, ".f.tmp", truncate=True, expected=None, posix=meta())
        await local.write(0, b"synced bytes")
        source_times = meta(0o600, mtime=1_111)
        await writes.set_posix(B, ".f.tmp", source_times, expected=UNKNOWN, size=local.size)
        await writes.release(local)
        await writes.set_posix(B, ".f.tmp", source_times.replace(mode=stat.S_IFREG | 0o644),
                               expected=UNKNOWN, size=12)  # queued: rides along in place
        assert await writes.move_local(B, ".f.tmp", "f")
        assert writes.posix(B, "f") == source_times.replace(mode=stat.S_IFREG | 0o644)
        store.reachable = True
        await synced(queue)
    assert store.objects(B) == {"f": b"synced bytes"}
    assert stored(store, "f") == source_times.replace(mode=stat.S_IFREG | 0o644)
    assert copies(store) == 0


async def test_a_metadata_change_of_an_uploaded_file_reads_s3(tmp_path: Path,
                                                              store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        etag = await uploaded(queue, "s.bin", b"in S3", meta())
        offline(store)
        await writes.set_posix(B, "s.bin", meta(0o600, mtime=42), expected=etag, size=5)
        change = writes.overlay.get(B, "s.bin")
        assert change is not None and change.etag == etag and change.size == 5
        assert change.mtime_ns == 42 * SEC and writes.posix(B, "s.bin") == meta(0o600, mtime=42)
        assert not writes.has_local(B, "s.bin") and writes.reader(B, "s.bin") is None
        assert queue.pending_version(B, "s.bin") is None
        # opened for writing and closed unchanged (touch): the change stays S3's bytes
        async def read(offset: int, size: int) -> bytes:
            return b"in S3"[offset:offset + size]
        local = await writes.open(B, "s.bin", truncate=False, expected=etag, size=5, read=read,
                                  posix=writes.posix(B, "s.bin"))
        await writes.release(local, writer=True)
        assert writes.overlay.get(B, "s.bin") is change and change.etag == etag
        store.reachable = True
        await synced(queue)
        assert writes.overlay.get(B, "s.bin") is None  # S3 has it now
    assert stored(store, "s.bin") == meta(0o600, mtime=42) and copies(store) == 1


async def test_a_write_after_a_metadata_change_uploads_both_at_once(tmp_path: Path,
                                                                    store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        etag = await uploaded(queue, "e.txt", b"one", meta())
        offline(store)
        await writes.set_posix(B, "e.txt", meta(0o711), expected=etag, size=3)

        async def read(offset: int, size: int) -> bytes:
            return b"one"[offset:offset + size]
        local = await writes.open(B, "e.txt", truncate=False, expected=etag, size=3, read=read,
                                  posix=writes.posix(B, "e.txt"))
        await local.write(3, b" two")
        assert local.change.etag == ""  # local bytes now
        await writes.release(local)
        store.reachable = True
        await synced(queue)
    assert store.objects(B) == {"e.txt": b"one two"} and copies(store) == 0
    landed = stored(store, "e.txt")
    assert landed.mode == stat.S_IFREG | 0o711 and landed.mtime_ns > 1_600_000_000 * SEC


async def test_after_a_sent_upload_only_metadata_is_left_and_reads_go_to_s3(
        tmp_path: Path, store: MemoryStore) -> None:
    store.reachable = False
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        with trio.fail_after(10):
            await write_file(writes, "p.txt", b"pending", meta())
            await store.link.changed().wait()  # the put was sent, and failed: offline
        await writes.set_posix(B, "p.txt", meta(0o600), expected=UNKNOWN, size=7)
        assert writes.has_local(B, "p.txt")  # the put's bytes until they are in S3
        store.fail("CopyObject", times=1000)  # the put lands, the metadata change waits
        store.reachable = True
        await until_queue(queue, lambda: "p.txt" in store.objects(B))
        await until_queue(queue, lambda: not writes.has_local(B, "p.txt"))
        change = writes.overlay.get(B, "p.txt")
        assert change is not None and change.etag == store.head(B, "p.txt").etag
        assert writes.reader(B, "p.txt") is None and change.posix == meta(0o600)
        store.clear_faults()
        await synced(queue)
        assert writes.overlay.get(B, "p.txt") is None
    assert stored(store, "p.txt") == meta(0o600)


async def until_queue(queue: UploadQueue, condition: Callable[[], bool]) -> None:
    """Wait (on the queue's changes) until `condition` holds."""
    with trio.fail_after(10):
        while True:
            changed = queue.changed()
            if condition():
                return
            await changed.wait()


async def test_directories_and_special_files_carry_their_metadata(tmp_path: Path,
                                                                  store: MemoryStore) -> None:
    link = Posix(mode=stat.S_IFLNK | 0o777, uid=0, gid=0, mtime_ns=SEC, ctime_ns=SEC,
                 atime_ns=SEC)
    fifo = link.replace(mode=stat.S_IFIFO | 0o600)
    folder = link.replace(mode=stat.S_IFDIR | 0o2750)
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        offline(store)
        await writes.create_special(B, "ln", b"../target", link, None)
        await writes.create_special(B, "fifo", b"", fifo, None)
        await writes.make_dir(B, "made/", folder)
        assert writes.posix(B, "ln") == link and writes.overlay.get(B, "ln").size == 9
        # an implicit directory (no marker) gets one with its metadata
        await writes.set_posix(B, "implicit/", folder, expected=None, size=0, is_dir=True)
        store.reachable = True
        await synced(queue)
    assert store.objects(B) == {"ln": b"../target", "fifo": b"", "made/": b"",
                                "implicit/": b""}
    assert stored(store, "ln") == link and stored(store, "fifo") == fifo
    assert stored(store, "made/") == folder and stored(store, "implicit/") == folder
    assert copies(store) == 0


async def test_start_shows_the_pending_metadata_of_the_journal(tmp_path: Path,
                                                               store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store) as queue:
        etag = await uploaded(queue, "old.txt", b"12345", meta())
        offline(store)
        writes = writeback(queue)
        await write_file(writes, "new.txt", b"new", meta(0o604, mtime=7))
        await writes.set_posix(B, "new.txt", meta(0o604, mtime=7), expected=UNKNOWN, size=3)
        await writes.set_posix(B, "old.txt", meta(0o400, mtime=9), expected=etag, size=5)
        await writes.make_dir(B, "dir/", Posix(mode=stat.S_IFDIR | 0o700))
        await queue.drain(timeout=0.1)
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        new, old = writes.overlay.get(B, "new.txt"), writes.overlay.get(B, "old.txt")
        assert new is not None and (new.size, new.etag, new.posix) == (3, "", meta(0o604, mtime=7))
        assert new.mtime_ns == 7 * SEC and writes.has_local(B, "new.txt")
        assert old is not None and (old.size, old.etag, old.posix) == (5, etag, meta(0o400, mtime=9))
        assert old.mtime_ns == 9 * SEC and not writes.has_local(B, "old.txt")
        assert writes.posix(B, "dir/") == Posix(mode=stat.S_IFDIR | 0o700)
        store.reachable = True
        await synced(queue)
    assert stored(store, "new.txt") == meta(0o604, mtime=7)
    assert stored(store, "old.txt") == meta(0o400, mtime=9)
    assert copies(store) == 1


def test_journal_coalesces_only_unsent_rows(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.sqlite")
    put = j.enqueue(B, "k", "a" * 32, 3, None, meta=meta())
    assert j.enqueue_meta(B, "k", meta(0o600), 3, UNKNOWN) == put
    claimed = j.claim(1e18)
    assert claimed is not None and claimed.meta == meta(0o600)
    first = j.enqueue_meta(B, "k", meta(0o700), 3, UNKNOWN)
    assert first != put and j.enqueue_meta(B, "k", meta(0o710), 3, UNKNOWN) == first
    j.done(put, "etag-1")
    [row] = j.pending()
    assert (row.id, row.op, row.expected, row.meta) == (first, "meta", "etag-1", meta(0o710))
    newer = j.enqueue(B, "k", "b" * 32, 4, UNKNOWN, meta=meta(0o711))  # new bytes: supersede
    assert [p.id for p in j.pending()] == [newer] and j.state(first) == ("queued", None)
    assert j.summary()["bytes"] == 4
    j.close()


# ------------------------------------------------------------------ the view of pending changes


def test_pending_entries_show_the_metadata_and_the_version_to_read(tmp_path: Path) -> None:
    from tests.test_bucket_parts import KEYS, parts  # the bucket tree's parts
    meta_store, _, overlay, pending = parts(tmp_path)
    bucket = KEYS.bucket
    overlay.metadata(bucket, "p/d/chmodded", meta(0o600, mtime=5), size=12, etag="etag-s3",
                     mtime_ns=99)
    overlay.file(bucket, "p/d/written", 3, posix=meta(0o640, mtime=6))
    overlay.file(bucket, "p/d/plain", 4, mtime_ns=77)  # no metadata: the time of the write
    overlay.directory(bucket, "p/d/sub/", Posix(mode=stat.S_IFDIR | 0o700, mtime_ns=8 * SEC))
    chmodded, written = pending.local("d", "chmodded"), pending.local("d", "written")
    plain, sub = pending.local("d", "plain"), pending.local("d", "sub")
    assert isinstance(chmodded, Entry) and isinstance(written, Entry)
    assert isinstance(plain, Entry) and isinstance(sub, Entry)
    assert (chmodded.etag, chmodded.size, chmodded.mtime_ns, chmodded.posix) == (
        "etag-s3", 12, 5 * SEC, meta(0o600, mtime=5))  # reads go to S3's version
    assert (written.etag, written.mtime_ns, written.posix) == ("", 6 * SEC, meta(0o640, mtime=6))
    assert (plain.mtime_ns, plain.posix) == (77, None)
    assert sub.is_dir and sub.mtime_ns == 8 * SEC and sub.posix is not None
    meta_store.close()


class CopiesNoMarker(MemoryStore):
    """A server that will not copy a `dir/` key (SeaweedFS answers NoSuchKey)."""

    def copy_object(self, bucket: str, source_key: str, key: str, etag: str,
                    **kwargs: Any) -> str:
        if source_key.endswith("/"):
            self._begin("CopyObject", bucket, source_key)
            raise tagged(NotFound(f"CopyObject s3://{bucket}/{source_key}: not found"),
                         "NoSuchKey", 404)
        return super().copy_object(bucket, source_key, key, etag, **kwargs)


@pytest.mark.parametrize("copies_markers", [True, False])
async def test_a_directory_marker_changes_by_a_copy_else_by_a_put(
        tmp_path: Path, copies_markers: bool) -> None:
    """A marker's new metadata goes by a copy, which keeps what else it holds (a PUT of an
    empty body dropped other tools' metadata, and the bytes of a marker that had some);
    where the server will not copy a marker, by a PUT, checked by a HEAD once, then at once."""
    store = MemoryStore() if copies_markers else CopiesNoMarker()
    store.create_bucket(B)
    for name in ("dir/", "other/"):
        store.put_object(B, name, b"", metadata=to_headers(FOLDER))
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        offline(store)
        await writes.set_posix(B, "dir/", FOLDER.replace(mode=stat.S_IFDIR | 0o700),
                               expected=UNKNOWN, size=0, is_dir=True)
        change = writes.overlay.get(B, "dir/")
        assert change is not None and change.is_dir
        assert writes.posix(B, "dir/") == FOLDER.replace(mode=stat.S_IFDIR | 0o700)
        store.reachable = True
        await synced(queue)
        before = dict(store.request_counts())
        await writes.set_posix(B, "other/", FOLDER.replace(mode=stat.S_IFDIR | 0o750),
                               expected=store.head(B, "other/").etag, size=0, is_dir=True)
        await synced(queue)
    assert stored(store, "dir/") == FOLDER.replace(mode=stat.S_IFDIR | 0o700)
    assert stored(store, "other/") == FOLDER.replace(mode=stat.S_IFDIR | 0o750)
    sent = {op: n - before.get(op, 0) for op, n in store.request_counts().items()}
    if copies_markers:
        assert copies(store) == 2 and sent.get("PutObject", 0) == 0
    else:  # the second change: a PUT at once (the server's refusal is remembered)
        assert copies(store) == 1 and sent.get("CopyObject", 0) == 0 and sent["PutObject"] == 1


IMPLICIT_DIR_ETAG = "d41d8cd98f00b204e9800998ecf8427e-0"  # SeaweedFS's, for a bare dir/


@pytest.mark.parametrize("key", ["dir/", "empty-file"])
async def test_an_empty_version_without_metadata_does_not_win_over_a_change(
        tmp_path: Path, store: MemoryStore, key: str) -> None:
    """A child's upload landing beside its directory's marker makes SeaweedFS show the marker
    as an empty object with no metadata under another ETag (refusing every If-Match): not a
    remote change to keep (it holds nothing), so the metadata change lands after a HEAD."""
    posix = FOLDER if key.endswith("/") else meta()
    async with upload_queue(tmp_path, store) as queue:
        etag = await uploaded(queue, key, b"", posix)
        store.replace(B, key, b"", etag=IMPLICIT_DIR_ETAG)
        await queue.set_meta(B, key, posix.replace(mtime_ns=7 * SEC), 0, etag)
        status = await synced(queue)
    assert status["conflicts"] == [] and stored(store, key) == posix.replace(mtime_ns=7 * SEC)


async def test_an_empty_version_with_metadata_wins_over_a_change(
        tmp_path: Path, store: MemoryStore) -> None:
    """...but one that carries metadata is someone's change: kept, ours dropped."""
    async with upload_queue(tmp_path, store) as queue:
        etag = await uploaded(queue, "dir/", b"", FOLDER)
        store.replace(B, "dir/", b"", etag=IMPLICIT_DIR_ETAG,
                      metadata=to_headers(FOLDER.replace(uid=7)))
        await queue.set_meta(B, "dir/", FOLDER.replace(mtime_ns=7 * SEC), 0, etag)
        status = await synced(queue)
    assert [c["kind"] for c in status["conflicts"]] == ["kept-remote"]
    assert stored(store, "dir/") == FOLDER.replace(uid=7)


async def test_rmdir_removes_a_marker_shown_as_an_empty_version_without_metadata(
        tmp_path: Path, store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store) as queue:
        etag = await uploaded(queue, "dir/", b"", FOLDER)
        store.replace(B, "dir/", b"", etag=IMPLICIT_DIR_ETAG)
        await queue.delete(B, "dir/", etag)
        status = await synced(queue)
    assert status["conflicts"] == [] and store.objects(B) == {}


@pytest.mark.parametrize("make", ["special", "dir", "metadata"])
async def test_an_older_job_landing_while_a_change_is_journalled_keeps_it_shown(
        tmp_path: Path, store: MemoryStore, make: str) -> None:
    """pjdfstest rename/10.t under load: `unlink f` queued a removal; `mkfifo f` showed the
    new node and awaited its journal row when the removal finished: the overlay was
    cleared (nothing pending yet) and the `lchown f` that followed got ENOENT."""
    key = "d/" if make == "dir" else "f"
    posix = Posix(mode=(stat.S_IFDIR if make == "dir" else stat.S_IFIFO) | 0o644, uid=0, gid=0)
    async with upload_queue(tmp_path, store, start=False) as queue:
        writes = writeback(queue)
        await writes.start()
        submit, set_meta = queue.submit, queue.set_meta

        async def older_job_lands_first(real: Callable[..., Any], *args: Any) -> Any:
            writes._uploaded(B, key, UploadResult(""))  # a removal of the key, done now
            return await real(*args)

        queue.submit = lambda *a: older_job_lands_first(submit, *a)  # type: ignore[method-assign]
        queue.set_meta = lambda *a: older_job_lands_first(set_meta, *a)  # type: ignore[method-assign]
        if make == "special":
            await writes.create_special(B, key, b"", posix, None)
        elif make == "dir":
            await writes.make_dir(B, key, posix)
        else:
            await writes.set_posix(B, key, posix, expected="etag", size=0)
        change = writes.overlay.get(B, key)
        assert change is not None and not change.deleted and change.posix == posix


async def test_copies_go_four_at_a_time_during_a_chmod_and_sixteen_after_it(
        tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a `chmod -R` goes on, only the 4 workers that take any job copy (16 slowed the
    chmod 2x on two cores); once it pauses, the light workers copy what it left of small
    objects too, and none of them asked over and over meanwhile."""
    import threading
    import time

    from s3fuse.upload import queue as upload_queue_module
    from s3fuse.upload.journal import Job

    lock = threading.Lock()
    inside, during, after = 0, 0, 0
    chmodding = True
    async with upload_queue(tmp_path, store) as queue:
        objects = {f"d/f{n}": store.put_object(B, f"d/f{n}", b"x") for n in range(240)}
        upload = queue.uploader.upload
        claims = counted_claims(queue, monkeypatch)

        def slow(job: Job) -> UploadResult:
            nonlocal inside, during, after
            with lock:
                inside += 1
                if chmodding:
                    during = max(during, inside)
                else:
                    after = max(after, inside)
            time.sleep(0.05)
            try:
                return upload(job)
            finally:
                with lock:
                    inside -= 1

        monkeypatch.setattr(queue.uploader, "upload", slow)
        # as before a real chmod: every worker idle. Still asking the journal at the first
        # change (as right after the queue starts), each light worker saw it and, the burst
        # not known yet, claimed a copy: 10 at once during the chmod, under load
        await workers_parked(queue)
        for key, etag in list(objects.items())[:200]:  # a chmod: a change every ~2 ms
            await queue.set_meta(B, key, meta(0o700), 1, etag)
            await trio.sleep(0.002)
        with lock:
            chmodding = False
        for key, etag in list(objects.items())[200:]:  # and its last changes at once
            await queue.set_meta(B, key, meta(0o700), 1, etag)
        await synced(queue)
    # 4, and a light worker now and then: the first change (alone until the second came),
    # or one after a gap of BURST_GAP in the chmod (a burst starts again)
    assert during <= 2 * upload_queue_module.HEAVY_UPLOADS, during
    assert after > 2 * upload_queue_module.HEAVY_UPLOADS, after
    assert claims() < 3 * 240, f"{claims()} claims for 240 copies"
    assert copies(store) == 240
    for key in objects:
        assert stored(store, key) == meta(0o700)
