"""Manifest parsing and ingestion into the SQLite index (no FUSE, a fake store)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import logging
import tracemalloc
from pathlib import Path

import pytest

from s3fuse.errors import NotFound
from s3fuse.manifest.index import DIR, FILE, ROOT_ID, SHARD, ManifestIndex
from s3fuse.manifest.ingest import IngestLimits, Ingestion
from s3fuse.manifest.parse import FileItem, RefItem, parse_item, parse_lines, split_lines
from s3fuse.store.s3 import ObjectInfo


def test_shard_defaults_follow_s3exchange():
    assert parse_item({"kind": "shard", "archive_key": "a.tar.gz"}).compression == "gzip"
    explicit_null = parse_item({"kind": "shard", "archive_key": "a.tar", "compression": None})
    assert explicit_null.compression is None
    shard = parse_item({"kind": "shard", "archive_key": "a", "format": None, "internal_manifest_path": None})
    assert (shard.format, shard.internal_manifest_path) == ("tar", "__manifest__.jsonl")
    item = parse_item({"kind": "file", "key": "k", "id": 7, "meta": None, "extra": [1]})
    assert isinstance(item, FileItem) and item.id == "7" and item.meta is None
    assert isinstance(parse_item({"kind": "manifest_ref", "key": "m.jsonl"}), RefItem)


def test_bad_lines_are_skipped_with_their_number(caplog):
    lines = [b'{"kind":"file","key":"a"}', b"not json", b"", b'{"kind":"bogus"}',
             b'{"kind":"file"}', b'{"kind":"shard"}', b"[1,2]", b'{"kind":"file","key":"b"}']
    with caplog.at_level(logging.WARNING):
        items = list(parse_lines(lines, "m.jsonl"))
    assert [i.key for i in items] == ["a", "b"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("line 2" in m and "JSON" in m for m in messages)
    assert any("line 4" in m and "unknown kind" in m for m in messages)
    assert any("line 5" in m for m in messages) and any("line 6" in m for m in messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not list(parse_lines([b'{"kind":"file","key":""}', b'{"kind":"file","key":7}'], "m"))
    assert "line 1: 'key' is empty; line 2: 'key' is not a string" in caplog.text


def test_split_lines_across_chunks_and_overlong_lines(caplog):
    chunks = [b"ab", b"c\nde", b"f\n" + b"x" * 50, b"y" * 50 + b"\nlast"]
    with caplog.at_level(logging.WARNING):
        assert list(split_lines(chunks, 64, "m")) == [b"abc", b"def", b"", b"last"]
    assert "line 3" in caplog.text


class FakeStore:
    """Serves manifests from a dict; records nothing else."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def head(self, bucket: str, key: str) -> ObjectInfo:
        if key not in self.objects:
            raise NotFound(key)
        return ObjectInfo(key, len(self.objects[key]), 1_000_000_000, f"etag-{hash(self.objects[key])}")

    def iter_chunks(self, bucket: str, key: str, etag: str, size: int, chunk: int):  # type: ignore[no-untyped-def]
        data = self.objects[key]
        for start in range(0, len(data), 7):  # tiny chunks: lines cross chunk boundaries
            yield data[start:start + 7]


def jsonl(*items: dict) -> bytes:
    return b"\n".join(json.dumps(i).encode() for i in items) + b"\n"


def ingest(tmp_path: Path, objects: dict[str, bytes], root: str = "ml/run/samples/manifest.jsonl") -> ManifestIndex:
    index = ManifestIndex(tmp_path / "m.sqlite")
    store = FakeStore(objects)
    Ingestion(store, "bkt", root.rsplit("/", 1)[0] + "/", IngestLimits()).run(  # type: ignore[arg-type]
        index, root, store.head("bkt", root).etag, 0)
    return index


def tree(index: ManifestIndex, node: int = ROOT_ID, prefix: str = "") -> dict[str, int]:
    out = {}
    for child in index.children(node, 0, 10_000):
        path = prefix + child.name
        out[path] = child.kind
        if child.kind in (DIR, SHARD):
            out.update(tree(index, child.id, path + "/"))
    return out


def test_layout_refs_cycles_and_hidden(tmp_path: Path, caplog):
    base = "ml/run/samples/"
    objects = {
        base + "manifest.jsonl": jsonl(
            {"kind": "file", "key": base + "a/0001.wav", "id": "0001", "meta": {"x": 1}, "size_bytes": 4},
            {"kind": "file", "key": "elsewhere/outside.txt"},
            {"kind": "manifest_ref", "key": base + "manifests/part-20240101-000000-abcdef12.jsonl"},
            {"kind": "manifest_ref", "key": base + "missing.jsonl"},
            {"kind": "shard", "archive_key": base + "shards/shard-00000.tar.gz", "count": 2},
            {"kind": "file", "key": base + "manifests/part-20240101-000000-abcdef12.jsonl"},
            {"kind": "file", "key": base + "x/../escape"},
            {"kind": "file", "key": base + "clash"},
            {"kind": "file", "key": base + "clash/inner"},
        ),
        base + "manifests/part-20240101-000000-abcdef12.jsonl": jsonl(
            {"kind": "file", "key": base + "b/0002.wav"},
            {"kind": "manifest_ref", "key": base + "manifest.jsonl"},  # a cycle
        ),
    }
    with caplog.at_level(logging.INFO):
        index = ingest(tmp_path, objects)
    assert tree(index) == {
        "a": DIR, "a/0001.wav": FILE, "elsewhere": DIR, "elsewhere/outside.txt": FILE,
        "b": DIR, "b/0002.wav": FILE, "shards": DIR, "shards/shard-00000.tar.gz": SHARD,
        "clash": DIR, "clash/inner": FILE,
    }
    assert "cycle" in caplog.text and "missing" in caplog.text and "escape" in caplog.text
    wav = index.child(index.child(ROOT_ID, "a").id, "0001.wav")
    assert (wav.entry_id, wav.meta, wav.size) == ("0001", '{"x":1}', 4)
    shard = index.shard(index.child(index.child(ROOT_ID, "shards").id, "shard-00000.tar.gz").id)
    assert shard["compression"] == "gzip" and shard["state"] == "pending"


def test_reingest_keeps_rowids_and_drops_removed(tmp_path: Path):
    base = "ml/run/samples/"
    root = base + "manifest.jsonl"
    objects = {root: jsonl({"kind": "file", "key": base + "keep"}, {"kind": "file", "key": base + "gone"})}
    index = ingest(tmp_path, objects)
    keep = index.child(ROOT_ID, "keep").id
    objects[root] = jsonl({"kind": "file", "key": base + "new"}, {"kind": "file", "key": base + "keep"})
    store = FakeStore(objects)
    Ingestion(store, "bkt", base, IngestLimits()).run(index, root, "etag-2", 0)  # type: ignore[arg-type]
    assert index.child(ROOT_ID, "keep").id == keep
    assert index.child(ROOT_ID, "gone") is None and index.child(ROOT_ID, "new") is not None
    assert index.info("root_etag") == "etag-2"


def test_a_shard_indexed_again_keeps_the_ids_of_its_paths(tmp_path: Path):
    """The kernel keeps a shard's directories and members by inode number (the node id):
    indexed again (its archive changed, a published index was wrong), a path keeps its id
    and a lookup from a directory the kernel kept finds its members; new paths get ids
    no node ever had, gone ones are gone."""
    base = "ml/run/samples/"
    root = base + "manifest.jsonl"
    objects = {root: jsonl({"kind": "shard", "archive_key": base + "s.tar", "format": "tar",
                            "compression": "none"})}
    index = ingest(tmp_path, objects)
    shard = index.child(ROOT_ID, "s.tar").id
    index.store_members(shard, [("clips/a.wav", 512, 10, None, None),
                                ("clips/b.wav", 1536, 20, None, None)], "e1", "tar", 4096,
                        None, None, 0.0)
    clips = index.child(shard, "clips").id
    a, b = index.child(clips, "a.wav").id, index.child(clips, "b.wav").id
    highest = max(clips, a, b)
    index.store_members(shard, [("clips/c.wav", 512, 30, None, None),
                                ("clips/a.wav", 2048, 11, None, None),
                                ("other/d.wav", 4096, 5, None, None)], "e2", "tar", 8192,
                        None, None, 0.0)
    assert index.child(shard, "clips").id == clips
    again = index.child(clips, "a.wav")
    assert (again.id, again.offset, again.size) == (a, 2048, 11)
    assert index.child(clips, "b.wav") is None and index.node(b) is None
    fresh = [index.child(clips, "c.wav").id, index.child(shard, "other").id]
    fresh.append(index.child(fresh[1], "d.wav").id)
    assert len(set(fresh)) == 3 and min(fresh) > highest


def test_oversized_manifest_is_refused(tmp_path: Path, caplog):
    root = "m/manifest.jsonl"
    objects = {root: jsonl({"kind": "manifest_ref", "key": "m/big.jsonl"}, {"kind": "file", "key": "m/ok"}),
               "m/big.jsonl": b"x" * 5000}
    index = ManifestIndex(tmp_path / "m.sqlite")
    store = FakeStore(objects)
    with caplog.at_level(logging.ERROR):
        Ingestion(store, "bkt", "m/", IngestLimits(max_manifest_bytes=1000)).run(  # type: ignore[arg-type]
            index, root, "e", 0)
    assert "over the 1000 byte cap" in caplog.text
    assert index.child(ROOT_ID, "ok") is not None


def test_a_million_entries_is_not_a_million_objects(tmp_path: Path):
    pytest.importorskip("resource")
    import resource
    lines = b"".join(b'{"kind":"file","key":"m/d%d/f%07d.bin","size_bytes":1}\n' % (i % 100, i)
                     for i in range(200_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    index = ingest(tmp_path, {"m/manifest.jsonl": lines}, root="m/manifest.jsonl")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert index.count() == 200_000 + 100 + 1
    assert grown_mib < 150


# ------------------------------------------------------------------ a 2 GB line (issue 7)

GiB = 1 << 30
CHUNK = 8 << 20


class StreamingStore:
    """One manifest of `line_bytes` of 'x' (never held in memory: the same 8 MiB chunk is
    yielded again and again), then a newline and `tail`. Records how much was streamed."""

    def __init__(self, key: str, line_bytes: int, tail: bytes):
        self.key, self.line_bytes, self.tail = key, line_bytes, tail
        self.streamed = 0

    def head(self, bucket: str, key: str) -> ObjectInfo:
        if key != self.key:
            raise NotFound(key)
        return ObjectInfo(key, self.line_bytes + 1 + len(self.tail), 1_000_000_000, "etag-big")

    def iter_chunks(self, bucket: str, key: str, etag: str, size: int, chunk: int):  # type: ignore[no-untyped-def]
        block = b"x" * CHUNK
        left = self.line_bytes
        while left:
            piece = block if left >= CHUNK else block[:left]
            left -= len(piece)
            self.streamed += len(piece)
            yield piece
        yield b"\n" + self.tail


def test_a_2gb_line_is_skipped_in_bounded_memory(tmp_path: Path, caplog):
    """The line is dropped once it passes the 16 MiB line cap, as it streams by: the
    manifest is served around it and memory stays a few chunks, not 2 GB."""
    root = "m/manifest.jsonl"
    line_bytes = 2 * GiB - 4096   # the manifest itself stays under the 2 GiB object cap
    store = StreamingStore(root, line_bytes, jsonl({"kind": "file", "key": "m/after.txt"}))
    index = ManifestIndex(tmp_path / "m.sqlite")
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING):
            Ingestion(store, "bkt", "m/", IngestLimits()).run(index, root, "etag-big", 0)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert store.streamed == line_bytes
    assert peak < 64 << 20, peak >> 20
    assert "1 line skipped (line 1: longer than 16777216 bytes)" in caplog.text
    assert index.child(ROOT_ID, "after.txt") is not None


def test_a_manifest_over_the_size_cap_is_refused_unread(tmp_path: Path, caplog):
    root = "m/manifest.jsonl"
    store = StreamingStore(root, 2 * GiB, b"")
    index = ManifestIndex(tmp_path / "m.sqlite")
    with caplog.at_level(logging.ERROR):
        Ingestion(store, "bkt", "m/", IngestLimits()).run(index, root, "etag-big", 0)  # type: ignore[arg-type]
    assert store.streamed == 0
    assert f"is {2 * GiB + 1} bytes, over the {2 * GiB} byte cap: refused" in caplog.text


# ------------------------------------------------------------------ scale (issue 16)


def test_the_writer_keeps_few_directories_and_still_finds_the_others(tmp_path: Path):
    """The directories of a pass are an LRU, not every one of them: one evicted is found
    in the index again (not made twice), and a file where a directory of this pass is
    still loses to it, in whichever batch it comes."""
    index = ManifestIndex(tmp_path / "m.sqlite")
    writer = index.writer()
    writer.DIRS_KEPT = 3
    for d in range(10):
        writer.add_file([f"d{d}", "f"], None, 1, None, None, None)
    assert len(writer._dirs) == 3
    writer.add_file(["d0", "g"], None, 1, None, None, None)  # d0 was evicted long ago
    writer.add_file(["d1"], "m/d1", 1, None, None, None)  # a file where a directory is
    writer.commit()
    assert (writer.conflict_count, writer.conflicts, writer.entries) == (1, ["d1"], 11)
    d0 = index.child(ROOT_ID, "d0")
    assert d0 is not None and d0.kind == DIR
    assert sorted(n.name for n in index.children(d0.id, 0, 10)) == ["f", "g"]
    assert index.child(ROOT_ID, "d1").kind == DIR  # type: ignore[union-attr]
    assert index.count() == 1 + 10 + 11


def test_a_file_key_its_path_gives_is_not_stored_and_an_md5_etag_takes_16_bytes(tmp_path: Path):
    base = "ml/run/samples/"
    md5 = "0123456789abcdef0123456789abcdef"
    index = ingest(tmp_path, {base + "manifest.jsonl": jsonl(
        {"kind": "file", "key": base + "a/x.bin", "etag": f'"{md5}"'},
        {"kind": "file", "key": "elsewhere/y.bin", "etag": md5.upper()},
        {"kind": "file", "key": base + "z.bin", "etag": md5 + "-3"})})
    x = index.child(index.child(ROOT_ID, "a").id, "x.bin")  # type: ignore[union-attr]
    y = index.child(index.child(ROOT_ID, "elsewhere").id, "y.bin")  # type: ignore[union-attr]
    z = index.child(ROOT_ID, "z.bin")
    assert (x.key, x.etag, index.key_of(x, base)) == (None, md5, base + "a/x.bin")
    assert (y.key, y.etag, index.key_of(y, base)) == ("elsewhere/y.bin", md5.upper(), "elsewhere/y.bin")
    assert z.etag == md5 + "-3"
    assert Path(f"{index.path}-wal").stat().st_size == 0  # checkpointed: the index is one file
    stored = sqlite3.connect(index.path).execute(
        "SELECT name, typeof(key), typeof(etag), length(etag) FROM nodes WHERE kind=?", (FILE,))
    assert sorted(stored) == [("x.bin", "null", "blob", 16), ("y.bin", "text", "text", 32),
                              ("z.bin", "null", "text", 34)]


#: Ingests N generated entries, each file in a directory of its own (the worst case for
#: what the writer remembers), streamed from a store that never holds the manifest, and
#: prints the peak RSS in KiB.
INGEST_RSS = """
import resource, sys
from pathlib import Path
from s3fuse.manifest.index import ManifestIndex
from s3fuse.manifest.ingest import IngestLimits, Ingestion
from s3fuse.store.protocol import ObjectInfo
n = int(sys.argv[1])
line = b'{"kind":"file","key":"m/d%%08d/f.bin","size_bytes":1,"etag":"%%032x"}\\n'
class Generated:
    def head(self, bucket, key):
        return ObjectInfo(key, n * %d, 0, "e")
    def iter_chunks(self, bucket, key, etag, size, chunk):
        for start in range(0, n, 10_000):
            yield b"".join(line %% (i, i) for i in range(start, min(n, start + 10_000)))
index = ManifestIndex(Path(sys.argv[2]))
count = Ingestion(Generated(), "b", "m/", IngestLimits()).run(index, "m/manifest.jsonl", "e", 0)
assert count == n, count
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""" % len(b'{"kind":"file","key":"m/d00000000/f.bin","size_bytes":1,"etag":"' + b"0" * 32 + b'"}\n')


def ingest_peak_kib(tmp_path: Path, n: int) -> int:
    proc = subprocess.run([sys.executable, "-c", INGEST_RSS, str(n), str(tmp_path / f"{n}.sqlite")],
                          capture_output=True, text=True, check=True, timeout=600)
    return int(proc.stdout)


def test_ingestion_memory_does_not_grow_with_the_manifest(tmp_path: Path):
    """20,000 and 200,000 entries (as many directories): the same peak RSS within a few
    MiB. Before the writer's directories were an LRU, the larger took 30 MiB more."""
    small, large = ingest_peak_kib(tmp_path, 20_000), ingest_peak_kib(tmp_path, 200_000)
    assert large - small < 12 << 10, (small, large)


def test_children_page_in_name_order_from_any_offset_and_survive_a_dropped_child(tmp_path: Path):
    base = "m/"
    index = ingest(tmp_path, {"m/manifest.jsonl": jsonl(
        *({"kind": "file", "key": f"m/d/{name}"} for name in ("c", "a", "d", "b")))},
        root="m/manifest.jsonl")
    d = index.child(ROOT_ID, "d").id  # type: ignore[union-attr]
    listed, after = [], 0
    while page := index.children(d, after, 1):  # offsets: the id of the last child served
        listed.append(page[0].name)
        after = page[0].id
    assert listed == ["a", "b", "c", "d"]
    b = index.child(d, "b").id  # type: ignore[union-attr]
    assert [n.name for n in index.children(d, b, 10)] == ["c", "d"]
    store = FakeStore({"m/manifest.jsonl": jsonl(
        *({"kind": "file", "key": f"m/d/{name}"} for name in ("a", "c", "d")))})
    Ingestion(store, "bkt", base, IngestLimits()).run(index, "m/manifest.jsonl", "e2", 0)  # type: ignore[arg-type]
    assert [n.name for n in index.children(d, b, 10)] == ["a", "c", "d"]  # again, none lost


def test_a_member_hidden_by_another_entry_at_its_path_is_logged(tmp_path: Path, caplog):
    """A loose `file` entry at a shard member's path wins (it came first), and the member
    is not shown: that is said once per indexing, not left silent."""
    base = "ml/run/samples/"
    root = base + "manifest.jsonl"
    objects = {root: jsonl({"kind": "shard", "archive_key": base + "s.tar", "format": "tar",
                            "compression": "none"},
                           {"kind": "file", "key": base + "s.tar/clips/a.wav"})}
    index = ingest(tmp_path, objects)
    shard = index.child(ROOT_ID, "s.tar").id
    with caplog.at_level(logging.WARNING):
        index.store_members(shard, [("clips/a.wav", 512, 10, None, None),
                                    ("clips/b.wav", 1536, 20, None, None)], "e1", "tar", 4096,
                            None, None, 0.0)
    assert "shard s.tar: 1 members not shown, another entry has their path (first: " \
           "'clips/a.wav')" in caplog.text
    clips = index.child(shard, "clips")
    assert index.child(clips.id, "a.wav").kind == FILE and index.child(clips.id, "b.wav")
