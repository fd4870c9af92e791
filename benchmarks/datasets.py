"""Data sets uploaded once to the benchmark bucket (and mirrored locally when useful)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from benchmarks.s3 import S3Target

# boto3 burns ~3 ms of CPU per PUT under the GIL: two processes of 16 threads
# each roughly double the rate of one (~500 PUT/s here).
UPLOAD_PROCESSES = 2
UPLOAD_THREADS = 16
BIG_KEY = "big/big.bin"
SMALL_DIR = "small"
TREE_DIR = "tree"


@dataclass(frozen=True)
class DataSpec:
    """Sizes of the data sets; ``FULL`` for real runs, ``QUICK`` for smoke runs."""

    big_mib: int = 256
    small_files: int = 1000
    small_size: int = 4096
    tree_dirs: int = 20
    tree_subdirs: int = 10
    tree_files: int = 100

    @property
    def tree_keys(self) -> int:
        return self.tree_dirs * self.tree_subdirs * self.tree_files


FULL = DataSpec()
QUICK = DataSpec(big_mib=32, small_files=200, tree_dirs=10, tree_subdirs=5, tree_files=40)


@dataclass(frozen=True)
class SetupEnv:
    """What a data-set builder gets: the bucket, the sizes and a local scratch dir."""

    target: S3Target
    spec: DataSpec
    data_dir: Path


def put_many(target: S3Target, items: Iterable[tuple[str, bytes]]) -> int:
    """PUT many small objects concurrently (processes x threads); returns the count."""
    batch = list(items)
    shards = [batch[i::UPLOAD_PROCESSES] for i in range(UPLOAD_PROCESSES)]
    with ProcessPoolExecutor(UPLOAD_PROCESSES) as pool:
        return sum(pool.map(_put_shard, [target] * len(shards), shards))


def _put_shard(target: S3Target, items: list[tuple[str, bytes]]) -> int:
    client = target.client(max_connections=UPLOAD_THREADS)
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        futures = [pool.submit(client.put_object, Bucket=target.bucket, Key=k, Body=b)
                   for k, b in items]
        for future in futures:
            future.result()
    return len(futures)


def local_big_path(data_dir: Path) -> Path:
    """Local copy of the big object, used for the local-disk baseline."""
    return data_dir / "big.bin"


def big_object(env: SetupEnv) -> None:
    """One incompressible object of ``big_mib`` MiB at BIG_KEY (plus a local copy)."""
    path = local_big_path(env.data_dir)
    with open(path, "wb") as out:
        for _ in range(env.spec.big_mib):
            out.write(os.urandom(1 << 20))
    config = TransferConfig(multipart_chunksize=16 << 20, max_concurrency=8)
    env.target.client().upload_file(str(path), env.target.bucket, BIG_KEY, Config=config)


def small_file_keys(spec: DataSpec) -> list[str]:
    return [f"{SMALL_DIR}/file{i:05d}.dat" for i in range(spec.small_files)]


def small_files(env: SetupEnv) -> None:
    """``small_files`` objects of ``small_size`` bytes in one directory."""
    body = b"x" * env.spec.small_size
    put_many(env.target, ((k, body) for k in small_file_keys(env.spec)))


def tree_keys(spec: DataSpec) -> Iterator[str]:
    for d in range(spec.tree_dirs):
        for s in range(spec.tree_subdirs):
            for f in range(spec.tree_files):
                yield f"{TREE_DIR}/d{d:02d}/s{s:02d}/f{f:03d}.txt"


def tree(env: SetupEnv) -> None:
    """A dirs x subdirs x files tree of tiny objects (the key itself as content)."""
    put_many(env.target, ((k, k.encode()) for k in tree_keys(env.spec)))
