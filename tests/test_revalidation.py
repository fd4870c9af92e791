"""Revalidating files after the TTL: a HEAD each, or one listing of their directory.

Re-reading a directory of cached files after the metadata TTL (a training run's next
epoch) sent one HEAD per file; a listing refreshes a page of them per request.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from s3fuse.store.memory import MemoryStore
from s3fuse.tree.bucket import listing
from tests.support.bucketrig import bucket_tree

B = "bkt"


def store_with(files: int) -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket(B)
    for i in range(files):
        memory.put_object(B, f"d/f{i:05d}", b"x")
    return memory


async def stat_all_after_the_ttl(tmp_path: Path, memory: MemoryStore, files: int,
                                 monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """List d/, let the TTL pass, stat every file of it: the requests that took."""
    async with bucket_tree(tmp_path, memory, B) as (tree, _):
        assert len(await tree.listdir("d")) == files
        for i in range(files):  # known, metadata looked up: only the TTL makes them stale
            await tree.stat(f"d/f{i:05d}")
        later = time.time() + 61
        monkeypatch.setattr(listing.time, "time", lambda: later)
        before = memory.request_counts()
        for i in range(files):
            assert (await tree.stat(f"d/f{i:05d}")).size == 1
        after = memory.request_counts()
    return {op: after.get(op, 0) - before.get(op, 0) for op in after}


async def test_a_small_directory_is_listed_again_instead_of_a_head_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = await stat_all_after_the_ttl(tmp_path, store_with(300), 300, monkeypatch)
    assert sent.get("HeadObject", 0) == 0 and sent.get("ListObjectsV2", 0) == 1, sent


async def test_a_big_directory_is_listed_once_its_heads_would_cost_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "LIST_PAGE", 100)  # 2,000 files: 20 pages
    memory = store_with(2000)
    memory.page_size = 100
    sent = await stat_all_after_the_ttl(tmp_path, memory, 2000, monkeypatch)
    assert sent.get("HeadObject", 0) <= 20 and sent.get("ListObjectsV2", 0) <= 21, sent
