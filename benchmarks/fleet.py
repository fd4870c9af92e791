"""Fleet bench: the first member read from a large .tar.gz shard, first machine vs second.

The first machine (fresh cache) must decompress the whole archive once to index it and
publishes the index (`--shared-index auto`: beside the manifest); the second machine (its
own fresh cache, same bucket) fetches that index and reads the member from the nearest
seek point. Measured per machine: wall time of the read (lookup of the shard directory,
indexing or index fetch, and the member's bytes), S3 object bytes received and GET
requests (from the daemon's Prometheus endpoint), and the bytes of the archive itself.

`make bench` runs it as the `fleet_index` workload (s3fuse only: no peer shares an index);
run this module to measure on its own against a scratch SeaweedFS:
``python -m benchmarks.fleet --size-mib 128``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import socket
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.datasets import ManifestRef, upload_file
from benchmarks.filesystems import S3Fuse
from benchmarks.s3 import S3Target, bench_server
from benchmarks.workloads import Context, Metric, NotApplicable, workload

MANIFEST = ManifestRef("shards", "fleet/shards/manifest.jsonl")
ARCHIVE = "fleet/shards/shard-big.tar.gz"
MEMBER_MIB = 4


@dataclass
class Machine:
    """One machine's first read of the last member."""

    seconds: float
    bytes_in: int
    gets: int
    puts: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FleetS3Fuse(S3Fuse):
    """s3fuse with the shared index beside the manifest, and its metrics endpoint on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_port = _free_port()

    def command(self) -> list[str]:
        return [*super().command(), "--shared-index", "auto",
                "--metrics-address", f"127.0.0.1:{self.metrics_port}"]

    def traffic(self) -> tuple[int, int, int]:
        """(object bytes received, GETs, PUTs) so far, from the metrics endpoint."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        found = re.search(r'^s3fuse_s3_object_bytes_total\{direction="in"\} (\S+)$', text, re.M)

        def requests(operation: str) -> int:
            return int(sum(float(v) for v in re.findall(
                rf'^s3fuse_s3_requests_total\{{operation="{operation}",[^}}]*\}} (\S+)$', text, re.M)))
        return int(float(found[1])) if found else 0, requests("GetObject"), requests("PutObject")


def write_shard(path: Path, size_mib: int) -> list[str]:
    """A .tar.gz of incompressible MEMBER_MIB members, about `size_mib` MiB; its names."""
    names = []
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for i in range(max(1, size_mib // MEMBER_MIB)):
            info = tarfile.TarInfo(f"m{i:05d}.bin")
            info.size = MEMBER_MIB << 20
            tar.addfile(info, io.BytesIO(os.urandom(info.size)))
            names.append(info.name)
    return names


def setup(target: S3Target, scratch: Path, size_mib: int) -> tuple[str, int]:
    """Upload the shard and its manifest; (the member read, archive bytes)."""
    path = scratch / "shard.tar.gz"
    names = write_shard(path, size_mib)
    upload_file(target, path, ARCHIVE)
    line = {"kind": "shard", "archive_key": ARCHIVE, "compression": "gzip"}
    client = target.client()
    client.put_object(Bucket=target.bucket, Key=MANIFEST.key, Body=json.dumps(line).encode() + b"\n")
    prefix = f"{MANIFEST.prefix}/.s3fuse-index/"
    for old in client.list_objects_v2(Bucket=target.bucket, Prefix=prefix).get("Contents", []):
        client.delete_object(Bucket=target.bucket, Key=old["Key"])  # a fresh fleet
    size = path.stat().st_size
    path.unlink()
    return names[-1], size


def machine(target: S3Target, root: Path, member: str) -> Machine:
    """Mount on a fresh cache, read `member` once, wait until the publish (if any) is done."""
    fs = FleetS3Fuse(target, root, [MANIFEST])
    fs.wipe_cache()  # `root` is the same every round: a cache left by the last round is not fresh
    fs.mount()
    try:
        began = time.perf_counter()
        with open(fs.manifest_root(MANIFEST) / "shard-big.tar.gz" / member, "rb") as fh:
            while fh.read(1 << 20):
                pass
        seconds = time.perf_counter() - began
        fs.wait_idle()
        bytes_in, gets, puts = fs.traffic()
    finally:
        fs.unmount()
    return Machine(round(seconds, 3), bytes_in, gets, puts)


def fleet_first_member(target: S3Target, scratch: Path, size_mib: int = 1024) -> dict[str, Any]:
    """First vs second machine on one shard of about `size_mib` MiB (the bench: 1 GiB)."""
    scratch.mkdir(parents=True, exist_ok=True)
    member, size = setup(target, scratch, size_mib)
    first = machine(target, scratch / "first", member)
    second = machine(target, scratch / "second", member)
    return {"archive_bytes": size, "member": member, "first": asdict(first),
            "second": asdict(second),
            "time_ratio": round(second.seconds / first.seconds, 4) if first.seconds else None,
            "bytes_ratio": round(second.bytes_in / first.bytes_in, 4) if first.bytes_in else None}


@workload(
    "fleet_index",
    "A second machine reading a `.tar.gz` shard that a first one indexed (`--shared-index`)",
    [Metric("fleet_first", "first machine (fresh cache): first read of the last member"),
     Metric("fleet_second", "second machine (its own fresh cache): the same read",
            vs="fleet_first"),
     Metric("fleet_first_mib", "S3 bytes received by the first machine", unit="MiB"),
     Metric("fleet_second_mib", "S3 bytes received by the second machine", unit="MiB",
            vs="fleet_first_mib")],
    compare_filesystems=False,
    notes="s3fuse only (no peer shares what it learned). One `.tar.gz` shard of about "
          "{fleet_shard_mib:,} MiB of incompressible 4 MiB members in an s3exchange manifest, "
          "mounted with `--shared-index auto`; the read is the last member. The first machine "
          "decompresses the archive once to index it and publishes the index beside the "
          "manifest; the second fetches it and reads from the nearest seek point. Bytes are "
          "the daemon's own S3 object bytes (`s3fuse_s3_object_bytes_total`).",
)
def fleet_index(ctx: Context) -> dict[str, float]:
    if not isinstance(ctx.fs, S3Fuse):
        raise NotApplicable(f"{ctx.fs.name} has no shared index")
    result = fleet_first_member(ctx.fs.target, ctx.data_dir / "fleet", ctx.spec.fleet_shard_mib)
    return {"fleet_first": result["first"]["seconds"],
            "fleet_second": result["second"]["seconds"],
            "fleet_first_mib": result["first"]["bytes_in"] / (1 << 20),
            "fleet_second_mib": result["second"]["bytes_in"] / (1 << 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3fuse-fleet-") as tmp:
        weed = bench_server(Path(tmp) / "weed").start()
        try:
            target = S3Target(weed.endpoint_url, "fleet", weed.access_key, weed.secret_key)
            target.client().create_bucket(Bucket="fleet")
            print(json.dumps(fleet_first_member(target, Path(tmp) / "fleet", args.size_mib), indent=2))
        finally:
            weed.stop()


if __name__ == "__main__":
    main()
