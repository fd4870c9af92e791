"""Write workloads: `cp` into the mount, timed until `cp` returns ("close") and until S3
holds the bytes ("durable", watched through boto3 straight against SeaweedFS).

Every round and filesystem writes under a new prefix ``bench-writes/<fs>-<ns>/`` (never
below the read workloads' data sets), deleted from S3 once measured. Registered (after
every workload of ``benchmarks.workloads``) by importing this module from run.py.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.datasets import SetupEnv
from benchmarks.filesystems import S3Fuse
from benchmarks.s3 import S3Target
from benchmarks.workloads import (
    Context,
    Metric,
    MetricsFailed,
    WorkloadError,
    WrongBytes,
    expect,
    run_timed,
    timed,
    workload,
)

WRITE_PREFIX = "bench-writes"
LARGE_MIB = 64
SMALL_COUNT = 1000
SMALL_SIZE = 4096
SMALL_SEED = 4096
TAR_MEMBERS = 4
TAR_MEMBER_MIB = 16
POLL = 0.02  # seconds between two looks at S3
DURABLE_TIMEOUT = 300.0  # "durable" not reached after this long (from the start of cp): failed
MAX_RSS_MIB = 100  # issue 16: the daemon's peak RSS over the whole bench


def large_source(data_dir: Path) -> Path:
    return data_dir / "write-large.bin"


def small_source(data_dir: Path) -> Path:
    return data_dir / "write-small"


def tar_source(data_dir: Path) -> Path:
    return data_dir / "write-members.tar"


def write_sources_large(env: SetupEnv) -> None:
    """The local file `write_large` copies: LARGE_MIB MiB of random bytes."""
    with open(large_source(env.data_dir), "wb") as out:
        for _ in range(LARGE_MIB):
            out.write(os.urandom(1 << 20))


def write_sources_small(env: SetupEnv) -> None:
    """The local directory `write_small_files` copies: SMALL_COUNT random files."""
    top = small_source(env.data_dir)
    top.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SMALL_SEED)
    for i in range(SMALL_COUNT):
        (top / f"f{i:04d}.bin").write_bytes(rng.randbytes(SMALL_SIZE))


def write_sources_tar(env: SetupEnv) -> None:
    """The local archive `write_tar_extract` unpacks: TAR_MEMBERS files of random bytes."""
    top = env.data_dir / "write-members"
    top.mkdir(parents=True, exist_ok=True)
    for i in range(TAR_MEMBERS):
        with open(top / f"m{i}.bin", "wb") as out:
            for _ in range(TAR_MEMBER_MIB):
                out.write(os.urandom(1 << 20))
    names = [f"m{i}.bin" for i in range(TAR_MEMBERS)]  # files only: no "." to chown
    subprocess.run(["tar", "-cf", tar_source(env.data_dir), "-C", top, *names], check=True)


# -- helpers -------------------------------------------------------------------


def new_prefix(ctx: Context) -> str:
    """A prefix no earlier round or filesystem used, created (as a directory) through the
    mount before anything is timed; nothing left pending when the timed part starts."""
    prefix = f"{WRITE_PREFIX}/{ctx.fs.name}-{time.time_ns()}"
    timed(["mkdir", "-p", ctx.at(prefix)])
    settle(ctx)
    return prefix


def settle(ctx: Context) -> None:
    """Wait (untimed) until the filesystem has nothing left to upload: ``s3fuse sync`` for
    s3fuse (its directory markers go up in the background); s3fs writes synchronously and
    rclone uploads no directories, so nothing for them."""
    fs = ctx.fs
    if isinstance(fs, S3Fuse):
        proc = subprocess.run([*fs.cli(), "sync", "--quiet", "--timeout",
                               str(int(DURABLE_TIMEOUT)), str(fs.mountpoint)],
                              capture_output=True, text=True, timeout=DURABLE_TIMEOUT + 30,
                              env=fs.env())
        expect(proc.returncode == 0, f"s3fuse sync failed ({proc.returncode}): "
               f"{(proc.stderr or proc.stdout).strip()[-300:]}")


def run_checked(args: Sequence[str | Path], what: str, label: str) -> float:
    """Seconds the command took; WorkloadError with the end of its stderr if it failed."""
    elapsed, proc = run_timed(args, label=label)
    if proc.returncode != 0:
        raise WorkloadError(f"{what} failed ({proc.returncode}): "
                            f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    return elapsed


def warm(paths: list[Path]) -> None:
    """Read the local source files once, so `cp` reads them from the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def delete_prefix(target: S3Target, prefix: str) -> None:
    """Delete every key under ``prefix/`` (and the ``prefix/`` marker) straight in S3."""
    client = target.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket,
                                                             Prefix=prefix + "/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=target.bucket, Delete={
            "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})


def cleanup(ctx: Context, prefix: str) -> None:
    """Let the filesystem finish whatever it still has queued, then delete the prefix."""
    try:
        settle(ctx)
    finally:
        delete_prefix(ctx.fs.target, prefix)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# -- write_large ---------------------------------------------------------------


def wait_object(client, bucket: str, key: str, size: int, start: float) -> float:
    """Seconds from ``start`` until HeadObject finds ``key`` with ``size`` bytes (polled
    every POLL s); WorkloadError after DURABLE_TIMEOUT."""
    while True:
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
            head = None
        now = time.perf_counter() - start
        if head is not None and head["ContentLength"] == size:
            return now
        if now > DURABLE_TIMEOUT:
            got = "missing" if head is None else f"{head['ContentLength']} bytes"
            raise WorkloadError(f"{key} still {got} in S3 {DURABLE_TIMEOUT:.0f} s after cp "
                                f"started (expected {size} bytes)")
        time.sleep(POLL)


def check_object(client, bucket: str, key: str, want_sha256: str, who: str) -> None:
    """Download the object once and compare its SHA-256 with the source's."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    while chunk := body.read(1 << 20):
        digest.update(chunk)
    if digest.hexdigest() != want_sha256:
        raise WrongBytes(f"{who}: {key} in S3 has sha256 {digest.hexdigest()[:16]}, "
                         f"expected {want_sha256[:16]}")


@workload(
    "write_large",
    f"Writing one {LARGE_MIB} MiB file (`cp` into the mount)",
    [
        Metric("write_close", "close: until `cp` returns"),
        Metric("write_durable", "durable: from the start of `cp` until the object is in S3 "
               "(right size; bytes checked after)"),
        Metric("write_large_rss", "daemon peak RSS (VmHWM) of that mount (write and upload)",
               "MiB", max_value=MAX_RSS_MIB),
    ],
    setups=(write_sources_large,),
    notes=f"`cp` of a local {LARGE_MIB} MiB file of random bytes (page cache warm) to a new "
          f"key under `{WRITE_PREFIX}/` (fresh mount, empty FS cache; the directory made "
          "beforehand, untimed). *Close* is what the user waits for; *durable* is when S3 "
          "really has the object: `HeadObject` straight to SeaweedFS every "
          f"{POLL * 1000:.0f} ms from the start of `cp` until it shows the full size, then "
          "the object is downloaded once and its SHA-256 checked. Every tool runs with its "
          "default write settings: s3fs uploads during `close` (so its close is its "
          "durable); rclone (`--vfs-cache-mode full`) returns once the file is in its cache "
          "and uploads after `--vfs-write-back` (default 5 s) of the file being closed; "
          "s3fuse returns once the bytes are in a fsynced staging file (files over 4 MiB) and "
          "journalled, and uploads at once in the background (8 MiB parts, 4 at a time, "
          "each streamed from the staging file). The daemon's peak RSS is read once the "
          "object is durable (issue 16: at most 100 MiB over the whole bench). "
          "Targets (issue 5): "
          "s3fuse close no slower than rclone's, s3fuse durable no slower than s3fs's.",
)
def write_large(ctx: Context) -> dict[str, float]:
    source = large_source(ctx.data_dir)
    size = LARGE_MIB << 20
    want = sha256_of(source)
    ctx.fresh_mount()
    prefix = new_prefix(ctx)
    key = f"{prefix}/big.bin"
    client = ctx.fs.target.client()
    bucket = ctx.fs.target.bucket
    warm([source])
    try:
        start = time.perf_counter()
        close = run_checked(["cp", source, ctx.at(key)], "cp", f"cp of {LARGE_MIB} MiB")
        values = {"write_close": close}
        try:
            durable = wait_object(client, bucket, key, size, start)
        except WorkloadError as exc:
            raise MetricsFailed(str(exc), values, ["write_durable"]) from None
        check_object(client, bucket, key, want, ctx.fs.name)
        peak = ctx.fs.daemon_peak_rss_kib() / 1024
    finally:
        cleanup(ctx, prefix)
    return {**values, "write_durable": durable, "write_large_rss": peak}


# -- write_small_files ---------------------------------------------------------


def list_sizes(client, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """{key: (size, etag)} of the files (not ``dir/`` markers) under ``prefix/``."""
    found = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                found[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))
    return found


Listing = dict[str, tuple[int, str]]


def poll_listing(client, bucket: str, prefix: str, done: Callable[[Listing], bool],
                 start: float, what: Callable[[Listing], str]) -> tuple[float, Listing]:
    """Seconds from ``start`` until ``done`` says yes to the listing of ``prefix/`` (listed
    again POLL s after each listing), and that listing; after DURABLE_TIMEOUT a
    WorkloadError beginning with ``what`` of the last listing."""
    while True:
        found = list_sizes(client, bucket, prefix)
        now = time.perf_counter() - start
        if done(found):
            return now, found
        if now > DURABLE_TIMEOUT:
            raise WorkloadError(f"{what(found)} {DURABLE_TIMEOUT:.0f} s after it started")
        time.sleep(POLL)


def wait_listed(client, bucket: str, prefix: str, want: int,
                start: float) -> tuple[float, Listing]:
    """poll_listing until ``want`` files are listed under ``prefix/``."""
    return poll_listing(client, bucket, prefix, lambda found: len(found) >= want, start,
                        lambda found: f"only {len(found)} of {want} files listed under "
                                      f"{prefix}/")


@workload(
    "write_small_files",
    f"Writing {SMALL_COUNT:,} small files (`cp -r` of a directory into the mount)",
    [
        Metric("write_small_close", "close: until `cp -r` returns"),
        Metric("write_small_durable", f"durable: from the start of `cp -r` until all "
               f"{SMALL_COUNT:,} keys are listed in S3"),
        Metric("write_small_rss", "daemon peak RSS (VmHWM) of that mount (writes and uploads)",
               "MiB", max_value=MAX_RSS_MIB),
    ],
    setups=(write_sources_small,),
    notes=f"`cp -r` of a local directory of {SMALL_COUNT:,} files of {SMALL_SIZE} random "
          f"bytes (page cache warm) to a new directory under `{WRITE_PREFIX}/` (fresh mount, "
          "empty FS cache): one object per file, so mostly per-file overhead. *Durable*: "
          f"`ListObjectsV2` of the new prefix straight to SeaweedFS (again {POLL * 1000:.0f} "
          f"ms after each listing) until all {SMALL_COUNT:,} keys are there; their sizes and "
          "ETags (MD5) are then checked against the sources. Default write settings as "
          "above: rclone uploads 5 s (`--vfs-write-back`) after each file is closed, s3fs "
          "during each `close`, s3fuse in the background (16 small files at a time) once the burst "
          "of closes pauses for 0.1 s (small files are journalled at close and fsynced by "
          "a group commit every 0.25 s).",
)
def write_small_files(ctx: Context) -> dict[str, float]:
    source = small_source(ctx.data_dir)
    files = sorted(source.iterdir())
    expected = {p.name: md5_hex(p.read_bytes()) for p in files}
    expect(len(expected) == SMALL_COUNT, f"{source} holds {len(expected)} files")
    ctx.fresh_mount()
    prefix = new_prefix(ctx)
    dest = f"{prefix}/small"
    client = ctx.fs.target.client()
    bucket = ctx.fs.target.bucket
    warm(files)
    try:
        start = time.perf_counter()
        close = run_checked(["cp", "-r", source, ctx.at(dest)], "cp -r",
                            f"cp -r of {SMALL_COUNT} files")
        values = {"write_small_close": close}
        try:
            durable, found = wait_listed(client, bucket, dest, SMALL_COUNT, start)
        except WorkloadError as exc:
            raise MetricsFailed(str(exc), values, ["write_small_durable"]) from None
        got = {key.rpartition("/")[2]: v for key, v in found.items()}
        wrong = [f"{name} ({got.get(name, ('missing',))[0]} bytes, etag "
                 f"{got.get(name, ('', '-'))[1][:12]})" for name, md5 in expected.items()
                 if got.get(name) != (SMALL_SIZE, md5)]
        extra = sorted(set(got) - set(expected))
        if wrong or extra:
            raise WrongBytes(f"{ctx.fs.name}: under {dest}/ {len(wrong)} files wrong or "
                             f"missing ({'; '.join(wrong[:3])}), unexpected: {extra[:3]}")
        peak = ctx.fs.daemon_peak_rss_kib() / 1024
    finally:
        cleanup(ctx, prefix)
    return {**values, "write_small_durable": durable, "write_small_rss": peak}


# -- write_tar_extract ---------------------------------------------------------


@workload(
    "write_tar_extract",
    f"Unpacking an archive of {TAR_MEMBERS} files of {TAR_MEMBER_MIB} MiB (`tar -xf` into "
    "the mount: writes of 10 KiB)",
    [
        Metric("write_tar_close", "close: until `tar -xf` returns"),
        Metric("write_tar_durable", f"durable: from the start of `tar -xf` until the "
               f"{TAR_MEMBERS} objects are in S3 (right sizes; bytes checked after)"),
    ],
    setups=(write_sources_tar,),
    notes=f"`tar -xf` of a local archive (page cache warm) of {TAR_MEMBERS} files of "
          f"{TAR_MEMBER_MIB} MiB of random bytes into a new directory under `{WRITE_PREFIX}/` "
          "(fresh mount, empty FS cache). GNU tar writes a member's bytes in pieces of its "
          "record size, 10 KiB, so each write(2) is one FUSE request of 10 KiB (as for "
          "`curl -o`, `wget` or `dd bs=4k`): this measures the cost per write request, where "
          "`cp`'s 1 MiB writes measure bytes. *Durable*: `ListObjectsV2` of the new prefix "
          f"every {POLL * 1000:.0f} ms until the {TAR_MEMBERS} keys show their full sizes, "
          "then each object's SHA-256 is checked. Default write settings, as above.",
)
def write_tar_extract(ctx: Context) -> dict[str, float]:
    archive = tar_source(ctx.data_dir)
    members = sorted((ctx.data_dir / "write-members").glob("m*.bin"))
    expected = {p.name: sha256_of(p) for p in members}
    expect(len(expected) == TAR_MEMBERS, f"{archive.parent} holds {len(expected)} members")
    size = TAR_MEMBER_MIB << 20
    ctx.fresh_mount()
    prefix = new_prefix(ctx)
    dest = f"{prefix}/tree"
    timed(["mkdir", ctx.at(dest)])
    settle(ctx)
    client = ctx.fs.target.client()
    bucket = ctx.fs.target.bucket
    warm([archive])
    try:
        start = time.perf_counter()
        close = run_checked(["tar", "-xf", archive, "-C", ctx.at(dest)], "tar -xf",
                            f"tar -xf of {TAR_MEMBERS} x {TAR_MEMBER_MIB} MiB")
        values = {"write_tar_close": close}
        try:
            durable = wait_sized(client, bucket, dest, expected, size, start)
        except WorkloadError as exc:
            raise MetricsFailed(str(exc), values, ["write_tar_durable"]) from None
        for name, digest in expected.items():
            check_object(client, bucket, f"{dest}/{name}", digest, ctx.fs.name)
    finally:
        cleanup(ctx, prefix)
    return {**values, "write_tar_durable": durable}


def wait_sized(client, bucket: str, prefix: str, names: dict[str, str], size: int,
               start: float) -> float:
    """poll_listing until every one of ``names`` is listed under ``prefix/`` with ``size``
    bytes (s3fs makes each file empty at its create, before its bytes)."""
    def sizes(found: Listing) -> dict[str, int]:
        return {key.rpartition("/")[2]: v[0] for key, v in found.items()}
    return poll_listing(client, bucket, prefix,
                        lambda found: all(sizes(found).get(n) == size for n in names), start,
                        lambda found: f"under {prefix}/: {sizes(found)} (expected "
                                      f"{len(names)} of {size} bytes)")[0]
