"""Long S3 work in a worker thread stops when its task is cancelled (util/stoppoint.py).

An unmount cancels every background task, but a thread cannot be interrupted: a relisting
of 1,000,000 keys or a 10,000,000-line manifest being ingested kept the daemon alive for
the rest of it (`make bench` killed it 15 s after the unmount). Both now stop between two
pages or chunks, store nothing half-built, and a later listing or build starts afresh.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.config import parse_manifest, parse_source
from s3fuse.manifest.attempts import BUILDING, FAILED_ETAG
from s3fuse.manifest.index import ROOT_ID
from s3fuse.manifest.ingest import IngestLimits
from s3fuse.store.memory import MemoryStore
from s3fuse.store.protocol import ListPage, ObjectInfo
from s3fuse.tree.bucket import BucketTree
from s3fuse.tree.manifest import ManifestTree
from s3fuse.tree.shards import ShardService
from s3fuse.util.stoppoint import stop_points

PAGES = 400
PAGE_SECONDS = 0.01  # a whole listing or ingestion takes 4 s; a stop must take one step
STOPPED_WITHIN = 1.0


class Steps:
    """Counts the steps (pages, chunks) a slow S3 has given, and tells when there were 2."""

    def __init__(self) -> None:
        self.given = 0
        self.two = threading.Event()

    def step(self) -> None:
        time.sleep(PAGE_SECONDS)
        self.given += 1
        if self.given == 2:
            self.two.set()


class SlowPages:
    """A store listing `big/` as PAGES pages of 10 keys, one page per PAGE_SECONDS."""

    def __init__(self) -> None:
        self.steps = Steps()

    def list_pages(self, bucket: str, prefix: str) -> Iterator[ListPage]:
        for page in range(PAGES):
            self.steps.step()
            yield ListPage([], [ObjectInfo(f"{prefix}f{page:04d}-{i}", 1, 0, "e") for i in range(10)])


class SlowChunks(MemoryStore):
    """A memory store whose objects are read in chunks one PAGE_SECONDS apart."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = Steps()

    def iter_chunks(self, bucket: str, key: str, etag: str, size: int, chunk: int) -> Iterator[bytes]:
        for data in super().iter_chunks(bucket, key, etag, size, chunk):
            self.steps.step()
            yield data


async def cancel_after_two_steps(work, steps: Steps) -> float:
    """Run `work()`, cancel it once S3 gave two steps; seconds from the cancel to its end."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        await trio.to_thread.run_sync(steps.two.wait)
        began = time.monotonic()
        nursery.cancel_scope.cancel()
    return time.monotonic() - began


def test_outside_trio_threads_every_item_passes():
    assert list(stop_points(range(5))) == [0, 1, 2, 3, 4]


async def test_a_cancelled_relisting_stops_between_two_pages(tmp_path: Path):
    store = SlowPages()
    meta = MetaStore(tmp_path / "meta.sqlite")
    tree = BucketTree(parse_source("s3://bkt"), store, meta, None,  # type: ignore[arg-type]
                      ttl=60, list_limiter=trio.CapacityLimiter(4), posix_metadata=False)
    took = await cancel_after_two_steps(lambda: tree.listdir("big"), store.steps)
    assert took < STOPPED_WITHIN
    assert store.steps.given < 10, f"{store.steps.given} of {PAGES} pages listed after the cancel"
    assert meta.listed_at(tree.keys.ns_id, "big") is None  # nothing half-listed stored
    with trio.fail_after(30):  # listed again, whole
        assert len(await tree.listdir("big")) == PAGES * 10


async def test_a_cancelled_manifest_ingestion_stops_between_two_chunks(tmp_path: Path):
    store = SlowChunks()
    store.create_bucket("bkt")
    lines = [json.dumps({"kind": "file", "key": f"m/d{n // 100}/f{n}.bin", "size": 1, "etag": "e"})
             for n in range(20_000)]
    body = "\n".join(lines).encode()
    store.put_object("bkt", "m/manifest.jsonl", body)
    chunk = -(-len(body) // PAGES)
    tree = ManifestTree(parse_manifest("s3://bkt/m/manifest.jsonl"), store, None,  # type: ignore[arg-type]
                        tmp_path, ttl=60, limiter=trio.CapacityLimiter(4),
                        shards=ShardService(store, None, ttl=60),  # type: ignore[arg-type]
                        limits=IngestLimits(chunk_bytes=chunk))
    try:
        took = await cancel_after_two_steps(lambda: tree.stat(ROOT_ID), store.steps)
        assert took < STOPPED_WITHIN
        assert store.steps.given < 10, f"{store.steps.given} of {PAGES} chunks read after the cancel"
        # stopped, not failed: no backoff, and no "died during the build" at the next start
        assert tree.index.info(BUILDING) is None and tree.index.info(FAILED_ETAG) is None
        assert tree.index.info("root_etag") is None  # nothing half-built served
        with trio.fail_after(30):  # built again, whole
            await tree.stat(ROOT_ID)
        assert tree.index.child(ROOT_ID, "d0") is not None
        assert tree.index.info("root_etag") is not None
    finally:
        tree.close()


@pytest.mark.parametrize("cancelled", [False, True])
async def test_stop_points_in_a_trio_thread(cancelled: bool):
    seen: list[int] = []
    started = threading.Event()

    def walk() -> None:
        for n in stop_points(range(200)):
            seen.append(n)
            started.set()
            time.sleep(0.005)

    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, walk)
            await trio.to_thread.run_sync(started.wait)
            if cancelled:
                nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert (len(seen) < 20) if cancelled else (seen == list(range(200)))
