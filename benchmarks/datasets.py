"""Data sets uploaded once to the benchmark bucket (and mirrored locally when useful).

The s3exchange data sets are written with the real s3exchange library (shards) or in its
exact line format (the flat manifests, whose objects need not exist for listing).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from s3exchange import FileEntry, S3ExchangeStore, ShardItem, infer_id_from_key

from benchmarks.s3 import S3Target
from tests.support.s3exchange_fixtures import exchange_store

# boto3 burns ~3 ms of CPU per PUT under the GIL: two processes of 16 threads
# each roughly double the rate of one (~500 PUT/s here).
UPLOAD_PROCESSES = 2
UPLOAD_THREADS = 16
BIG_KEY = "big/big.bin"
SMALL_DIR = "small"
TREE_DIR = "tree"
SHARD_SEED = 20240611
# where shard members go ("" twice: about 2 in 7 at the top of the shard)
SHARD_MEMBER_DIRS = ("", "", "sub", "sub/a", "sub/b/c", "img/train", "img/val")
SHARD_MEMBER_SIZES = (4 << 10, 64 << 10)
MANIFEST_FILES_PER_DIR = 100


@dataclass(frozen=True)
class DataSpec:
    """Sizes of the data sets; ``FULL`` for real runs, ``QUICK`` for smoke runs."""

    big_mib: int = 256
    small_files: int = 1000
    small_size: int = 4096
    tree_dirs: int = 20
    tree_subdirs: int = 10
    tree_files: int = 100
    shard_members: int = 2000
    manifest_entries: int = 100_000
    huge_manifest_entries: int = 1_000_000
    giant_manifest_entries: int = 10_000_000
    fleet_shard_mib: int = 1024
    flat_dir_keys: tuple[int, int, int] = (10_000, 100_000, 1_000_000)  # benchmarks/scale_dir.py

    @property
    def tree_keys(self) -> int:
        return self.tree_dirs * self.tree_subdirs * self.tree_files


FULL = DataSpec()
QUICK = DataSpec(big_mib=32, small_files=200, tree_dirs=10, tree_subdirs=5, tree_files=40,
                 shard_members=200, manifest_entries=10_000, huge_manifest_entries=100_000,
                 giant_manifest_entries=1_000_000, fleet_shard_mib=64,
                 flat_dir_keys=(500, 2_000, 10_000))


@dataclass(frozen=True)
class ManifestRef:
    """An s3exchange manifest in the bucket, shown by s3fuse as the top-level dir ``name``."""

    name: str
    key: str

    @property
    def prefix(self) -> str:
        """The manifest's parent prefix: entries below it appear relative to it."""
        return self.key.rpartition("/")[0]

    def mount_path(self, key: str) -> str:
        """Where ``key`` (below the parent prefix) appears under the manifest's directory."""
        return key.removeprefix(self.prefix + "/")


SHARD_MANIFEST = ManifestRef("shard", "bench-manifests/shard/manifest.jsonl")
SHARD_ARCHIVE = f"{SHARD_MANIFEST.prefix}/shards/shard-00000.tar.gz"
BIG_MANIFEST = ManifestRef("big", "bench-manifests/big/manifest.jsonl")
HUGE_MANIFEST = ManifestRef("huge", "bench-manifests/huge/manifest.jsonl")
GIANT_MANIFEST = ManifestRef("giant", "bench-manifests/giant/manifest.jsonl")
#: Lines per part of the streamed manifest uploads (~32 MB; S3's minimum part is 5 MiB):
#: a 10,000,000-entry manifest is ~1.8 GB.
MANIFEST_CHUNK_ENTRIES = 180_000
MANIFEST_UPLOAD_THREADS = 4


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


def upload_file(target: S3Target, path: Path, key: str) -> None:
    """Multipart upload of a local file."""
    config = TransferConfig(multipart_chunksize=16 << 20, max_concurrency=8)
    target.client().upload_file(str(path), target.bucket, key, Config=config)


def big_object(env: SetupEnv) -> None:
    """One incompressible object of ``big_mib`` MiB at BIG_KEY (plus a local copy)."""
    path = local_big_path(env.data_dir)
    with open(path, "wb") as out:
        for _ in range(env.spec.big_mib):
            out.write(os.urandom(1 << 20))
    upload_file(env.target, path, BIG_KEY)


def small_file_keys(spec: DataSpec) -> list[str]:
    return [f"{SMALL_DIR}/file{i:05d}.dat" for i in range(spec.small_files)]


def small_file_body(spec: DataSpec) -> bytes:
    return b"x" * spec.small_size


def local_small_dir(data_dir: Path) -> Path:
    """Local copies of the small files, for the local-disk limit."""
    return data_dir / SMALL_DIR


def small_files(env: SetupEnv) -> None:
    """``small_files`` objects of ``small_size`` bytes in one directory (plus local copies)."""
    body = small_file_body(env.spec)
    put_many(env.target, ((k, body) for k in small_file_keys(env.spec)))
    local = local_small_dir(env.data_dir)
    local.mkdir(parents=True, exist_ok=True)
    for key in small_file_keys(env.spec):
        (local / key.rsplit("/", 1)[1]).write_bytes(body)


def tree_keys(spec: DataSpec) -> Iterator[str]:
    for d in range(spec.tree_dirs):
        for s in range(spec.tree_subdirs):
            for f in range(spec.tree_files):
                yield f"{TREE_DIR}/d{d:02d}/s{s:02d}/f{f:03d}.txt"


def tree(env: SetupEnv) -> None:
    """A dirs x subdirs x files tree of tiny objects (the key itself as content)."""
    put_many(env.target, ((k, k.encode()) for k in tree_keys(env.spec)))


# -- s3exchange data sets --------------------------------------------------------------


def store_for(target: S3Target) -> S3ExchangeStore:
    """An s3exchange store on the benchmark bucket, built as its users build one."""
    return exchange_store(target.endpoint_url, target.bucket,
                          access_key=target.access_key, secret_key=target.secret_key)


def shard_members(spec: DataSpec) -> list[tuple[str, bytes]]:
    """(member path, random bytes) of the shard: always the same for the same spec."""
    rng = random.Random(SHARD_SEED)
    members = []
    for i in range(spec.shard_members):
        directory = rng.choice(SHARD_MEMBER_DIRS)
        path = f"{directory}/m{i:05d}.bin".lstrip("/")
        members.append((path, rng.randbytes(rng.randint(*SHARD_MEMBER_SIZES))))
    return members


def shard_archive(env: SetupEnv) -> None:
    """One .tar.gz shard of ``shard_members`` random members, and a manifest listing it."""
    store = store_for(env.target)
    items = [ShardItem(source=data, member_path=path, size_bytes=len(data))
             for path, data in shard_members(env.spec)]
    shard = store.put_shard_archive(SHARD_ARCHIVE, items, compression="gzip")
    store.write_manifest(SHARD_MANIFEST.key, [shard.entry], mode="overwrite")


def flat_manifest_keys(manifest: ManifestRef, entries: int, start: int = 0,
                       stop: int | None = None) -> Iterator[str]:
    """``<prefix>/data/dNNN/fNNNNNN.bin``: MANIFEST_FILES_PER_DIR files per directory (the
    keys of entries ``start`` to ``stop`` of ``entries``)."""
    dirs = -(-entries // MANIFEST_FILES_PER_DIR)
    dir_digits, file_digits = len(str(dirs - 1)), len(str(entries))
    for i in range(start, entries if stop is None else stop):
        d = i // MANIFEST_FILES_PER_DIR
        yield f"{manifest.prefix}/data/d{d:0{dir_digits}d}/f{i:0{file_digits}d}.bin"


def flat_manifest_entry(key: str) -> FileEntry:
    """A ``file`` line with every field s3exchange fills in (the object itself need not exist)."""
    digest = hashlib.md5(key.encode()).digest()
    size = 1024 + int.from_bytes(digest[:2], "big")
    return FileEntry(kind="file", key=key, id=infer_id_from_key(key), meta=None,
                     content_type=None, size_bytes=size, etag=digest.hex())


def flat_manifest_line(key: str) -> str:
    """``Manifest.serialize_entry(flat_manifest_entry(key))``, byte for byte, at a fifth of
    its cost (10,000,000 lines: ~30 s instead of ~160 s). Keys are plain ASCII without
    quotes or backslashes, so no JSON escaping is needed."""
    digest = hashlib.md5(key.encode()).hexdigest()
    size = 1024 + int(digest[:4], 16)
    name = key.rpartition("/")[2]
    return (f'{{"kind":"file","key":"{key}","id":"{name.rpartition(".")[0] if "." in name else name}",'
            f'"meta":null,"content_type":null,"size_bytes":{size},"etag":"{digest}"}}')


def flat_manifest_text(manifest: ManifestRef, entries: int, start: int, stop: int) -> bytes:
    """Lines ``start`` to ``stop`` of a flat manifest of ``entries`` file entries."""
    return "".join(flat_manifest_line(key) + "\n"
                   for key in flat_manifest_keys(manifest, entries, start, stop)).encode()


def flat_manifest_chunks(manifest: ManifestRef, entries: int,
                         chunk_entries: int = MANIFEST_CHUNK_ENTRIES) -> Iterator[bytes]:
    """The JSONL of a flat manifest, ``chunk_entries`` lines at a time, made by
    UPLOAD_PROCESSES processes (2.4 s of CPU per 1,000,000 lines) a few chunks ahead of
    the consumer: the manifest is never in memory at once."""
    starts = range(0, entries, chunk_entries)
    with ProcessPoolExecutor(UPLOAD_PROCESSES) as pool:
        ahead: deque[Future[bytes]] = deque()
        for start in starts:
            ahead.append(pool.submit(flat_manifest_text, manifest, entries, start,
                                     min(start + chunk_entries, entries)))
            if len(ahead) > UPLOAD_PROCESSES:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def upload_stream(target: S3Target, key: str, chunks: Iterable[bytes]) -> int:
    """Multipart upload of ``chunks`` as they are made (each a part: at least 5 MiB but the
    last); the parts are sent by a few threads while the next ones are generated, at
    most that many held at once. Returns the object's size."""
    client = target.client(max_connections=MANIFEST_UPLOAD_THREADS)
    upload = client.create_multipart_upload(Bucket=target.bucket, Key=key)["UploadId"]

    def send(number: int, body: bytes) -> dict[str, object]:
        reply = client.upload_part(Bucket=target.bucket, Key=key, UploadId=upload,
                                   PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": reply["ETag"]}

    size = 0
    try:
        with ThreadPoolExecutor(MANIFEST_UPLOAD_THREADS) as pool:
            sending: list[Future[dict[str, object]]] = []
            for number, body in enumerate(chunks, 1):
                size += len(body)
                if len(sending) >= MANIFEST_UPLOAD_THREADS:  # bound what is in memory
                    sending[-MANIFEST_UPLOAD_THREADS].result()
                sending.append(pool.submit(send, number, body))
            parts = [f.result() for f in sending]
        client.complete_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload,
                                         MultipartUpload={"Parts": parts})
    except BaseException:
        client.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload)
        raise
    return size


def write_flat_manifest(env: SetupEnv, manifest: ManifestRef, entries: int) -> None:
    """Generate the JSONL, as s3exchange serializes lines, and stream it into one object."""
    upload_stream(env.target, manifest.key, flat_manifest_chunks(manifest, entries))


def big_manifest(env: SetupEnv) -> None:
    """A manifest of ``manifest_entries`` file entries (no objects uploaded)."""
    write_flat_manifest(env, BIG_MANIFEST, env.spec.manifest_entries)


def huge_manifest(env: SetupEnv) -> None:
    """A manifest of ``huge_manifest_entries`` file entries (no objects uploaded)."""
    write_flat_manifest(env, HUGE_MANIFEST, env.spec.huge_manifest_entries)


def giant_manifest(env: SetupEnv) -> None:
    """A manifest of ``giant_manifest_entries`` file entries (no objects uploaded)."""
    write_flat_manifest(env, GIANT_MANIFEST, env.spec.giant_manifest_entries)
