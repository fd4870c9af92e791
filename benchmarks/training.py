"""Training-style reads: 16 processes reading random members of tar and tar.gz shards.

The PyTorch DataLoader pattern over a mount: a sampler shuffles the members of a set of
shards, the workers read their share with plain file reads (open, read, close). Timed
against the same members read straight from S3 by the same number of processes (ranged
GETs, offsets from the tar index; for tar.gz, the shard inflated from its start up to the
member: see benchmarks/training_readers.py). s3fuse only: s3fs and rclone cannot read
members of archives. At 3 sizes (4, 8 and 16 shards, half of each shard's members read),
so that the cost is seen to grow with the work.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3exchange import ShardItem

from benchmarks import datasets
from benchmarks.datasets import DataSpec, ManifestRef, SetupEnv
from benchmarks.s3 import S3Target
from benchmarks.training_readers import (FileRead, InflateRead, RangeRead, Read, ReaderPool,
                                         Timed)
from benchmarks.workloads import Context, Metric, WrongBytes, drop_page_cache, workload

PROCESSES = 16
SHARD_COUNTS = (4, 8, 16)  # the 3 sizes: shards read, half of each one's members
SEED = 16
MEMBER_SIZES = (4 << 10, 64 << 10)  # random bytes: JPEG-like, incompressible


@dataclass(frozen=True)
class Format:
    """One kind of shard: the manifest that lists its shards, and its archives' suffix."""

    name: str
    label: str
    compression: str | None
    manifest: ManifestRef

    def archive(self, shard: int) -> str:
        suffix = ".tar.gz" if self.compression else ".tar"
        return f"{self.manifest.prefix}/shards/shard-{shard:05d}{suffix}"


FORMATS = (
    Format("tar", "tar", None, ManifestRef("train-tar", "bench-manifests/train-tar/manifest.jsonl")),
    Format("tgz", "tar.gz", "gzip",
           ManifestRef("train-tgz", "bench-manifests/train-tgz/manifest.jsonl")),
)
INDEX_FILE = "training.json"  # in the data dir: each member's offset, size and SHA-256


def members_per_shard(spec: DataSpec) -> int:
    """64 members a shard (about 2.2 MiB); 16 in a quick run."""
    return 16 if spec == datasets.QUICK else 64


def shard_members(fmt: Format, shard: int, count: int) -> list[tuple[str, bytes]]:
    """(member path, random bytes) of one shard: the same for the same arguments."""
    rng = random.Random(f"{SEED}/{fmt.name}/{shard}")
    return [(f"{'train' if i % 5 else 'val'}/s{shard:05d}-{i:05d}.jpg",
             rng.randbytes(rng.randint(*MEMBER_SIZES))) for i in range(count)]


def tar_offsets(archive: bytes, compressed: bool) -> dict[str, tuple[int, int]]:
    """member path -> (offset of its bytes in the tar stream, size)."""
    raw = gzip.decompress(archive) if compressed else archive
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def training_shards(env: SetupEnv) -> None:
    """SHARD_COUNTS[-1] shards of each format written by s3exchange, a manifest each, and
    the members' offsets (read back from the uploaded archives) in the data dir."""
    store = datasets.store_for(env.target)
    client = env.target.client()
    found: dict[str, list[list[list[Any]]]] = {}
    for fmt in FORMATS:
        entries, found[fmt.name] = [], []
        for shard in range(SHARD_COUNTS[-1]):
            members = shard_members(fmt, shard, members_per_shard(env.spec))
            items = [ShardItem(source=data, member_path=path, size_bytes=len(data))
                     for path, data in members]
            key = fmt.archive(shard)
            entries.append(store.put_shard_archive(key, items, compression=fmt.compression).entry)
            archive = client.get_object(Bucket=env.target.bucket, Key=key)["Body"].read()
            offsets = tar_offsets(archive, fmt.compression is not None)
            found[fmt.name].append([[path, *offsets[path], hashlib.sha256(data).hexdigest()]
                                    for path, data in members])
        store.write_manifest(fmt.manifest.key, entries, mode="overwrite")
    (env.data_dir / INDEX_FILE).write_text(json.dumps(found))


def load_index(data_dir: Path) -> dict[str, Any]:
    """What training_shards recorded: per format, per shard, [path, offset, size, sha256]."""
    return json.loads((data_dir / INDEX_FILE).read_text())


def s3_settings(target: S3Target) -> dict[str, str]:
    """How the direct readers reach S3 (they make their own clients)."""
    return {"endpoint_url": target.endpoint_url, "access_key": target.access_key,
            "secret_key": target.secret_key}


@dataclass(frozen=True)
class Pick:
    """A member picked for reading: its shard, path, offset in the tar stream, size, SHA-256."""

    shard: int
    path: str
    offset: int
    size: int
    sha256: str


def picks(index: dict[str, Any], fmt: Format, shards: int) -> list[Pick]:
    """Half the members of each of the first ``shards`` shards, shuffled together: the
    same for every filesystem and round (a seeded sampler)."""
    rng = random.Random(f"{SEED}/{fmt.name}/{shards}/pick")
    chosen = [Pick(shard, *member) for shard, members in enumerate(index[fmt.name][:shards])
              for member in rng.sample(members, len(members) // 2)]
    rng.shuffle(chosen)
    return chosen


def file_reads(root: Path, fmt: Format, chosen: list[Pick]) -> list[Read]:
    """The picks as paths under the manifest's directory ``root``."""
    return [FileRead(str(root / fmt.manifest.mount_path(fmt.archive(p.shard)) / p.path))
            for p in chosen]


def direct_reads(fmt: Format, chosen: list[Pick]) -> list[Read]:
    """The picks as direct S3 reads: a ranged GET (tar) or an inflate from the start (tar.gz)."""
    kind = InflateRead if fmt.compression else RangeRead
    return [kind(fmt.archive(p.shard), p.offset, p.size) for p in chosen]


def checked(reader: str, got: Timed, chosen: list[Pick]) -> Timed:
    wrong = [p.path for p, digest in zip(chosen, got.digests, strict=True) if digest != p.sha256]
    if wrong:
        raise WrongBytes(f"{reader}: wrong bytes in {len(wrong)} of {len(chosen)} members: "
                         + ", ".join(wrong[:3]))
    return got


def key(fmt: Format, what: str) -> str:
    return f"train_{fmt.name}_{what}"


def _metrics() -> list[Metric]:
    out = []
    for fmt in FORMATS:
        for shards in SHARD_COUNTS:
            out += [Metric(key(fmt, f"{shards}"), f"{fmt.label}, {shards} shards: cold (empty "
                           "cache, fresh mount, page cache dropped)", vs=key(fmt, f"{shards}_direct")),
                    Metric(key(fmt, f"{shards}_direct"), f"{fmt.label}, {shards} shards: direct")]
        largest = SHARD_COUNTS[-1]
        out += [
            Metric(key(fmt, "warm"), f"{fmt.label}, {largest} shards: warm (new mount, cache "
                   "kept, page cache dropped)", vs=key(fmt, f"{largest}_direct")),
            Metric(key(fmt, "mbps"), f"{fmt.label}, {largest} shards, cold: aggregate MB/s",
                   "MB/s", compare=False),
            Metric(key(fmt, "members_per_s"), f"{fmt.label}, {largest} shards, cold: members/s",
                   "members/s", compare=False),
            Metric(key(fmt, "ratio"), f"{fmt.label}, {largest} shards, cold: s3fuse time / "
                   "direct time (below 1: s3fuse faster)", "x", compare=False),
        ]
    return out


@workload(
    "training_reads",
    f"Training-style reads: {PROCESSES} processes reading random members of tar and tar.gz "
    "shards",
    _metrics(),
    setups=(training_shards,),
    manifests=tuple(fmt.manifest for fmt in FORMATS),
    compare_filesystems=False,
    baseline="direct S3",
    notes=f"A PyTorch DataLoader's pattern with plain file reads: {PROCESSES} processes "
          "each `open`/`read`/`close` their share of a shuffled sample of members. Two "
          "s3exchange manifests (`put_shard_archive`, `write_manifest`) of "
          f"{SHARD_COUNTS[-1]} shards each: plain tar, and tar.gz; a shard holds 64 members "
          "of 4-64 KiB of random bytes (16 in a quick run). At each size (the first 4, 8 "
          "and 16 shards) half of each shard's members are read in random order, the "
          "members' SHA-256 checked. The clock starts once every process is ready. "
          "*Cold* includes indexing each shard on its first lookup. *Direct* = the same "
          f"members by {PROCESSES} processes straight from S3 with boto3 (page cache "
          "dropped, no connection open): one ranged GET per member of a tar, at the offset "
          "the tar's index gives; for a tar.gz, a GET of the shard from its first byte, "
          "inflated until the member's last byte and then dropped (with no index a gzip "
          "stream can only be entered at its start; s3exchange itself downloads the whole "
          "shard per member). s3fs and rclone cannot read members of archives.",
)
def training_reads(ctx: Context) -> dict[str, float]:
    roots = {fmt.name: ctx.in_manifest(fmt.manifest) for fmt in FORMATS}
    index = load_index(ctx.data_dir)
    target = ctx.fs.target
    s3 = s3_settings(target)
    values: dict[str, float] = {}
    with ReaderPool(PROCESSES) as pool:
        for fmt in FORMATS:
            for shards in SHARD_COUNTS:
                chosen = picks(index, fmt, shards)
                sizes = [p.size for p in chosen]
                ctx.fresh_mount()
                cold = checked(f"{ctx.fs.name} cold", pool.run(
                    file_reads(roots[fmt.name], fmt, chosen), sizes), chosen)
                values[key(fmt, f"{shards}")] = cold.seconds
                if shards == SHARD_COUNTS[-1]:
                    ctx.remount()
                    warm = checked(f"{ctx.fs.name} warm", pool.run(
                        file_reads(roots[fmt.name], fmt, chosen), sizes), chosen)
                    values[key(fmt, "warm")] = warm.seconds
                drop_page_cache()
                direct = checked("direct S3", pool.run(direct_reads(fmt, chosen), sizes, s3,
                                                       target.bucket), chosen)
                values[key(fmt, f"{shards}_direct")] = direct.seconds
                if shards == SHARD_COUNTS[-1]:
                    values[key(fmt, "mbps")] = cold.mb_per_s
                    values[key(fmt, "members_per_s")] = cold.members_per_s
                    values[key(fmt, "ratio")] = cold.seconds / direct.seconds
    return values
