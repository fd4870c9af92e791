"""Crash order of an upload's listing update: the journal forgets a finished upload only
once the listing update it caused is on disk, also when the metadata store had to queue
that update behind a bulk listing write (else a crash in between loses it: the job is
not replayed, and the stored listing misses the file until --metadata-ttl passes)."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.model import Entry
from s3fuse.store.memory import MemoryStore
from tests.test_upload import upload_queue, write

B = "bucket"


def stored(path: Path, name: str) -> bool:
    """Is the entry committed to the metadata file (what a crash would leave)?"""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT 1 FROM entries WHERE ns='ns' AND dir='' AND name=?",
                          (name,)).fetchone() is not None
    finally:
        db.close()


async def test_the_journal_forgets_an_upload_only_once_its_listing_update_is_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    store.create_bucket(B)
    path = tmp_path / "meta.sqlite"
    meta = MetaStore(path)
    holding, decided = threading.Event(), threading.Event()
    on_disk_at_done: list[bool] = []

    def listener(bucket: str, key: str, result: Any) -> None:  # what a bucket tree does
        meta.update_entry("ns", "", Entry(key, False, result.size, 0, result.etag))

    class Writes:  # the listing store, telling when the queue waits for it
        def queued(self) -> bool:
            return meta.queued()

        def flush(self) -> None:
            decided.set()  # the queue waits for the listing: the bulk write may end now
            meta.flush()

    def bulk_listing_write() -> None:  # a big listing being stored holds the writer lock
        with meta.writing():
            holding.set()
            decided.wait(10)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, bulk_listing_write)
            await trio.to_thread.run_sync(holding.wait, 10)
            async with upload_queue(tmp_path, store, on_uploaded=listener,
                                    listener_writes=Writes()) as queue:
                done = queue.journal.done

                def recording_done(*args: Any, **kwargs: Any) -> None:
                    on_disk_at_done.append(stored(path, "a.txt"))
                    decided.set()  # without the wait: the journal went first
                    done(*args, **kwargs)
                monkeypatch.setattr(queue.journal, "done", recording_done)
                job = await write(queue, B, "a.txt", b"alpha")
                with trio.fail_after(10):
                    assert await queue.wait(job)
    finally:
        meta.close()
    assert on_disk_at_done == [True]
    assert store.objects(B) == {"a.txt": b"alpha"}


def test_flush_returns_at_once_when_nothing_is_queued(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    try:
        meta.update_entry("ns", "", Entry("a", False, 1))  # written at once: no writer
        meta.flush()
        assert stored(tmp_path / "meta.sqlite", "a")
    finally:
        meta.close()
