"""The machine's limit for the workloads that have one: the same bytes read with no FUSE layer.

A ratio to s3fs or rclone says who is ahead, not how far from possible anyone is. Each
limit here does the work of one metric the plainest way, in the same run, between the
same rounds: a cold read of the big object as parallel ranged GETs straight from S3 (as
many at a time as s3fuse's read-ahead keeps in flight, of its block size), and cached
reads as ``cat`` of local copies of the same files, from the page cache or, after dropping
it, from the disk. The report shows each filesystem's time beside it and s3fuse / limit.

Some metrics are bound by FUSE requests rather than bytes: a warm `cat` of small files is
an open, a flush and a release per file, which no FUSE file system answers as fast as the
page cache answers a local `cat`, and a cold `ls -l` a lookup per file. Their *floor* (FLOORS) is what the same tool run takes
on a pyfuse3 + trio file system that answers from a dict (benchmarks/pyfuse3_floor.py):
how close s3fuse is to what its stack allows. The report shows it under the table.
Writing a big file has both: `cp` into that file system (its bytes dropped) is the floor
of the close, and the same bytes sent straight to S3 as s3fuse sends them (a multipart
upload of its part size, as many parts at a time) the limit of what follows the close.
A stat of every entry of a flat directory of empty objects (`ls -l` after `ls`) is a HEAD
per key, which the server answers at its own pace: its limit is those HEADs sent by curl
(C, not Python), many at a time.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks import datasets, pyfuse3_floor, scale_dir
from benchmarks.datasets import SetupEnv
from benchmarks.workloads import WrongBytes, cat_dir, drop_page_cache, timed
from benchmarks.write_workloads import large_source
from s3fuse.data.reader import BLOCK_SIZE, READAHEAD_BLOCKS
from s3fuse.upload.uploader import PARALLEL_PARTS
from s3fuse.upload.uploader import PART_SIZE as UPLOAD_PART_SIZE

#: GETs in flight during s3fuse's sequential read: the block being read plus its read-ahead.
CONNECTIONS = 1 + READAHEAD_BLOCKS
PART_SIZE = BLOCK_SIZE
DRAIN_CHUNK = 1 << 20
#: HEADs curl keeps in flight (s3fuse's: store/headbatch.py, 8 connections 8 deep).
CURL_PARALLEL = 64


@dataclass(frozen=True)
class Limit:
    """How to measure the limit of metric ``key``: ``func`` returns seconds; ``title`` says
    what it did (markdown, shown under the table)."""

    key: str
    title: str
    func: Callable[[SetupEnv], float]


def ranges(size: int, part: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges ``(first, last)`` of ``part`` bytes covering ``size`` bytes."""
    return [(start, min(start + part, size) - 1) for start in range(0, size, part)]


def parallel_get(env: SetupEnv, key: str, connections: int = CONNECTIONS,
                 part: int = PART_SIZE) -> float:
    """Seconds to read object ``key`` whole as ranged GETs of ``part`` bytes, ``connections``
    at a time (boto3, one thread each), bytes counted and dropped. Starts cold like a
    filesystem's cold read: the page cache (SeaweedFS's files too) dropped, no connection
    open yet."""
    size = env.target.client().head_object(Bucket=env.target.bucket, Key=key)["ContentLength"]
    client = env.target.client(max_connections=connections)  # no connection open yet

    def get(span: tuple[int, int]) -> int:
        body = client.get_object(Bucket=env.target.bucket, Key=key,
                                 Range=f"bytes={span[0]}-{span[1]}")["Body"]
        return sum(len(chunk) for chunk in body.iter_chunks(DRAIN_CHUNK))

    drop_page_cache()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=connections) as pool:
        got = sum(pool.map(get, ranges(size, part)))
    elapsed = time.perf_counter() - start
    if got != size:
        raise WrongBytes(f"parallel GETs of {key} read {got} bytes, expected {size}")
    return elapsed


def cold_read(env: SetupEnv) -> float:
    return parallel_get(env, datasets.BIG_KEY)


def multipart_put(env: SetupEnv, source: Path, parallel: int = PARALLEL_PARTS,
                  part: int = UPLOAD_PART_SIZE) -> float:
    """Seconds to upload local file ``source`` (in the page cache) as one multipart upload
    of ``part``-byte parts, ``parallel`` at a time (boto3, one thread each, each part read
    into memory first): from CreateMultipartUpload to CompleteMultipartUpload's answer.
    The object is removed after."""
    size = source.stat().st_size
    source.read_bytes()  # into the page cache, as `cp`'s source is
    client = env.target.client(max_connections=parallel)
    bucket, key = env.target.bucket, f"limit-upload/{time.time_ns()}.bin"
    # The first bytes a fresh SeaweedFS stores make it grow its volumes (1.1-1.4 s where a
    # warm upload takes 0.4 s): a part of it goes first, untimed.
    client.put_object(Bucket=bucket, Key=f"{key}.warm", Body=source.read_bytes()[:part])
    client.delete_object(Bucket=bucket, Key=f"{key}.warm")

    def send(number: int, span: tuple[int, int], upload_id: str) -> dict:
        with open(source, "rb") as fh:
            fh.seek(span[0])
            body = fh.read(span[1] - span[0] + 1)
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                  PartNumber=number, Body=body)["ETag"]
        return {"PartNumber": number, "ETag": etag}

    start = time.perf_counter()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        parts = list(pool.map(send, range(1, -(-size // part) + 1), ranges(size, part),
                              [upload_id] * -(-size // part)))
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                     MultipartUpload={"Parts": parts})
    elapsed = time.perf_counter() - start
    stored = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    client.delete_object(Bucket=bucket, Key=key)
    if stored != size:
        raise WrongBytes(f"the multipart upload stored {stored} bytes, expected {size}")
    return elapsed


def cat_hot(path: Path) -> float:
    """``cat`` of a local file (or ``cat_dir`` of a directory) already in the page cache."""
    argv = cat_dir(path) if path.is_dir() else ["cat", path]
    timed(argv)  # into the page cache
    return timed(argv)[0]


def cat_cold(path: Path) -> float:
    """``cat`` of a local file with the page cache dropped: read from the disk."""
    drop_page_cache()
    return timed(["cat", path])[0]


def curl_heads(env: SetupEnv, keys: Sequence[str], parallel: int = CURL_PARALLEL) -> float:
    """Seconds for curl to HEAD every key (SigV4, path style, ``parallel`` at a time on
    keep-alive connections), each answered 200."""
    target = env.target
    base = f"{target.endpoint_url.rstrip('/')}/{target.bucket}"
    with tempfile.NamedTemporaryFile("w", suffix=".curl") as config:
        for key in keys:
            config.write(f'url = "{base}/{key}"\noutput = "/dev/null"\nhead\n')
        config.flush()
        start = time.perf_counter()
        done = subprocess.run(
            ["curl", "--silent", "--no-progress-meter", "--parallel", "--parallel-max", str(parallel),
             "--aws-sigv4", f"aws:amz:{target.region}:s3",
             "--user", f"{target.access_key}:{target.secret_key}",
             "--config", config.name, "--write-out", "%{http_code}\n"],
            check=True, stdout=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
    codes = done.stdout.split()
    if len(codes) != len(keys) or set(codes) != {"200"}:
        raise WrongBytes(f"curl HEADs: {len(codes)} answers for {len(keys)} keys, codes "
                         f"{sorted(set(codes))}")
    return elapsed


def _heads_limit(size: int) -> Limit:
    name = scale_dir.NAMES[size]
    return Limit(f"{name}_lsl", "the HEADs alone: one per key, straight to S3 by curl (C), "
                 f"{CURL_PARALLEL} at a time on keep-alive connections: what a stat of every "
                 "entry costs the server (s3fs sends them during its `ls`)",
                 lambda env: curl_heads(env, scale_dir.flat_keys(env.spec, size)))


LIMITS: dict[str, Limit] = {limit.key: limit for limit in (
    Limit("read_cold", f"{CONNECTIONS} parallel ranged GETs of {PART_SIZE >> 20} MiB (the "
          "GETs s3fuse keeps in flight reading sequentially: the block read plus "
          f"{READAHEAD_BLOCKS} ahead), straight from S3 with boto3 in threads, page cache "
          "dropped", cold_read),
    Limit("read_disk_cache", "`cat` of a local copy after dropping the page cache",
          lambda env: cat_cold(datasets.local_big_path(env.data_dir))),
    Limit("read_hot", "`cat` of a local copy already in the page cache",
          lambda env: cat_hot(datasets.local_big_path(env.data_dir))),
    Limit("small_warm", "`cat` of local copies of the files, already in the page cache",
          lambda env: cat_hot(datasets.local_small_dir(env.data_dir))),
    Limit("write_durable", f"the same bytes sent straight to S3 as s3fuse sends them after "
          f"the close: one multipart upload of {UPLOAD_PART_SIZE >> 20} MiB parts, "
          f"{PARALLEL_PARTS} at a time (boto3 in threads), from the local file in the page "
          "cache: no writing, only the upload",
          lambda env: multipart_put(env, large_source(env.data_dir))),
    _heads_limit(0),  # 10,000 and 100,000 keys; a million HEADs would take minutes a round
    _heads_limit(1),
)}


FLOORS: dict[str, Limit] = {floor.key: floor for floor in (
    Limit("ls_cold", "`ls -l` of a directory of as many files on a pyfuse3 + trio file "
          "system answering from a dict (`benchmarks/pyfuse3_floor.py`), its dentries "
          "dropped and its readdir entries with zero timeouts: a readdir, then a lookup per "
          "file, with nothing behind them",
          lambda env: pyfuse3_floor.measure(env.spec.small_files, rounds=1)["ls_l_s"]),
    Limit("small_warm", "the same `cat` (a shell glob, then one `cat`) of as many files of "
          "the same size on a pyfuse3 + trio file system answering from a dict "
          "(`benchmarks/pyfuse3_floor.py`), warm: a readdir, then each file's open, flush "
          "and release, with nothing behind them",
          lambda env: pyfuse3_floor.warm_cat(env.spec.small_files, env.spec.small_size)),
    Limit("write_close", "the same `cp` into a pyfuse3 + trio file system that drops the "
          "bytes (`benchmarks/pyfuse3_floor.py`): a create, then a write request per 1 MiB, "
          "with nothing behind them",
          lambda env: pyfuse3_floor.cp_write(large_source(env.data_dir))),
)}


def measure(env: SetupEnv, keys: set[str], limits: dict[str, dict],
            floors: dict[str, dict]) -> dict[str, float]:
    """Measure the limit of every metric in ``keys`` that has one; append the seconds to
    ``limits[key]["samples"]`` (a results.json section, created as needed) and return them.
    The same for the floors, into ``floors`` (returned under ``floor:KEY``)."""
    measured = {}
    for found, kinds, prefix in ((limits, LIMITS, ""), (floors, FLOORS, "floor:")):
        for key, limit in kinds.items():
            if key in keys:
                seconds = measured[prefix + key] = limit.func(env)
                found.setdefault(key, {"title": limit.title, "samples": []})["samples"].append(
                    seconds)
    return measured
