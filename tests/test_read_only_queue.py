"""A `--read-only` mount sends no write request: on a cache dir whose journal holds changes
of an earlier read-write mount (a queued upload, a failed removal, a probe key and a
multipart upload a crash left), it keeps them all for a read-write mount: no PUT, no
DELETE, no abort, `sync` answers at once and `sync --retry` is refused. Over the
in-memory store; the text `s3fuse sync` and `status` print for such a queue."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from s3fuse.cli import _queue_line
from s3fuse.errors import ReadOnly
from s3fuse.store.memory import MemoryStore
from s3fuse.upload import Journal, Staging
from tests.test_upload import upload_queue

B = "bkt"
PROBE = "d/.s3fuse-probe-0123456789abcdef"


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket(B)
    memory.put_object(B, "old.txt", b"old")
    memory.put_object(B, PROBE, b"")
    memory.create_multipart_upload(B, "big.bin")
    return memory


def left_by_a_read_write_mount(cache: Path, store: MemoryStore) -> None:
    """A queued upload, a removal that failed for good, a probe key, a multipart upload."""
    journal = Journal(cache / "journal.sqlite")
    try:
        staging_id, path = Staging(cache / "staging").create()
        path.write_bytes(b"new")
        journal.enqueue(B, "new.txt", staging_id, 3, None)
        removal = journal.enqueue(B, "old.txt", "", 0, store.head(B, "old.txt").etag, op="delete")
        assert journal.claim(0.0, light_max=0).id == removal  # type: ignore[union-attr]
        journal.fail(removal, "DeleteObject s3://bkt/old.txt: access denied (AccessDenied)")
        journal.probe_begin(B, PROBE)
        record = journal.multipart_begin(B, "big.bin")
        journal.multipart_created(record, store.list_multipart_uploads(B)[0][1])
    finally:
        journal.close()


async def test_a_read_only_mount_keeps_the_queue_and_sends_nothing(tmp_path: Path,
                                                                   store: MemoryStore) -> None:
    left_by_a_read_write_mount(tmp_path, store)
    before = store.request_counts()
    async with upload_queue(tmp_path, store, read_only=True) as queue:
        assert queue.pending(B, "new.txt") and queue.pending(B, "old.txt")  # shown as pending
        with trio.fail_after(2):
            status = await queue.sync(timeout=30)  # at once: nothing will change here
        assert status["read_only"] and status["files"] == 1 and len(status["failures"]) == 1
        with pytest.raises(ReadOnly):
            await queue.retry_failed()
        await trio.sleep(0.2)  # workers would have started by now
    assert store.request_counts() == before  # not one request
    assert sorted(store.objects(B)) == [PROBE, "old.txt"]
    assert len(store.list_multipart_uploads(B)) == 1
    line = _queue_line(status)
    assert line.endswith("kept for a read-write mount (this one is read-only)"), line

    async with upload_queue(tmp_path, store) as queue:  # the read-write mount sends them
        await queue.retry_failed()
        status = await queue.sync(timeout=10)
    assert status["files"] == 0 and not status["read_only"]
    assert store.objects(B) == {"new.txt": b"new"}
    assert store.list_multipart_uploads(B) == []
