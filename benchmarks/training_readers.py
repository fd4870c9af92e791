"""The reader processes of the training-style bench: many processes, released at once.

One job: time a set of member reads split over N processes, the way a PyTorch DataLoader
splits a random sample over its workers, without the processes' start-up in the time.
Every worker gets its share, prepares (a boto3 client for the direct reads: made, no
connection opened), and waits at a barrier; the clock starts when the last one is there
and stops when the last one is done. Three ways to read a member: a plain file read
(open, read, close: a Dataset's ``__getitem__`` over a mount), a ranged GET of its bytes
in a plain tar, and for a tar.gz the GET of the shard from its first byte, inflated until
the member's last byte (without an index a gzip stream can only be entered at its start,
so that is the least a direct reader can fetch).

Kept apart from benchmarks/training.py so that the worker processes import only this
(boto3 on first use), not the whole benchmark harness.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

BARRIER_TIMEOUT = 300.0  # workers that never all arrive have failed to start
GET_CHUNK = 256 << 10  # bytes taken at a time from a streamed GET body


@dataclass(frozen=True)
class FileRead:
    """A member read through the filesystem: its path."""

    path: str


@dataclass(frozen=True)
class RangeRead:
    """A member of a plain tar: ``size`` bytes at ``offset`` of the shard ``key``."""

    key: str
    offset: int
    size: int


@dataclass(frozen=True)
class InflateRead:
    """A member of a tar.gz: ``size`` bytes at ``offset`` of the shard's inflated stream."""

    key: str
    offset: int
    size: int


Read = FileRead | RangeRead | InflateRead


@dataclass(frozen=True)
class Timed:
    """What one timed run read: wall seconds, members, bytes, and each member's SHA-256
    in the order of the reads given."""

    seconds: float
    members: int
    bytes: int
    digests: list[str]

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def members_per_s(self) -> float:
        return self.members / self.seconds


_barrier: Any = None  # the pool's barrier, given to each worker at its start


def _init(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


def _client(s3: dict[str, str] | None) -> Any:
    if s3 is None:
        return None
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=s3["endpoint_url"],
                        aws_access_key_id=s3["access_key"], aws_secret_access_key=s3["secret_key"],
                        region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def _read_one(read: Read, client: Any, bucket: str) -> bytes:
    if isinstance(read, FileRead):
        with open(read.path, "rb") as f:
            return f.read()
    if isinstance(read, RangeRead):
        return client.get_object(Bucket=bucket, Key=read.key,
                                 Range=f"bytes={read.offset}-{read.offset + read.size - 1}"
                                 )["Body"].read()
    return _inflate_until(client.get_object(Bucket=bucket, Key=read.key)["Body"],
                          read.offset, read.offset + read.size)


def _inflate_until(body: Any, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of a gzip body's inflated stream; the GET is dropped there."""
    inflate = zlib.decompressobj(wbits=31)
    out, at = bytearray(), 0
    try:
        for chunk in body.iter_chunks(GET_CHUNK):
            data = inflate.decompress(chunk)
            lo, hi = max(start - at, 0), min(stop - at, len(data))
            if lo < hi:
                out += data[lo:hi]
            at += len(data)
            if at >= stop:
                break
    finally:
        body.close()
    return bytes(out)


def _worker(reads: Sequence[Read], s3: dict[str, str] | None, bucket: str) -> list[str]:
    client = _client(s3)  # before the barrier: its import and set-up are not timed
    _barrier.wait(BARRIER_TIMEOUT)
    return [hashlib.sha256(_read_one(read, client, bucket)).hexdigest() for read in reads]


class ReaderPool:
    """``processes`` worker processes (forkserver: the harness's threads stay behind),
    reused for every timed run."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        context = multiprocessing.get_context("forkserver")
        self._barrier = context.Barrier(processes + 1)
        self._pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_init,
                                         initargs=(self._barrier,))

    def __enter__(self) -> "ReaderPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._barrier.abort()  # a worker still waiting gives up
        self._pool.shutdown(cancel_futures=True)

    def run(self, reads: Sequence[Read], sizes: Sequence[int], s3: dict[str, str] | None = None,
            bucket: str = "") -> Timed:
        """Read ``reads`` (dealt round-robin to the processes) and time it; ``sizes``: each
        member's size in bytes (counted, not trusted from the reads)."""
        shares = [list(range(i, len(reads), self.processes)) for i in range(self.processes)]
        futures = [self._pool.submit(_worker, [reads[j] for j in share], s3, bucket)
                   for share in shares]
        try:
            self._barrier.wait(BARRIER_TIMEOUT)
        except Exception:
            for future in futures:
                if future.done() and future.exception():
                    raise future.exception() from None  # type: ignore[misc]
            raise
        start = time.perf_counter()
        results = [future.result() for future in futures]
        seconds = time.perf_counter() - start
        digests = [""] * len(reads)
        for share, got in zip(shares, results):
            for j, digest in zip(share, got):
                digests[j] = digest
        return Timed(seconds, len(reads), sum(sizes), digests)
