"""A manifest whose lines have no size or ETag, walked by `find` through the real mount:
files sent as names only (fs/listingshape.py) are not HEADed for attributes nobody asked
for; a stat after the walk still gets each file's real size."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.mount

DIRS, FILES = 6, 20


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend  # the fault proxy (which counts requests) fronts moto


def test_find_over_a_manifest_without_sizes_heads_only_what_it_stats(s3, bucket, faults,
                                                                     mount_factory):
    lines = []
    for d in range(DIRS):
        for f in range(FILES):
            key = f"m/d{d}/f{f:02d}.bin"
            s3.put_object(Bucket=bucket, Key=key, Body=b"x" * (d * FILES + f))
            lines.append({"kind": "file", "key": key})  # no size_bytes, no etag
    s3.put_object(Bucket=bucket, Key="m/manifest.jsonl",
                  Body="\n".join(json.dumps(line) for line in lines).encode())
    m = mount_factory("--manifest", f"w=s3://{bucket}/m/manifest.jsonl", endpoint=faults.endpoint)
    top = m.path("w")
    found = subprocess.run(["find", str(top), "-type", "f"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert len(found) == DIRS * FILES
    walked = faults.count("HEAD", r"/m/d\d+/")
    # the first directory shows the walk stats nothing (its other files went with
    # attributes, HEADed); the later ones go out as names: no HEAD for them
    assert walked <= FILES, walked
    for d in range(DIRS):
        for f in range(FILES):
            assert os.stat(top / f"d{d}" / f"f{f:02d}.bin").st_size == d * FILES + f
    assert faults.count("HEAD", r"/m/d\d+/") <= DIRS * FILES  # each file HEADed once at most
