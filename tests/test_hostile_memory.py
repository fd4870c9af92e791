"""One hostile manifest or archive must not take the daemon down (issue 13).

Memory is asserted as a bound on peak allocations (tracemalloc) or, where today's
code would need tens of GiB, on the peak RSS of a subprocess that runs under an
address-space limit. Deep paths must cost linear memory, names over 4096 bytes are
skipped unread, header floods are refused, and repeated warnings make one line.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import trio

from s3fuse.archive import ArchiveError, Limits, build_index
from s3fuse.manifest.attempts import BUILDING, BuildGuard
from s3fuse.manifest.index import ROOT_ID, ManifestIndex
from s3fuse.manifest.ingest import IngestLimits, Ingestion
from s3fuse.archive.index import gzip_window_bytes
from s3fuse.tree.shards import OPEN_GZIP_WINDOW_BYTES, ShardService, report_skipped
from s3fuse.util.oncelog import OnceLogger
from tests.test_archive_hostile import END, entry, header, pax
from tests.test_manifest_index import FakeStore, jsonl

MiB = 1 << 20
ROOT = "m/manifest.jsonl"


def traced_peak(fn, *args):  # type: ignore[no-untyped-def]
    """(fn's result, peak bytes allocated while it ran)."""
    tracemalloc.start()
    try:
        result = fn(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def ingest(tmp_path: Path, manifest: bytes) -> ManifestIndex:
    index = ManifestIndex(tmp_path / "m.sqlite")
    store = FakeStore({ROOT: manifest})
    Ingestion(store, "bkt", "m/", IngestLimits()).run(index, ROOT, "e1", 0)  # type: ignore[arg-type]
    return index


# ------------------------------------------------------------------ deep paths

#: Builds the index of a manifest whose first line is one path of `levels` levels, under
#: an address-space limit of 1 GiB above what the imports took (today's code, quadratic,
#: would want terabytes); prints the growth of its peak RSS in KiB and what was indexed.
DEEP_LINE_CHILD = r"""
import json, resource, sys, tempfile
from pathlib import Path
from s3fuse.manifest.index import ROOT_ID, ManifestIndex
from s3fuse.manifest.ingest import IngestLimits, Ingestion
from s3fuse.store.s3 import ObjectInfo

levels = int(sys.argv[1])
data = (json.dumps({"kind": "file", "key": "m/" + "a/" * levels + "x"}).encode() + b"\n"
        + b'{"kind":"file","key":"m/after.txt"}\n')

class Store:
    def head(self, bucket, key):
        return ObjectInfo(key, len(data), 0, "e1")
    def iter_chunks(self, bucket, key, etag, size, chunk):
        for at in range(0, len(data), chunk):
            yield data[at:at + chunk]

with tempfile.TemporaryDirectory() as tmp:
    index = ManifestIndex(Path(tmp) / "m.sqlite")
    vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Ingestion(Store(), "b", "m/", IngestLimits(chunk_bytes=1 << 20)).run(index, "m/manifest.jsonl", "e1", 0)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"grown_kib": grown, "names": [n.name for n in index.children(ROOT_ID, 0, 10)]}))
"""


def test_a_several_mb_deep_path_line_is_skipped_in_bounded_memory():
    """A 4 MiB line holding one path of 2M levels: today every prefix of the path is kept
    (39 KiB held 384 MiB; this one would want terabytes). It is over the 4096-byte path
    cap, so it is skipped before it is split, and the line after it is indexed."""
    line_levels = 2 << 20
    proc = subprocess.run([sys.executable, "-c", DEEP_LINE_CHILD, str(line_levels)],
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent),
                               "MALLOC_ARENA_MAX": "2", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["names"] == ["after.txt"]
    assert result["grown_kib"] < 64 * 1024, result   # ~4x the line: its bytes, its JSON


def test_deep_manifest_paths_cost_linear_memory(tmp_path: Path):
    """50 entries whose paths are 2,040 levels deep (4,081 bytes: under the cap, so
    indexed): keying directories by every prefix of their path held ~200 MiB."""
    lines = jsonl(*({"kind": "file", "key": f"m/d{i:02d}/" + "a/" * 2039 + "x"} for i in range(50)))
    index, peak = traced_peak(ingest, tmp_path, lines)
    assert peak < 24 * MiB, peak // MiB
    assert index.count() == 1 + 50 * (1 + 2039 + 1)


def test_deep_member_paths_cost_linear_memory(tmp_path: Path):
    """A shard's 50 members with 2,040-level paths held 199 MiB of path prefixes."""
    index = ingest(tmp_path, jsonl({"kind": "shard", "archive_key": "m/s.tar"}))
    shard = index.child(ROOT_ID, "s.tar")
    assert shard is not None
    rows = [(f"d{i:02d}/" + "a/" * 2039 + "x", 512, 1, None, None) for i in range(50)]
    count, peak = traced_peak(index.store_members, shard.id, rows, "e", "tar", 1, None, None, 0.0)
    assert count == 50
    assert peak < 24 * MiB, peak // MiB


# ------------------------------------------------------------------ hostile member names


class RepeatSource:
    """A plain tar made of `record` `count` times, then `tail`: hundreds of MiB that are
    never held in memory (each read is cut from the repeated record)."""

    def __init__(self, record: bytes, count: int, tail: bytes = END):
        self.record, self.count, self.tail = record, count, tail
        self.size = len(record) * count + len(tail)
        self.bytes_read = 0

    def read(self, offset: int, size: int) -> bytes:
        body = len(self.record) * self.count
        out = bytearray()
        if offset < body:
            take = min(size, body - offset)
            start = offset % len(self.record)
            out += (self.record * (take // len(self.record) + 2))[start:start + take]
        if offset + size > body:
            out += self.tail[max(0, offset - body):offset + size - body]
        self.bytes_read += len(out)
        return bytes(out)


def test_100k_hostile_member_names_are_skipped_unkept(caplog):
    """100,000 members whose PAX path is 4,200 bytes (over the 4,096 cap), 600 MiB of
    plain tar: they are counted, not remembered (today every name was kept, 420 MB, then
    logged one by one and remembered for the daemon's lifetime)."""
    record = pax({b"path": b"n" * 4200}) + entry(b"placeholder", b"x")
    source = RepeatSource(record, 100_000, entry(b"good.txt", b"ok") + END)
    index, peak = traced_peak(build_index, source, None, "names.tar", Limits())
    assert [m.path for m in index.members] == ["good.txt"]
    assert peak < 32 * MiB, peak // MiB
    assert index.skipped_count == 100_000
    assert len(index.skipped) == 100
    assert index.skipped[0] == ("<a name of 4200 bytes>", "path over 4096 bytes")
    with caplog.at_level(logging.WARNING, logger="s3fuse.tree.shards"):
        report_skipped("s3://b/names.tar", index)
    assert len(caplog.records) == 1
    assert "100000 members not shown" in caplog.text and len(caplog.text) < 1000


def test_a_plain_tar_header_flood_is_refused_early():
    """Empty members behind 1 KiB PAX records: 2 KiB of headers for no data. Refused once
    headers pass 32 MiB and outweigh the data 16 times, not read to the end (1 GiB)."""
    record = pax({b"comment": b"c" * 1000}) + header(b"empty")
    source = RepeatSource(record, 500_000)
    with pytest.raises(ArchiveError, match="max_header_ratio"):
        build_index(source, None, "flood.tar", Limits())
    assert source.bytes_read < 40 * MiB


def test_extension_headers_count_as_entries_and_bytes():
    """A PAX header is an entry for max_members and its bytes count for max_total_bytes."""
    archive = b"".join(pax({b"mtime": b"1"}) + entry(b"f%d" % i, b"x") for i in range(6)) + END
    source = RepeatSource(archive, 1)
    with pytest.raises(ArchiveError, match="max_members"):
        build_index(source, None, "x.tar", Limits(max_members=10))
    assert len(build_index(source, None, "x.tar", Limits(max_members=12)).members) == 6
    with pytest.raises(ArchiveError, match="max_total_bytes"):
        build_index(source, None, "x.tar", Limits(max_total_bytes=6 * 1024))


def test_kept_member_names_are_capped_in_total():
    archive = b"".join(entry(b"%04d" % i + b"n" * 96, b"x") for i in range(20)) + END
    with pytest.raises(ArchiveError, match="max_name_bytes") as err:
        build_index(RepeatSource(archive, 1), None, "x.tar", Limits(max_name_bytes=1000))
    assert err.value.partial is not None and len(err.value.partial.members) == 10


def test_once_logger_remembers_digests_not_names():
    quiet = logging.getLogger("test.once")
    quiet.setLevel(logging.ERROR)    # the records themselves would be kept by pytest
    once = OnceLogger(quiet)
    tracemalloc.start()
    try:
        for i in range(100_000):
            once.warning(f"{i:08d}" + "n" * 4000, "hidden")
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept < 16 * MiB, kept // MiB     # names whole: 400 MB


# ------------------------------------------------------------------ warnings and failures


def test_bad_manifest_lines_make_one_summary_line(tmp_path: Path, caplog):
    lines = b"not json\n" * 10_000 + b'{"kind":"file","key":"m/' + b"d/" * 3000 + b'x"}\n'
    lines += jsonl({"kind": "file", "key": "m/ok"})
    with caplog.at_level(logging.WARNING):
        index = ingest(tmp_path, lines)
    assert index.child(ROOT_ID, "ok") is not None
    assert len(caplog.records) == 1, len(caplog.records)
    message = caplog.records[0].getMessage()
    assert message.startswith("manifest s3://bkt/m/manifest.jsonl: 10001 lines skipped (line 1: ")
    assert "line 5: not valid JSON, ..." in message or "line 5: not valid JSON" in message


@pytest.mark.parametrize("line", [
    b'{"kind":"file","key":"m/big","size_bytes":99999999999999999999}',   # over SQLite's 64 bits
    b'{"kind":"file","key":"m/sur","id":"\\ud800"}',                       # a lone surrogate
    b'{"kind":"shard","archive_key":"m/s.tar","meta":{"a":"\\udc00"}}',
])
def test_an_entry_sqlite_cannot_store_is_skipped_not_fatal(tmp_path: Path, line: bytes, caplog):
    """Each of these made the whole build raise: the index never committed and every
    access (and every restart) built it again."""
    with caplog.at_level(logging.WARNING):
        index = ingest(tmp_path, line + b"\n" + jsonl({"kind": "file", "key": "m/ok"}))
    assert [n.name for n in index.children(ROOT_ID, 0, 10)] == ["ok"]
    assert index.info("root_etag") == "e1"
    # the parser (a lone surrogate) or the index (an integer over 64 bits) skips it
    assert "1 line skipped (line 1: " in caplog.text


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_build_is_not_retried_before_its_backoff(tmp_path: Path, caplog):
    index = ManifestIndex(tmp_path / "m.sqlite")
    clock = Clock()
    guard = BuildGuard(index, "s3://b/m.jsonl", clock)
    calls = []

    def build() -> int:
        calls.append(1)
        raise RecursionError("hostile")
    with caplog.at_level(logging.WARNING):
        assert guard.run("e1", build) is None
        assert guard.run("e1", build) is None          # at once again: not tried
    assert len(calls) == 1
    assert "index build failed (RecursionError: hostile)" in caplog.text
    assert "next try in 60s" in caplog.text
    clock.now += 61
    assert guard.run("e1", build) is None and len(calls) == 2
    clock.now += 61                                     # the backoff doubled: 120 s
    assert guard.run("e1", build) is None and len(calls) == 2
    assert guard.run("e2", lambda: 7) == 7             # a new root ETag is tried at once
    assert guard.failure() is None


def test_a_build_the_daemon_died_in_is_not_restarted_in_a_loop(tmp_path: Path, caplog):
    """An OOM kill during the build leaves its marker: the next daemon (systemd restarts
    it) records a failure instead of building the same manifest again at once."""
    index = ManifestIndex(tmp_path / "m.sqlite")
    index.set_info({BUILDING: "e1"})                     # what the killed daemon left
    calls = []
    guard = BuildGuard(index, "s3://b/m.jsonl", Clock())
    with caplog.at_level(logging.ERROR):
        assert guard.run("e1", lambda: calls.append(1) or 1) is None
    assert calls == []
    assert "the daemon stopped during the build" in caplog.text
    failure = guard.failure()
    assert failure is not None and failure[:2] == ("e1", 1)


def test_open_gzip_readers_are_bounded_by_their_seek_point_windows():
    """A restored gzip reader holds a 32 KiB window per 2 MiB of tar (measured: +16 MiB of
    RSS per reader of a 1 GiB shard). Sixteen 4 GiB shards held 1 GiB of windows; the
    open readers are now kept under OPEN_GZIP_WINDOW_BYTES, the one in use always."""
    class Index:
        path = Path("/nowhere/m.sqlite")

        def shard(self, node_id: int) -> dict:
            return {"etag": "e", "gzip_index": b"", "usize": 4 << 30}

    class Tree:
        index = Index()

    service = ShardService(None, None, ttl=60)  # type: ignore[arg-type]

    async def open_all() -> None:
        for node in range(16):
            await service._gzip_index(Tree(), node, {"archive_key": f"s{node}.tar.gz", "etag": "e", "asize": 4 << 30})  # type: ignore[arg-type]
    trio.run(open_all)
    held = sum(map(gzip_window_bytes, service._gzip.values()))
    assert 0 < held <= OPEN_GZIP_WINDOW_BYTES, held >> 20
    assert ("m.sqlite", "s15.tar.gz") in service._gzip


def test_status_names_a_manifest_whose_build_waits_for_its_backoff(tmp_path: Path):
    """The admin sees why a manifest shows nothing (and when it is tried again) in
    `s3fuse status`, not only in the log."""
    from types import SimpleNamespace

    from s3fuse.cli import format_status
    from s3fuse.daemon import manifest_failures

    index = ManifestIndex(tmp_path / "m.sqlite")
    guard = BuildGuard(index, "s3://b/m.jsonl", Clock())
    assert guard.run("e1", lambda: (_ for _ in ()).throw(RecursionError("hostile"))) is None
    tree = SimpleNamespace(builds=guard, spec=SimpleNamespace(uri="s3://b/m.jsonl"))
    failed = manifest_failures([tree, SimpleNamespace(builds=BuildGuard(
        ManifestIndex(tmp_path / "ok.sqlite"), "s3://b/ok.jsonl"), spec=None)])  # type: ignore[list-item]
    assert failed == [{"uri": "s3://b/m.jsonl", "etag": "e1", "failures": 1, "retry_in": 60,
                       "reason": "RecursionError: hostile"}]
    text = format_status({"mountpoint": "/mnt/data", "manifest_failures": failed})
    assert ("manifest:  s3://b/m.jsonl not indexed: its build failed 1 time(s) "
            "(RecursionError: hostile); next try in 60s") in text


def test_a_shard_internal_manifest_line_that_cannot_be_stored_skips_only_that_line():
    """Found by the fuzz pass: one lone surrogate in a shard's `__manifest__.jsonl` made
    SQLite fail the whole shard, and a line of 100,000 `[` escaped as RecursionError."""
    from s3fuse.tree.shards import internal_entries

    data = b"\n".join([
        b"[" * 100_000,
        json.dumps({"member_path": "bad.txt", "id": "\ud800"}).encode(),
        json.dumps({"member_path": "meta.txt", "meta": {"k": "\udfff"}}).encode(),
        json.dumps({"member_path": "\ud800.txt", "id": "x"}).encode(),
        json.dumps({"member_path": "ok.txt", "id": 7, "meta": {"a": 1}}).encode(),
    ])
    assert internal_entries(data) == {"ok.txt": ("7", '{"a":1}')}
