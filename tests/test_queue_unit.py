"""The upload queue against the in-memory store: retries, permanent failures, offline,
conflicts, multipart and the order of versions, with injected faults and no moto."""
from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Iterator

import pytest
import trio

from s3fuse.store.memory import MemoryStore
from s3fuse.upload.conditions import PROBE_PUTS
from s3fuse.upload.groupcommit import GroupCommit
from s3fuse.upload import Journal, Staging, Uploader, UploadFailed, UploadQueue
from s3fuse.upload import queue as queue_module
from s3fuse.upload.journal import UNKNOWN, Job
from s3fuse.upload.uploader import UploadResult, conflict_name
from tests.test_upload import until_retrying, upload_queue, write

MiB = 1 << 20
B = "bucket"


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore(min_part_size=MiB)
    memory.create_bucket(B)
    return memory


def mib_parts(store: MemoryStore, journal: Journal, staging: Staging) -> Uploader:
    """Multipart above 1 MiB, in 1 MiB parts."""
    return Uploader(store, journal, staging, threshold=MiB, part_size=MiB)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_transient_faults_are_retried_with_backoff(tmp_path: Path, store: MemoryStore) -> None:
    store.fail("PutObject", times=3)
    async with upload_queue(tmp_path, store) as queue:
        job = await write(queue, B, "out/a.txt", b"payload")
        [retrying] = await until_retrying(queue)
        assert retrying["uri"] == f"s3://{B}/out/a.txt" and "SlowDown" in retrying["error"]
        assert await queue.wait(job)
        status = await queue.sync(timeout=10)
    assert status["files"] == 0 and status["failures"] == []
    assert store.objects(B) == {"out/a.txt": b"payload"}
    assert store.request_counts()["PutObject"] == 4


async def test_permanent_failure_is_kept_and_reported(tmp_path: Path, store: MemoryStore) -> None:
    store.fail("PutObject", error="permanent")
    async with upload_queue(tmp_path, store) as queue:
        job = await write(queue, B, "keep.txt", b"precious")
        status = await queue.sync(timeout=10)
        assert status["files"] == 0 and len(status["failures"]) == 1
        assert "access denied" in status["failures"][0]["error"]
        with pytest.raises(UploadFailed):
            await queue.wait(job)
        assert store.request_counts()["PutObject"] == 1 and store.objects(B) == {}
        staged = queue.pending_version(B, "keep.txt")
        assert staged is not None and staged.read_bytes() == b"precious"
        assert await queue.retry_failed() == 1
        status = await queue.sync(timeout=10)
    assert status["failures"] == [] and store.objects(B) == {"keep.txt": b"precious"}


async def test_offline_pauses_uploads_and_they_resume(tmp_path: Path, store: MemoryStore) -> None:
    store.reachable = False
    async with upload_queue(tmp_path, store) as queue:
        jobs = [await write(queue, B, f"f{n}", b"x" * n) for n in range(3)]
        with trio.fail_after(5):
            assert await queue.wait(jobs[0]) is False  # fsync offline: journalled is enough
        status = queue.status()
        assert status["files"] == 3 and all(r["attempts"] == 0 for r in status["retrying"])
        assert store.request_counts().get("PutObject", 0) <= 1  # no retry storm
        store.reachable = True
        assert (await queue.sync(timeout=10))["files"] == 0
    assert store.objects(B) == {"f0": b"", "f1": b"x", "f2": b"xx"}


@pytest.mark.parametrize("size", [100, 3 * MiB], ids=["put", "multipart"])
async def test_412_uploads_a_conflict_copy(tmp_path: Path, store: MemoryStore, size: int) -> None:
    seen = store.put_object(B, "doc.txt", b"v0")
    store.put_object(B, "doc.txt", b"theirs")
    mine = b"m" * size
    async with upload_queue(tmp_path, store, uploader=mib_parts) as queue:
        await write(queue, B, "doc.txt", mine, expected=seen)
        status = await queue.sync(timeout=10)
    objects = store.objects(B)
    [conflict] = [k for k in objects if k != "doc.txt"]
    assert re.fullmatch(r"doc\.txt\.s3fuse-conflict-\d{8}T\d{6}Z", conflict)
    assert objects == {"doc.txt": b"theirs", conflict: mine}
    assert [c["conflict_uri"] for c in status["conflicts"]] == [f"s3://{B}/{conflict}"]


def test_a_conflict_copys_name_fits_a_path_component_and_a_key() -> None:
    """A name near 255 bytes made a copy the mount hid, a key near 1,024 one S3 refused
    (the upload failed for good): cut to fit, whole characters, told apart by a hash."""
    assert conflict_name("d/short.txt", 0) == "d/short.txt.s3fuse-conflict-19700101T000000Z"
    long_name = "é" * 120  # 240 bytes
    cut = conflict_name(f"dir/{long_name}", 0)
    head, name = cut.split("/")
    assert head == "dir" and len(f"{name}-99".encode()) <= 255 and name.startswith("é" * 10)
    assert name.endswith(".s3fuse-conflict-19700101T000000Z") and "~" in name
    assert conflict_name(f"dir/{long_name}x", 0) != cut  # another cut name, another copy
    deep = "/".join(["p" * 200] * 5)  # 1,004 bytes
    assert len(f"{conflict_name(deep, 0)}-99".encode()) <= 1024


async def test_multipart_part_failure_aborts_and_retries(tmp_path: Path, store: MemoryStore) -> None:
    data = bytes(range(256)) * (10 * 1024 + 7)  # 2.5 MiB: three parts
    store.fail("UploadPart", times=1)
    async with upload_queue(tmp_path, store, uploader=mib_parts) as queue:
        await write(queue, B, "big.bin", data)
        status = await queue.sync(timeout=10)
    assert status["failures"] == [] and store.objects(B) == {"big.bin": data}
    assert store.head(B, "big.bin").etag.endswith("-3")
    counts = store.request_counts()
    assert counts["CreateMultipartUpload"] == 2 and counts["AbortMultipartUpload"] >= 1
    assert store.list_multipart_uploads(B) == []


async def test_only_the_last_queued_version_is_uploaded(tmp_path: Path, store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store, start=False) as queue:
        for version in (b"one", b"two", b"three"):
            await write(queue, B, "v.txt", version, expected=None)
        await queue.start()
        await queue.sync(timeout=10)
    assert store.objects(B) == {"v.txt": b"three"}
    assert store.request_counts()["PutObject"] == 1 + PROBE_PUTS  # and the bucket's probe


async def test_a_version_written_during_an_upload_follows_it(tmp_path: Path,
                                                             store: MemoryStore) -> None:
    """v2 is closed while v1 is being sent: v1 lands first, then v2, If-Match v1's ETag
    (no conflict with our own upload)."""
    store.latency = 0.3
    etags: list[str] = []
    async with upload_queue(tmp_path, store,
                            on_uploaded=lambda bucket, key, result: etags.append(result.etag)
                            ) as queue:
        await write(queue, B, "w.txt", b"v1", expected=None)
        await until(lambda: store.request_counts().get("PutObject", 0) == 1 + PROBE_PUTS)
        await write(queue, B, "w.txt", b"v2-longer", expected=None)
        status = await queue.sync(timeout=10)
    assert status["conflicts"] == [] and store.objects(B) == {"w.txt": b"v2-longer"}
    assert list(dict.fromkeys(etags)) == [md5(b"v1"), md5(b"v2-longer")]
    assert store.request_counts()["PutObject"] == 2 + PROBE_PUTS


async def test_an_older_jobs_late_telling_is_not_passed_on_after_a_newer_ones(
        tmp_path: Path, store: MemoryStore) -> None:
    """A job is told twice, the second time after awaits in which the key's next job can
    land and be told: the older landing must not reach the listeners after it (it wrote
    the old version into the stored listing)."""
    told: list[str] = []
    async with upload_queue(tmp_path, store, start=False,
                            on_uploaded=lambda bucket, key, result: told.append(result.etag)
                            ) as queue:
        older, newer = (Job(n, B, "k", "", 0, UNKNOWN, 0, 0.0) for n in (1, 2))
        queue._tell_uploaded(older, UploadResult("v1"))
        queue._tell_uploaded(newer, UploadResult("v2"))
        queue._tell_uploaded(newer, UploadResult("v2"))
        queue._tell_uploaded(older, UploadResult("v1"))  # its second telling, late
        queue._tell_uploaded(Job(1, B, "other", "", 0, UNKNOWN, 0, 0.0), UploadResult("o"))
    assert told == ["v1", "v2", "v2", "o"]


async def test_a_held_version_waits_for_its_handle_unless_someone_waits(
        tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush whose handle stays open (a forked child's close) journals the version but
    holds its upload until `unhold` (the handle's release), at most HOLD_MAX. Other jobs
    go meanwhile, a newer job of the same key too (another handle's close: the review
    found a `>>` line waiting 60 s behind a long-lived writer), and an fsync's wait for
    another file ends no hold; `sync` and `release_holds` end every hold."""
    async with upload_queue(tmp_path, store) as queue:
        with queue.holding_key(B, "held.txt"):
            held = await write(queue, B, "held.txt", b"half")
            queue.hold(held)
        other = await write(queue, B, "other.txt", b"free")
        assert await queue.wait(other)  # someone waits for another file: still held
        await trio.sleep(0.3)
        assert "held.txt" not in store.objects(B)
        queue.unhold(held)
        await until(lambda: "held.txt" in store.objects(B))
        with queue.holding_key(B, "held.txt"):
            queue.hold(await write(queue, B, "held.txt", b"half again"))
        await write(queue, B, "held.txt", b"whole")  # another handle's close: at once
        await until(lambda: store.objects(B)["held.txt"] == b"whole")
        queue.hold(await write(queue, B, "held.txt", b"and again"))
        status = await queue.sync(timeout=10)  # someone waits for everything
        assert status["files"] == 0 and store.objects(B)["held.txt"] == b"and again"
        renamed = await write(queue, B, "held.txt", b"moving")
        queue.hold(renamed)
        moved = await write(queue, B, "moved.txt", b"moving")
        queue.hold_as(renamed, moved)  # its open file was renamed: the new name waits too
        await trio.sleep(0.3)
        assert "moved.txt" not in store.objects(B)
        queue.unhold(renamed)
        await until(lambda: "moved.txt" in store.objects(B))
        queue.hold(await write(queue, B, "held.txt", b"released"))
        queue.release_holds()
        await until(lambda: store.objects(B)["held.txt"] == b"released")
        monkeypatch.setattr(queue_module, "HOLD_MAX", 0.2)
        queue.hold(await write(queue, B, "held.txt", b"never unheld"))
        await until(lambda: store.objects(B)["held.txt"] == b"never unheld")


def test_queue_types_against_the_protocol() -> None:
    """The queue and the uploader accept any Store: the fake is one."""
    import inspect

    from s3fuse.store.protocol import Store
    for cls in (UploadQueue, Uploader):
        assert inspect.signature(cls.__init__).parameters["store"].annotation in (Store, "Store")


async def test_a_small_close_is_journalled_on_the_loop_unless_a_thread_writes(
        tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quick submit (a small file, CRC known) is journalled by the trio loop itself, no
    thread round trip; while a thread holds the journal's writer lock (a durable commit
    of the sync pass) it goes to a thread instead, and never waits on the loop. Both
    are journalled and uploaded alike."""
    async with upload_queue(tmp_path, store) as queue:
        threads: list[str] = []
        io = queue._io

        async def counting(fn: Callable[..., object], *args: object) -> object:
            threads.append(getattr(fn, "__name__", "?"))
            return await io(fn, *args)
        monkeypatch.setattr(queue, "_io", counting)

        async def close(key: str, data: bytes) -> int:
            staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
            await trio.to_thread.run_sync(path.write_bytes, data)
            return await queue.submit(B, key, staging_id, quick=True,
                                      settle=lambda: (len(data), zlib.crc32(data)))

        # The workers' own claims take the writer lock in threads too: a close that finds
        # it busy goes to a thread, rightly; retry until one finds it free.
        journal = queue.journal
        frees: list[bool] = []
        writer_if_free = journal.writer_if_free

        @contextlib.contextmanager
        def observed() -> Iterator[bool]:
            with writer_if_free() as free:
                frees.append(free)
                yield free
        monkeypatch.setattr(journal, "writer_if_free", observed)
        on_loop: dict[str, bytes] = {}
        for attempt in range(20):
            before = threads.count("_enqueue")
            key, data = f"here{attempt}", b"on the loop"
            await close(key, data)
            on_loop[key] = data
            assert (threads.count("_enqueue") > before) == (not frees[-1])
            if frees[-1]:
                break
        assert frees[-1], "the writer lock was never free"
        monkeypatch.setattr(journal, "writer_if_free", writer_if_free)
        held, release = threading.Event(), threading.Event()

        def writer() -> None:
            while True:  # a worker's claim may hold it a moment
                with journal.writer_if_free() as free:
                    if free:
                        held.set()
                        release.wait(10)
                        return
                time.sleep(0.001)
        thread = threading.Thread(target=writer)
        thread.start()
        held.wait(10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(close, "there", b"in a thread")
            await until(lambda: "_enqueue" in threads)  # the loop is free meanwhile
            release.set()
        thread.join()
        assert (await queue.sync(timeout=10))["files"] == 0
    assert store.objects(B) == {**on_loop, "there": b"in a thread"}


def test_the_journal_checkpoints_in_the_sync_pass_only(tmp_path: Path) -> None:
    """No commit checkpoints the journal (the loop commits small files: no fsync there);
    the sync pass does, so the WAL stays short."""
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        wal = tmp_path / "journal.sqlite-wal"
        for n in range(300):
            journal.enqueue(B, f"k{n}", f"s{n}", 1, UNKNOWN, crc32=0)
        grown = wal.stat().st_size
        assert grown > 1000 * 4096  # past SQLite's default auto-checkpoint: none ran
        journal.checkpoint()
        journal.enqueue(B, "after", "s", 1, UNKNOWN, crc32=0)  # restarts the WAL from its start
        assert wal.stat().st_size <= grown and (B, "after") in journal.latest()
    finally:
        journal.close()


async def test_a_sync_pass_in_flight_keeps_the_queue_busy(tmp_path: Path) -> None:
    """The pass deletes finished uploads' staging files last: until it returns, the idle
    query must not answer idle (a test once found two staging files left after `idle`)."""
    journal = Journal(tmp_path / "journal.sqlite")
    staging = Staging(tmp_path / "staging")
    entered, release = threading.Event(), threading.Event()

    async def io(fn, *args):  # type: ignore[no-untyped-def]
        def slow() -> None:
            entered.set()
            release.wait(10)
            fn(*args)
        await trio.to_thread.run_sync(slow)

    commits = GroupCommit(journal, staging, io, lambda: None)
    try:
        commits.want()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commits.now)
            await until(entered.is_set)
            assert commits.due  # the pass runs: not idle yet
            release.set()
        assert not commits.due
    finally:
        release.set()
        journal.close()
