"""The manifest scale benchmark: its generated manifests (s3exchange's lines, streamed in
whole-line chunks into one multipart object) and the report's side-by-side table of a
workload measured at several sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from s3exchange import Manifest

from benchmarks import datasets, report
from benchmarks.datasets import QUICK
from benchmarks.s3 import S3Target
from benchmarks.workloads import WORKLOADS
from s3fuse.manifest.parse import FileItem, parse_lines

MANIFEST = datasets.GIANT_MANIFEST


def test_generated_lines_are_what_s3exchange_writes_in_whole_line_chunks() -> None:
    chunks = list(datasets.flat_manifest_chunks(MANIFEST, 1234, chunk_entries=100))
    expected = "".join(Manifest.serialize_entry(datasets.flat_manifest_entry(key)) + "\n"
                       for key in datasets.flat_manifest_keys(MANIFEST, 1234)).encode()
    assert b"".join(chunks) == expected
    assert len(chunks) == 13 and all(c.endswith(b"\n") and c.count(b"\n") <= 100 for c in chunks)
    items = list(parse_lines(expected.splitlines(), "generated"))
    assert len(items) == 1234 and all(isinstance(i, FileItem) and i.size and i.etag for i in items)
    assert items[-1].key == f"{MANIFEST.prefix}/data/d12/f1233.bin"


def test_a_manifest_streams_into_one_multipart_object(moto_backend: Any) -> None:
    client = moto_backend.client
    client.create_bucket(Bucket="scale")
    target = S3Target(moto_backend.endpoint, "scale", moto_backend.access_key,
                      moto_backend.secret_key)
    parts = [b"a" * (5 << 20), b"b" * (5 << 20), b"tail\n"]  # S3's minimum part: 5 MiB
    assert datasets.upload_stream(target, "m/manifest.jsonl", iter(parts)) == sum(map(len, parts))
    got = client.get_object(Bucket="scale", Key="m/manifest.jsonl")
    assert got["Body"].read() == b"".join(parts) and got["ETag"].endswith('-3"')


def test_the_sizes_of_the_manifest_family_are_one_table_with_the_cost_per_entry() -> None:
    family = [WORKLOADS[n].describe() for n in ("manifest_find", "manifest_find_1m",
                                                "manifest_find_10m")]
    spec = {**QUICK.__dict__, "tree_keys": QUICK.tree_keys}
    sizes = [spec[w["scale"]["size"]] for w in family]  # 10,000, 100,000, 1,000,000
    samples: dict[str, list[float]] = {}
    for w, n in zip(family, sizes):
        index, cold, warm, rss, disk = (m["key"] for m in w["metrics"])
        samples |= {index: [n * 10e-6], cold: [n * 20e-6], warm: [n * 5e-6],
                    rss: [50 + n / 100_000], disk: [n * 100 / 2**20]}
    results = {"meta": {"date": "d", "rounds": 1, "quick": True, "seaweedfs": "w",
                        "s3exchange": "1", "spec": spec,
                        "machine": {"nproc": 2, "cpu": "c", "mem_gib": 1, "kernel": "k",
                                    "python": "3"}},
               "filesystems": {"s3fuse": {"version": "v", "status": "ok", "command": ["s3fuse"]}},
               "workloads": family, "samples": {"s3fuse": samples}, "limits": {}, "errors": []}
    text = report.markdown(results, "x.png")
    assert text.count("## Scale: A manifest of N file entries") == 1
    assert "## A manifest of" not in text  # no section of its own per size
    assert ("| measurement | N = 10,000 | N = 100,000 | N = 1,000,000 | per entry, 10,000 → "
            "100,000 | per entry, 100,000 → 1,000,000 |") in text
    index_row, disk_row = (line for line in text.splitlines() if line.startswith("| index"))
    assert index_row.endswith("| 0.100 s | 1.000 s | 10.000 s | 10.0 µs | 10.0 µs |")
    assert disk_row.endswith("| 100 B | 100 B |")  # linear: the same per entry


def test_a_family_member_run_apart_says_when(tmp_path: Path) -> None:
    spec = {**QUICK.__dict__, "tree_keys": QUICK.tree_keys}
    family = [{**WORKLOADS[n].describe(), "run": {"date": date, "rounds": rounds}}
              for n, date, rounds in (("manifest_find", "d", 3), ("manifest_find_1m", "e", 1))]
    meta = {"date": "d", "rounds": 3}
    out = report._scale_section(family, spec, {}, {}, meta)
    assert "_N = 100,000: measured e, 1 round._" in out
    assert not any(line.startswith("_N = 10,000") for line in out)
