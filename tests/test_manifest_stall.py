"""An ingestion holding a manifest index's write lock never stalls the trio loop (issue 12).

A re-ingestion writes in one long transaction; the point writes the loop makes meanwhile
(a file's size learned by HEAD, a shard that could not be indexed) are handed to the
index's writer thread, so a lookup answers in milliseconds instead of waiting out
SQLite's busy timeout (then failing with "database is locked"), and what it learned
lands once the ingestion lets go.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import trio

from s3fuse.config import parse_manifest
from s3fuse.manifest.index import ROOT_ID
from s3fuse.store.memory import MemoryStore
from s3fuse.tree.manifest import ManifestTree
from s3fuse.tree.shards import ShardService

BOUND = 1.0  # generous: the busy timeout it must not wait for is 5 s
B = "bkt"


def manifest_tree(tmp_path: Path) -> tuple[ManifestTree, MemoryStore]:
    """A manifest with a file whose line has no size or ETag, and a shard whose archive is gone."""
    store = MemoryStore()
    store.create_bucket(B)
    store.put_object(B, "m/data.bin", b"d" * 1234)
    lines = [{"kind": "file", "key": "m/data.bin"},
             {"kind": "shard", "archive_key": "m/gone.tar", "format": "tar", "compression": None}]
    store.put_object(B, "m/manifest.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    shards = ShardService(store, None, ttl=60)  # type: ignore[arg-type]
    tree = ManifestTree(parse_manifest(f"s3://{B}/m/manifest.jsonl"), store, None,  # type: ignore[arg-type]
                        tmp_path, ttl=60, limiter=trio.CapacityLimiter(4), shards=shards)
    return tree, store


async def test_lookups_answer_while_an_ingestion_holds_the_write_lock(tmp_path: Path):
    tree, store = manifest_tree(tmp_path)
    try:
        await tree.stat(ROOT_ID)  # ingested
        file_id = tree.index.child(ROOT_ID, "data.bin").id  # type: ignore[union-attr]
        shard_id = tree.index.child(ROOT_ID, "gone.tar").id  # type: ignore[union-attr]
        assert tree.index.node(file_id).size is None  # type: ignore[union-attr]
        heads = store.request_counts()["HeadObject"]

        ingestion = tree.index.writer()  # a re-ingestion in progress: SQLite's write lock
        try:
            began = time.monotonic()
            found = await tree.lookup(ROOT_ID, "data.bin")
            assert found is not None and found[1].size == 1234 and found[1].etag
            assert await tree.lookup(shard_id, "member") is None  # the archive is gone
            assert time.monotonic() - began < BOUND
        finally:
            ingestion.abort()
        assert store.request_counts()["HeadObject"] == heads + 2  # the file, the archive

        await trio.to_thread.run_sync(tree.index.settle)  # what the lookups learned lands
        node = tree.index.node(file_id)
        assert node is not None and (node.size, node.etag) == (1234, found[1].etag)
        assert tree.index.shard(shard_id)["state"] == "failed"  # type: ignore[index]
        assert (await tree.lookup(ROOT_ID, "data.bin"))[1].size == 1234  # type: ignore[index]
        assert store.request_counts()["HeadObject"] == heads + 2  # no HEAD again
    finally:
        tree.close()


def test_a_learned_size_never_lands_on_a_node_an_ingestion_changed(tmp_path: Path):
    tree, _ = manifest_tree(tmp_path)
    try:
        index = tree.index
        writer = index.writer()
        writer.add_file(["data.bin"], "m/other.bin", None, None, None, None)
        writer.commit()
        node = index.child(ROOT_ID, "data.bin")
        assert node is not None and node.key == "m/other.bin"
        index.remember_file(node.id, "m/data.bin", 1234, "etag-of-the-old-object").result()
        assert index.node(node.id).size is None  # type: ignore[union-attr]
    finally:
        tree.close()


async def test_a_manifest_gone_from_s3_is_asked_for_once_per_ttl(tmp_path: Path, caplog):
    """Deleted while mounted: the view keeps its last index, says so once, and asks S3
    again after the TTL, not at every request (each lookup and stat sent a HEAD)."""
    import logging
    store = MemoryStore()
    store.create_bucket(B)
    etag = store.put_object(B, "m/a.txt", b"a")
    store.put_object(B, "m/manifest.jsonl", b'{"kind": "file", "key": "m/a.txt", '
                     b'"size_bytes": 1, "etag": "%s"}\n' % etag.encode())
    tree = ManifestTree(parse_manifest(f"s3://{B}/m/manifest.jsonl"), store, None,  # type: ignore[arg-type]
                        tmp_path, ttl=0.2, limiter=trio.CapacityLimiter(4),
                        shards=ShardService(store, None, ttl=60))  # type: ignore[arg-type]
    try:
        await tree.stat(ROOT_ID)
        store.delete_object(B, "m/manifest.jsonl")
        await trio.sleep(0.25)
        heads = store.request_counts()["HeadObject"]
        with caplog.at_level(logging.WARNING):
            began = time.monotonic()
            for _ in range(20):
                assert await tree.lookup(ROOT_ID, "a.txt") is not None
                await tree.stat(ROOT_ID)
            assert time.monotonic() - began < 0.2
        assert store.request_counts()["HeadObject"] - heads == 1  # the TTL is 0.2 s
        assert caplog.text.count("is gone from S3") == 1
    finally:
        tree.close()
