"""When a key closed again and again may upload (upload/rewrites.py), and the queue's
honouring of it: a rewrite waits for its key to pause, fsync and sync never wait."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from s3fuse.store.memory import MemoryStore
from s3fuse.upload import rewrites
from s3fuse.upload.rewrites import MAX, QUIET, WINDOW, Rewrites
from tests.test_upload import upload_queue, write

B = "bucket"


def test_a_lone_close_and_a_close_after_a_pause_upload_at_once():
    plan = Rewrites()
    assert plan.due(B, "a", 100.0) == 0.0
    assert plan.due(B, "b", 100.5) == 0.0                      # another key: its own
    assert plan.due(B, "a", 100.0 + WINDOW + 0.1) == 0.0       # paused long enough


def test_closes_in_a_row_wait_for_a_pause_and_at_most_max():
    plan = Rewrites()
    assert plan.due(B, "log", 0.0) == 0.0
    assert plan.due(B, "log", 1.0) == 1.0 + QUIET             # the first that waits
    assert plan.due(B, "log", 2.0) == 2.0 + QUIET             # each close pushes it
    t = 2.0
    while t < MAX:                                            # a close a second ...
        t += 1.0
        assert plan.due(B, "log", t) == min(t + QUIET, 1.0 + MAX)  # ... up to MAX after 1.0
    plan.started(B, "log")                                    # that version went
    assert plan.due(B, "log", t + 1.0) == t + 1.0 + QUIET     # a new wait from here


def test_the_keys_remembered_are_bounded():
    plan = Rewrites(capacity=2)
    for key in ("a", "b", "c"):
        plan.due(B, key, 0.0)
    assert plan.due(B, "a", 1.0) == 0.0                       # forgotten: uploads at once
    assert plan.due(B, "c", 1.0) == 1.0 + QUIET


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket(B)
    return memory


def puts(store: MemoryStore) -> int:
    """PUTs sent (the writes here carry no condition: no probe PUTs of the bucket)."""
    return store.request_counts().get("PutObject", 0)


LOG = b"x" * rewrites.MIN_BYTES  # a log big enough that sending it again costs


async def test_the_queue_holds_a_rewrite_until_its_key_pauses(tmp_path: Path, store: MemoryStore,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rewrites, "QUIET", 0.5)
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, B, "app.log", LOG + b"1\n")
        await queue.sync(timeout=10)
        assert puts(store) == 1
        for body in (b"1\n2\n", b"1\n2\n3\n"):
            await write(queue, B, "app.log", LOG + body)
            await trio.sleep(0.2)
        assert puts(store) == 1                                # held: closed moments ago
        await trio.sleep(0.8)                                  # the key paused
        assert puts(store) == 2 and store.objects(B) == {"app.log": LOG + b"1\n2\n3\n"}


async def test_small_files_are_never_held(tmp_path: Path, store: MemoryStore,
                                          monkeypatch: pytest.MonkeyPatch):
    """An editor's saves, git's index, a directory's marker: cheap to send again."""
    monkeypatch.setattr(rewrites, "QUIET", 60.0)
    async with upload_queue(tmp_path, store) as queue:
        for body in (b"v1", b"v2", b"x" * rewrites.MIN_BYTES):
            await write(queue, B, "notes.txt", body)
            with trio.fail_after(5):
                while store.objects(B).get("notes.txt") != body:
                    await trio.sleep(0.01)


async def test_fsync_and_sync_never_wait_for_a_pause(tmp_path: Path, store: MemoryStore,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rewrites, "QUIET", 60.0)
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, B, "a.txt", LOG + b"v1")
        await write(queue, B, "b.txt", LOG + b"v1")
        await queue.sync(timeout=10)
        job = await write(queue, B, "a.txt", LOG + b"v2")       # held for a minute ...
        with trio.fail_after(5):
            assert await queue.wait(job)                        # ... but not for fsync
        await write(queue, B, "b.txt", LOG + b"v2")
        with trio.fail_after(5):
            status = await queue.sync()                         # nor for sync
    assert status["files"] == 0
    assert store.objects(B) == {"a.txt": LOG + b"v2", "b.txt": LOG + b"v2"}
