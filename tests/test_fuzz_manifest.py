"""Fuzzing the manifest parser and its ingestion: hostile lines never escape the rules.

A manifest is bytes from a bucket we do not control. Streamed in any chunking, its
lines must come out exactly as a byte split gives them (over-long ones dropped, line
numbers kept); `parse_item` on any JSON value raises nothing but BadLine; `parse_lines`
on any bytes raises nothing at all. Ingested whole (JSON-ish lines with hostile keys:
'..', '.', empty segments, NUL, lone surrogates, 256-byte names, deep paths, plus
random bytes and flipped bytes), every node of the index is a valid POSIX name and
every file is one of the manifest's keys whose path passes the name rules.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hypothesis import event, given
from hypothesis import strategies as st

from s3fuse.errors import NotFound
from s3fuse.manifest.index import DIR, FILE, ROOT_ID, SHARD, ManifestIndex, relative_path
from s3fuse.manifest.ingest import IngestLimits, Ingestion
from s3fuse.manifest.parse import BadLine, FileItem, RefItem, ShardItem, parse_item, parse_lines, split_lines
from s3fuse.names import is_posix_name, path_parts
from s3fuse.store.s3 import ObjectInfo
from tests.support.fuzz import fuzz_settings

BASE = "ml/run/"
ROOT = BASE + "manifest.jsonl"

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_plain = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=10)
segment = st.one_of(
    _plain, _plain, _plain,
    st.sampled_from(["", ".", "..", "a", "\0", "\ud800", "x" * 256, "ü" * 128, "manifests", "__manifest__.jsonl",
                     "part-1.jsonl", "\n", "\x1b[31m"]),
)
key = st.builds(lambda base, parts: base + "/".join(parts),
                st.sampled_from([BASE, BASE, BASE, "", "elsewhere/", "/"]), st.lists(segment, min_size=1, max_size=6))
field_value = st.one_of(json_value, key)
file_item = st.fixed_dictionaries({"kind": st.just("file"), "key": key},
                                  optional={"id": field_value, "meta": json_value, "content_type": field_value,
                                            "size_bytes": field_value, "etag": field_value})
typed_file_item = st.fixed_dictionaries(
    {"kind": st.just("file"), "key": key},
    optional={"id": st.text(max_size=8) | st.integers(), "meta": json_value, "size_bytes": st.integers(0, 2**40),
              "etag": st.text(max_size=10)})
item = st.one_of(
    file_item, typed_file_item, typed_file_item,
    st.fixed_dictionaries({"kind": st.just("shard"), "archive_key": key},
                          optional={"format": field_value, "compression": field_value, "count": field_value,
                                    "internal_manifest_path": field_value, "size_bytes": field_value}),
    st.fixed_dictionaries({"kind": st.sampled_from(["manifest_ref", "file", "shard", "bogus", None, 3]),
                           "key": field_value, "archive_key": field_value}),
    json_value,
)
line = st.one_of(
    st.builds(lambda obj, ascii_only: json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"),
              item, st.booleans()),
    st.binary(max_size=60).map(lambda raw: raw.replace(b"\n", b"")),
    st.builds(lambda obj: json.dumps(obj).encode(), typed_file_item),
)


class FakeStore:
    """Serves manifest objects from a dict, in small chunks so lines cross chunk boundaries."""

    def __init__(self, objects: dict[str, bytes], chunk: int):
        self.objects = objects
        self.chunk = chunk

    def head(self, bucket: str, key: str) -> ObjectInfo:
        if key not in self.objects:
            raise NotFound(key)
        return ObjectInfo(key, len(self.objects[key]), 1_000_000_000, "etag")

    def iter_chunks(self, bucket: str, key: str, etag: str, size: int, chunk: int) -> Iterator[bytes]:
        data = self.objects[key]
        for start in range(0, len(data), self.chunk):
            yield data[start:start + self.chunk]


def document(lines: list[bytes], flips: list[tuple[int, int]], crlf: bool) -> bytes:
    doc = bytearray((b"\r\n" if crlf else b"\n").join(lines))
    for at, value in flips:
        if doc:
            doc[at % len(doc)] ^= value
    return bytes(doc)


def model_lines(data: bytes, max_line: int) -> list[bytes]:
    """What split_lines must give: a byte split; an over-long line becomes b'' (numbering kept)."""
    *lines, last = data.split(b"\n")
    kept = [ln if len(ln) <= max_line else b"" for ln in lines]
    return kept + ([last] if last and len(last) <= max_line else [])


@fuzz_settings(200)
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), min_size=1, max_size=10), st.integers(0, 40))
def test_split_lines_is_a_byte_split_in_any_chunking(data: bytes, sizes: list[int], max_line: int) -> None:
    chunks, pos = [], 0
    while pos < len(data):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(data[pos:pos + size])
        pos += size
    assert list(split_lines(chunks, max_line, "m")) == model_lines(data, max_line)


@fuzz_settings(200)
@given(item)
def test_parse_item_raises_only_bad_line(obj: Any) -> None:
    try:
        parsed = parse_item(obj)
    except BadLine:
        return
    assert isinstance(parsed, (FileItem, ShardItem, RefItem))
    assert isinstance(parsed.key if not isinstance(parsed, ShardItem) else parsed.archive_key, str)
    if isinstance(parsed, FileItem):
        assert parsed.size is None or (type(parsed.size) is int and parsed.size >= 0)


@fuzz_settings(200)
@given(st.lists(line | st.binary(max_size=30), max_size=20))
def test_parse_lines_never_raises(lines: list[bytes]) -> None:
    for parsed in parse_lines(lines, "m"):
        assert isinstance(parsed, (FileItem, ShardItem, RefItem))


def walk(index: ManifestIndex, node: int = ROOT_ID, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for child in index.children(node, 0, 100_000):
        assert is_posix_name(child.name), child.name
        path = prefix + child.name
        yield path, child
        if child.kind in (DIR, SHARD):
            yield from walk(index, child.id, path + "/")


@fuzz_settings(120)
@given(st.lists(line, max_size=25), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3),
       st.booleans(), st.integers(1, 64), st.lists(st.lists(line, max_size=5), max_size=2))
def test_ingested_index_keeps_the_name_rules(lines: list[bytes], flips: list[tuple[int, int]], crlf: bool,
                                             chunk: int, parts: list[list[bytes]]) -> None:
    objects = {f"{BASE}part-{i}.jsonl": document(p, [], crlf) for i, p in enumerate(parts)}
    refs = [json.dumps({"kind": "manifest_ref", "key": k}).encode() for k in objects]
    objects[ROOT] = document(lines + refs, flips, crlf)
    served: set[str] = set()
    for data in objects.values():
        for parsed in parse_lines(data.split(b"\n"), "oracle"):
            name = parsed.archive_key if isinstance(parsed, ShardItem) else parsed.key
            if not isinstance(parsed, RefItem) and path_parts(relative_path(name, BASE)):
                served.add(relative_path(name, BASE))
    with tempfile.TemporaryDirectory() as tmp:
        index = ManifestIndex(Path(tmp) / "m.sqlite")
        try:
            entries = Ingestion(FakeStore(objects, chunk), "bkt", BASE, IngestLimits(max_line_bytes=4096)).run(
                index, ROOT, "etag", 0)
            seen = dict(walk(index))
            keys = {path: index.key_of(node, BASE) for path, node in seen.items()}
        finally:
            index.close()
    event(f"entries: {min(entries, 5)}{'+' if entries >= 5 else ''}")
    for path, node in seen.items():
        if node.kind == FILE:
            assert path in served and relative_path(keys[path], BASE) == path
        elif node.kind == SHARD:
            assert path in served


def test_a_lone_surrogate_in_any_field_skips_only_its_line(tmp_path: Path) -> None:
    """Found by the fuzzer: a JSON escape like \\ud800 in a line's etag, id, meta or format
    made SQLite refuse the row, and that one line aborted the whole manifest's ingestion."""
    bad = [{"kind": "file", "key": BASE + "bad1", "etag": "\ud800"},
           {"kind": "file", "key": BASE + "bad2", "id": "x\udfff"},
           {"kind": "file", "key": BASE + "bad3", "meta": {"k": ["\ud83d"]}},
           {"kind": "shard", "archive_key": BASE + "bad4.tar", "format": "\udc80"}]
    lines = [json.dumps({"kind": "file", "key": BASE + "good", "meta": {"k": "\U0001f600"}}).encode()]
    lines += [json.dumps(obj).encode() for obj in bad]  # ASCII bytes: the surrogates are \u escapes
    lines.append(b'{"kind":"file","key":"ml/run/raw","etag":"\xed\xa0\x80"}')  # a surrogate encoded raw
    objects = {ROOT: b"\n".join(lines) + b"\n" + json.dumps({"kind": "file", "key": BASE + "last"}).encode()}
    index = ManifestIndex(tmp_path / "m.sqlite")
    try:
        Ingestion(FakeStore(objects, 7), "bkt", BASE, IngestLimits()).run(index, ROOT, "etag", 0)
        assert {path: node.kind for path, node in walk(index)} == {"good": FILE, "last": FILE}
        assert index.child(ROOT_ID, "good").meta == '{"k":"\U0001f600"}'
    finally:
        index.close()
