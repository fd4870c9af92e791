"""Workload registry. A workload is a function ``(Context) -> {metric: value}``.

Register new ones with ``@workload(...)``; declare the data sets they need as
``setups`` (each runs once per benchmark, shared between workloads) and the
s3exchange ``manifests`` they read. Raise ``NotApplicable`` from a workload that
makes no sense for ``ctx.fs``; raise ``WrongBytes`` when a filesystem returns
wrong data (that aborts the whole benchmark).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import datasets
from benchmarks.datasets import DataSpec, ManifestRef, SetupEnv
from benchmarks.filesystems import FileSystem
from benchmarks.s3 import S3Target

COMMAND_TIMEOUT = 900.0
SHARD_READS = 100
SHARD_PICK_SEED = 100


class NotApplicable(Exception):
    """The workload does not apply to this filesystem."""


class WorkloadError(RuntimeError):
    """A timed command failed or produced a wrong result."""


class WrongBytes(WorkloadError):
    """A read returned other bytes than were written: the benchmark must stop."""


@dataclass(frozen=True)
class Metric:
    """One measured value. Keys are unique over all workloads (they key the samples).

    ``vs``: key of a baseline metric of the same workload, shown in the same row with
    the speed-up (baseline / this). Targets, when set, are checked in the report:
    ``min_speedup`` for that speed-up, ``max_value`` for the value itself.
    """

    key: str
    title: str
    unit: str = "s"
    vs: str | None = None
    min_speedup: float | None = None
    max_value: float | None = None


@dataclass
class Context:
    """What a workload sees: the filesystem under test and the data-set sizes."""

    fs: FileSystem
    spec: DataSpec
    data_dir: Path

    def at(self, relative: str) -> Path:
        return self.fs.data_root / relative

    def in_manifest(self, manifest: ManifestRef, relative: str = "") -> Path:
        """A path in a mounted manifest (NotApplicable when the FS cannot read manifests)."""
        if not self.fs.reads_manifests:
            raise NotApplicable(f"{self.fs.name} does not read s3exchange manifests")
        return self.fs.manifest_root(manifest) / relative

    def remount(self, wipe_cache: bool = False) -> None:
        """Unmount, optionally wipe the FS cache, mount again, drop the page cache."""
        self.fs.unmount()
        if wipe_cache:
            self.fs.wipe_cache()
        self.fs.mount()
        drop_page_cache()

    def fresh_mount(self) -> None:
        """Cold start: empty FS cache, fresh mount, page cache dropped."""
        self.remount(wipe_cache=True)


WorkloadFunc = Callable[[Context], dict[str, float]]
SetupFunc = Callable[[SetupEnv], None]


@dataclass(frozen=True)
class Workload:
    """A registered workload.

    ``compare_filesystems=False``: only some filesystems run it, so the report shows the
    subject alone (with ``baseline`` naming what ``Metric.vs`` values measure) instead of
    a comparison. ``huge``: left out unless asked for (``--huge`` or by name). ``notes``:
    markdown for the report, formatted with the data-set spec's fields.
    """

    name: str
    title: str
    func: WorkloadFunc
    metrics: tuple[Metric, ...]
    setups: tuple[SetupFunc, ...] = field(default=())
    manifests: tuple[ManifestRef, ...] = field(default=())
    compare_filesystems: bool = True
    baseline: str = ""
    huge: bool = False
    notes: str = ""

    def describe(self) -> dict[str, object]:
        """What results.json records about it."""
        return {"name": self.name, "title": self.title,
                "metrics": [m.__dict__ for m in self.metrics],
                "compare_filesystems": self.compare_filesystems, "baseline": self.baseline,
                "notes": self.notes}


WORKLOADS: dict[str, Workload] = {}


def workload(name: str, title: str, metrics: list[Metric], setups: tuple[SetupFunc, ...] = (),
             *, manifests: tuple[ManifestRef, ...] = (), compare_filesystems: bool = True,
             baseline: str = "", huge: bool = False, notes: str = ""):
    """Decorator adding a workload to ``WORKLOADS`` (run in registration order)."""
    taken = {m.key for w in WORKLOADS.values() for m in w.metrics}
    clash = taken & {m.key for m in metrics}
    if name in WORKLOADS or clash:
        raise ValueError(f"workload {name}: name or metric keys {sorted(clash)} already used")

    def register(func: WorkloadFunc) -> WorkloadFunc:
        WORKLOADS[name] = Workload(name, title, func, tuple(metrics), setups, manifests,
                                   compare_filesystems, baseline, huge, notes)
        return func

    return register


# -- helpers -------------------------------------------------------------------


def drop_page_cache() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` (needs root)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed_bytes(args: Sequence[str | Path], capture: bool = True) -> tuple[float, bytes]:
    """Run a plain shell tool; return (wall seconds, stdout if captured)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(a) for a in args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=COMMAND_TIMEOUT,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        shown = " ".join(map(str, args))
        raise WorkloadError(f"{shown[:300]} failed ({proc.returncode}): "
                            f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
    return elapsed, proc.stdout or b""


def timed(args: Sequence[str | Path], capture: bool = False) -> tuple[float, str]:
    """``timed_bytes`` with stdout as text."""
    elapsed, out = timed_bytes(args, capture)
    return elapsed, out.decode(errors="replace")


def cat_dir(directory: Path) -> list[str]:
    """argv that cats every file of ``directory`` to /dev/null (glob in the shell)."""
    return ["sh", "-c", 'cat -- "$1"/* > /dev/null', "sh", str(directory)]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise WorkloadError(message)


def count_files(top: Path) -> tuple[float, int]:
    """Time ``find TOP -type f | wc -l``; return (seconds, count)."""
    script = 'find "$1" -type f | wc -l'
    elapsed, out = timed(["bash", "-o", "pipefail", "-c", script, "bash", top], capture=True)
    return elapsed, int(out)


def ls_recursive(directory: Path) -> tuple[float, int]:
    """Time ``ls -R DIR``; return (seconds, number of non-directories listed).

    Every directory below DIR is listed once as an entry and once as a ``path:`` header.
    """
    elapsed, out = timed(["ls", "-R", directory], capture=True)
    lines = [line for line in out.splitlines() if line]
    headers = sum(line.endswith(":") for line in lines)
    return elapsed, len(lines) - headers - (headers - 1)


def split_sizes(blob: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Cut a concatenation (``cat a b c``) back into pieces of the given sizes."""
    if len(blob) != sum(sizes):
        raise WrongBytes(f"read {len(blob)} bytes in all, expected {sum(sizes)}")
    starts = [0, *itertools.accumulate(sizes)]
    return [blob[start:start + size] for start, size in zip(starts, sizes)]


def verify_members(reader: str, expected: Sequence[tuple[str, bytes]],
                   got: Sequence[bytes]) -> None:
    """Compare SHA-256 digests member by member; WrongBytes names the first culprits."""
    wrong = [f"{path} (sha256 {hashlib.sha256(have).hexdigest()[:16]}, "
             f"expected {hashlib.sha256(want).hexdigest()[:16]})"
             for (path, want), have in zip(expected, got, strict=True)
             if hashlib.sha256(have).digest() != hashlib.sha256(want).digest()]
    if wrong:
        raise WrongBytes(f"{reader}: wrong bytes in {len(wrong)} of {len(expected)} members: "
                         + "; ".join(wrong[:3]))


def local_hot_read(data_dir: Path) -> float:
    """Baseline: ``cat`` of the local copy of the big object with the page cache warm."""
    path = datasets.local_big_path(data_dir)
    timed(["cat", path])
    return timed(["cat", path])[0]


# -- workloads -----------------------------------------------------------------


@workload(
    "seq_read",
    "Sequential read of one large object (`cat big > /dev/null`)",
    [
        Metric("read_cold", "cold: empty FS cache, fresh mount, page cache dropped"),
        Metric("read_disk_cache", "again from the FS disk cache, page cache dropped"),
        Metric("read_hot", "again hot (page cache warm)"),
    ],
    setups=(datasets.big_object,),
)
def seq_read(ctx: Context) -> dict[str, float]:
    path = ctx.at(datasets.BIG_KEY)
    ctx.fresh_mount()
    cold, _ = timed(["cat", path])
    drop_page_cache()
    disk, _ = timed(["cat", path])
    hot, _ = timed(["cat", path])
    size = path.stat().st_size
    expect(size == ctx.spec.big_mib << 20, f"{path} has {size} bytes")
    return {"read_cold": cold, "read_disk_cache": disk, "read_hot": hot}


@workload(
    "ls_dir",
    "`ls -l` of a directory of small files (fresh mount)",
    [Metric("ls_cold", "cold `ls -l`")],
    setups=(datasets.small_files,),
)
def ls_dir(ctx: Context) -> dict[str, float]:
    ctx.fresh_mount()
    elapsed, out = timed(["ls", "-l", ctx.at(datasets.SMALL_DIR)], capture=True)
    entries = len(out.splitlines()) - 1  # first line is "total N"
    expect(entries == ctx.spec.small_files, f"ls -l listed {entries} entries")
    return {"ls_cold": elapsed}


@workload(
    "small_files",
    "`cat` of every small file in one directory",
    [Metric("small_cold", "cold (fresh mount)"), Metric("small_warm", "again (warm)")],
    setups=(datasets.small_files,),
)
def small_files(ctx: Context) -> dict[str, float]:
    ctx.fresh_mount()
    argv = cat_dir(ctx.at(datasets.SMALL_DIR))
    cold, _ = timed(argv)
    warm, _ = timed(argv)
    return {"small_cold": cold, "small_warm": warm}


@workload(
    "find_tree",
    "`find -type f` over a tree of keys (fresh mount)",
    [Metric("find_cold", "cold `find`")],
    setups=(datasets.tree,),
)
def find_tree(ctx: Context) -> dict[str, float]:
    ctx.fresh_mount()
    elapsed, out = timed(["find", ctx.at(datasets.TREE_DIR), "-type", "f"], capture=True)
    found = len(out.splitlines())
    expect(found == ctx.spec.tree_keys, f"find listed {found} files, expected {ctx.spec.tree_keys}")
    return {"find_cold": elapsed}


@workload("rss", "Daemon peak RSS (VmHWM) over the round", [Metric("rss_peak", "peak RSS", "MiB")])
def rss(ctx: Context) -> dict[str, float]:
    peak = ctx.fs.sample_rss()
    if peak == 0:
        raise NotApplicable("the daemon never ran in this round")
    return {"rss_peak": peak / 1024}


# -- s3fuse only: s3exchange manifests (registered after rss: not part of that peak) -----


def exchange_reads(target: S3Target, virtual_keys: Sequence[str]) -> tuple[float, list[bytes]]:
    """s3exchange's own reads: ``store.get_object(key).read()`` in one loop, timed."""
    store = datasets.store_for(target)
    start = time.perf_counter()
    got = [store.get_object(key).read() for key in virtual_keys]
    return time.perf_counter() - start, got


@workload(
    "shard_random_reads",
    "Random reads of members of a .tar.gz shard (s3exchange manifest)",
    [
        Metric("index_build", "`ls -R` of the shard directory: builds the shard index "
               "(empty cache, fresh mount)"),
        Metric("s3fuse_100_reads", f"{SHARD_READS} random members: s3fuse `cat` of their "
               "paths on a new mount (index cached, member bytes never read, page cache "
               "dropped) vs s3exchange `get_object(\"archive#member\").read()` in a loop",
               vs="s3exchange_100_reads", min_speedup=50),
        Metric("s3exchange_100_reads", f"s3exchange: {SHARD_READS} x `get_object` of a member"),
    ],
    setups=(datasets.shard_archive,),
    manifests=(datasets.SHARD_MANIFEST,),
    compare_filesystems=False,
    baseline="s3exchange",
    notes=f"One shard `{datasets.SHARD_MANIFEST.mount_path(datasets.SHARD_ARCHIVE)}` of "
          "{shard_members:,} members (random bytes, 4-64 KiB, some in sub-directories) "
          "written by s3exchange (`put_shard_archive(..., compression=\"gzip\")`, "
          f"`write_manifest`) and mounted with `--manifest {datasets.SHARD_MANIFEST.name}="
          f"s3://BUCKET/{datasets.SHARD_MANIFEST.key}`; s3fs and rclone cannot read "
          "manifests. The same members (fixed seed) are read both ways and their SHA-256 "
          "checked. s3exchange downloads and decompresses the whole archive "
          "for every member; s3fuse decompresses from the seek point before the member, "
          "found in the index that the `ls -R` built (indexing also left the compressed "
          "archive in s3fuse's disk block cache).",
)
def shard_random_reads(ctx: Context) -> dict[str, float]:
    archive = datasets.SHARD_ARCHIVE
    shard_dir = ctx.in_manifest(datasets.SHARD_MANIFEST,
                                datasets.SHARD_MANIFEST.mount_path(archive))
    picked = random.Random(SHARD_PICK_SEED).sample(datasets.shard_members(ctx.spec), SHARD_READS)
    ctx.fresh_mount()
    index_build, listed = ls_recursive(shard_dir)
    expect(listed == ctx.spec.shard_members, f"ls -R {shard_dir} listed {listed} files, "
           f"expected {ctx.spec.shard_members}")
    ctx.remount()
    elapsed, out = timed_bytes(["cat", *(shard_dir / path for path, _ in picked)])
    verify_members("s3fuse", picked, split_sizes(out, [len(data) for _, data in picked]))
    exchange, got = exchange_reads(ctx.fs.target, [f"{archive}#{path}" for path, _ in picked])
    verify_members("s3exchange", picked, got)
    return {"index_build": index_build, "s3fuse_100_reads": elapsed,
            "s3exchange_100_reads": exchange}


def register_manifest_find(name: str, manifest: ManifestRef, setup: SetupFunc, entries: str,
                           *, huge: bool = False, max_rss_mib: float | None = None) -> None:
    """``find MP/NAME -type f | wc -l`` over a manifest of ``spec.<entries>`` file entries."""

    @workload(
        name,
        f"`find -type f` over a manifest of {{{entries}:,}} file entries",
        [
            Metric(f"{name}_cold", "cold `find | wc -l`: empty cache, fresh mount (includes "
                   "ingesting the manifest)"),
            Metric(f"{name}_warm", "again (warm)"),
            Metric(f"{name}_rss", "daemon peak RSS (VmHWM) of that mount", "MiB",
                   max_value=max_rss_mib),
        ],
        setups=(setup,),
        manifests=(manifest,),
        compare_filesystems=False,
        huge=huge,
        notes=f"One manifest object (`{manifest.key}`) of {{{entries}:,}} `file` "
              f"lines (`data/d<dir>/f<n>.bin`, {datasets.MANIFEST_FILES_PER_DIR} per "
              "directory, size and etag filled in; the objects themselves do not exist), "
              f"mounted with `--manifest {manifest.name}=s3://BUCKET/{manifest.key}`; s3fs and "
              "rclone cannot read manifests.",
    )
    def manifest_find(ctx: Context) -> dict[str, float]:
        top = ctx.in_manifest(manifest)
        want = getattr(ctx.spec, entries)
        ctx.fresh_mount()
        cold, found = count_files(top)
        expect(found == want, f"cold find {top} counted {found} files, expected {want}")
        warm, found = count_files(top)
        expect(found == want, f"warm find {top} counted {found} files, expected {want}")
        return {f"{name}_cold": cold, f"{name}_warm": warm,
                f"{name}_rss": ctx.fs.daemon_peak_rss_kib() / 1024}


register_manifest_find("manifest_find", datasets.BIG_MANIFEST, datasets.big_manifest,
                       "manifest_entries")
register_manifest_find("manifest_find_1m", datasets.HUGE_MANIFEST, datasets.huge_manifest,
                       "huge_manifest_entries", huge=True, max_rss_mib=300)
