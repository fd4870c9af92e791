"""Workload registry. A workload is a function ``(Context) -> {metric: value}``.

Register new ones with ``@workload(...)``; declare the data sets they need as
``setups`` (each runs once per benchmark, shared between workloads) and the
s3exchange ``manifests`` they read. Raise ``NotApplicable`` from a workload that
makes no sense for ``ctx.fs``; raise ``WrongBytes`` when a filesystem returns
wrong data (that aborts the whole benchmark); raise ``MetricsFailed`` when failing is
itself the result (e.g. a filesystem that cannot serve its cache offline): the values
measured so far count and the report shows the rest as failed; raise ``NotSupported`` when
the filesystem answers success but does not do what is measured (e.g. a chmod that stores
nothing): the report shows "not supported" rather than timing a no-op.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import json
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
OFFLINE_TIMEOUT = 60.0  # a re-read with S3 cut that takes longer than this has failed
RECOVER_TIMEOUT = 60.0
STATUS_POLL = 0.05
REREAD_PASSES = 3  # offline_reread: best of this many re-reads each online and offline
SHARD_READS = 100
SHARD_PICK_SEED = 100


class NotApplicable(Exception):
    """The workload does not apply to this filesystem."""


class WorkloadError(RuntimeError):
    """A timed command failed or produced a wrong result."""


class WrongBytes(WorkloadError):
    """A read returned other bytes than were written: the benchmark must stop."""


class MetricsFailed(WorkloadError):
    """The filesystem failed at something the workload measures: a result, not a bug.

    ``values``: the metrics measured before the failure (recorded as usual); ``failed``:
    the keys that could not be measured (shown as failed in the report).
    """

    def __init__(self, message: str, values: dict[str, float], failed: Sequence[str]) -> None:
        super().__init__(message)
        self.values = dict(values)
        self.failed = tuple(failed)


class NotSupported(WorkloadError):
    """The filesystem does not do what the workload measures (checked, not assumed): a
    result, shown as "not supported" for every metric of the workload."""


@dataclass(frozen=True)
class Metric:
    """One measured value. Keys are unique over all workloads (they key the samples).

    ``vs``: key of a baseline metric of the same workload, shown in the same row with
    the speed-up (baseline / this). Targets, when set, are checked in the report:
    ``min_speedup`` for that speed-up, ``max_value`` for the value itself.
    ``compare=False``: a value not to hold against the other filesystems' (e.g. a
    filesystem's own offline/online ratio): no s3fuse / best-other ratio, not plotted.
    Units: ``s``, ``MiB``, ``x`` (a ratio), ``req`` (S3 requests), ``files``.
    """

    key: str
    title: str
    unit: str = "s"
    vs: str | None = None
    min_speedup: float | None = None
    max_value: float | None = None
    compare: bool = True


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
class Scale:
    """A workload as one size of a family measured at several sizes (cost should grow
    linearly, or better, with the work): the report puts the family's sizes side by side.

    ``family``: what the members share; ``size``: the data-set spec's field holding the
    size; ``unit``: what is counted (the report divides by the size: cost per ``unit``).
    The members' metrics line up by position.
    """

    family: str
    size: str
    unit: str


@dataclass(frozen=True)
class Workload:
    """A registered workload.

    ``compare_filesystems=False``: only some filesystems run it, so the report shows the
    subject alone (with ``baseline`` naming what ``Metric.vs`` values measure) instead of
    a comparison. ``huge``: left out unless asked for (``--huge`` or by name). ``notes``:
    markdown for the report, formatted with the data-set spec's fields. ``series``: the
    title of a growth table shared by the workloads that run the same metrics (by
    position) on one data set at several sizes; ``size``: this one's size, a spec
    expression (``"{flat_dir_keys[0]}"``): a table of growth exponents for workloads
    that compare filesystems. ``scale``: one size of a family the report shows side by
    side with a cost per unit (the manifest sizes, s3fuse alone).
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
    series: str = ""
    size: str = ""
    scale: Scale | None = None

    def describe(self) -> dict[str, object]:
        """What results.json records about it."""
        return {"name": self.name, "title": self.title,
                "metrics": [m.__dict__ for m in self.metrics],
                "compare_filesystems": self.compare_filesystems, "baseline": self.baseline,
                "notes": self.notes, "series": self.series, "size": self.size,
                "scale": self.scale.__dict__ if self.scale else None}


WORKLOADS: dict[str, Workload] = {}


def workload(name: str, title: str, metrics: list[Metric], setups: tuple[SetupFunc, ...] = (),
             *, manifests: tuple[ManifestRef, ...] = (), compare_filesystems: bool = True,
             baseline: str = "", huge: bool = False, notes: str = "", series: str = "",
             size: str = "", scale: Scale | None = None):
    """Decorator adding a workload to ``WORKLOADS`` (run in registration order)."""
    taken = {m.key for w in WORKLOADS.values() for m in w.metrics}
    clash = taken & {m.key for m in metrics}
    if name in WORKLOADS or clash:
        raise ValueError(f"workload {name}: name or metric keys {sorted(clash)} already used")

    def register(func: WorkloadFunc) -> WorkloadFunc:
        WORKLOADS[name] = Workload(name, title, func, tuple(metrics), setups, manifests,
                                   compare_filesystems, baseline, huge, notes, series, size,
                                   scale)
        return func

    return register


# -- helpers -------------------------------------------------------------------


def drop_page_cache() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` (needs root)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def disk_reads_mib() -> float:
    """MiB read so far from the machine's disks (whole devices with a driver behind them,
    so partitions, loop and device-mapper devices are not counted twice)."""
    disks = {d.name for d in Path("/sys/block").iterdir() if (d / "device").exists()}
    sectors = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] in disks:
            sectors += int(fields[5])
    return sectors / 2048


def run_timed(args: Sequence[str | Path], capture: bool = True, timeout: float = COMMAND_TIMEOUT,
              label: str = "") -> tuple[float, subprocess.CompletedProcess]:
    """Run a plain shell tool; return (wall seconds, the finished process), failed or not.

    WorkloadError when it runs longer than ``timeout`` (it is killed); ``label`` names the
    command in messages (default: its argv, shortened).
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise WorkloadError(f"{label or _shown(args)} timed out after {timeout:.0f} s") from None
    return time.perf_counter() - start, proc


def _shown(args: Sequence[str | Path], limit: int = 120) -> str:
    shown = " ".join(map(str, args))
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(args)} args)"


def timed_bytes(args: Sequence[str | Path], capture: bool = True,
                timeout: float = COMMAND_TIMEOUT, label: str = "") -> tuple[float, bytes]:
    """Run a plain shell tool; return (wall seconds, stdout if captured); fail unless exit 0."""
    elapsed, proc = run_timed(args, capture, timeout, label)
    if proc.returncode != 0:
        raise WorkloadError(f"{label or _shown(args)} failed ({proc.returncode}): "
                            f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
    return elapsed, proc.stdout or b""


def timed(args: Sequence[str | Path], capture: bool = False,
          timeout: float = COMMAND_TIMEOUT, label: str = "") -> tuple[float, str]:
    """``timed_bytes`` with stdout as text."""
    elapsed, out = timed_bytes(args, capture, timeout, label)
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


@functools.cache
def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(reader: str, expected: dict[Path, str], timeout: float = COMMAND_TIMEOUT) -> None:
    """``sha256sum`` of every file (read through the filesystem) against the expected hex
    digests; WrongBytes names the first culprits, WorkloadError when a read fails."""
    _, out = timed(["sha256sum", "--", *expected], capture=True, timeout=timeout,
                   label=f"sha256sum of the {len(expected)} files")
    got = dict(reversed(line.split(maxsplit=1)) for line in out.splitlines())
    wrong = [f"{path} (sha256 {got.get(str(path), 'missing')[:16]}, expected {want[:16]})"
             for path, want in expected.items() if got.get(str(path)) != want]
    if wrong:
        raise WrongBytes(f"{reader}: wrong bytes in {len(wrong)} of {len(expected)} files: "
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
        Metric("read_disk_cache_device", "read from the machine's disks during the read from "
               "the FS disk cache", "MiB", compare=False),
    ],
    setups=(datasets.big_object,),
    notes="One {big_mib} MiB object of random bytes, read three times in a row. The bytes "
          "the disks gave during the read from the FS disk cache (`/proc/diskstats`) show "
          "that it came from the disk: a value well under {big_mib} MiB means the "
          "filesystem served it from memory, not from its disk cache.",
)
def seq_read(ctx: Context) -> dict[str, float]:
    path = ctx.at(datasets.BIG_KEY)
    ctx.fresh_mount()
    cold, _ = timed(["cat", path])
    drop_page_cache()
    before = disk_reads_mib()
    disk, _ = timed(["cat", path])
    device = disk_reads_mib() - before
    hot, _ = timed(["cat", path])
    size = path.stat().st_size
    expect(size == ctx.spec.big_mib << 20, f"{path} has {size} bytes")
    return {"read_cold": cold, "read_disk_cache": disk, "read_hot": hot,
            "read_disk_cache_device": device}


@workload(
    "ls_dir",
    "`ls -l` of a directory of small files (fresh mount)",
    [Metric("ls_cold", "cold `ls -l`")],
    setups=(datasets.small_files,),
    notes="One listing plus a stat per entry of the directory of {small_files:,} files of "
          "{small_size} bytes, with nothing cached.",
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
    notes="`cat dir/* > /dev/null` of the same {small_files:,} files: one object per file, so "
          "mostly per-request latency; then again with listing, stats and bytes cached.",
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
    notes="{tree_keys:,} tiny keys in {tree_dirs} x {tree_subdirs} directories of "
          "{tree_files} files: one listing per directory, nothing cached.",
)
def find_tree(ctx: Context) -> dict[str, float]:
    ctx.fresh_mount()
    elapsed, out = timed(["find", ctx.at(datasets.TREE_DIR), "-type", "f"], capture=True)
    found = len(out.splitlines())
    expect(found == ctx.spec.tree_keys, f"find listed {found} files, expected {ctx.spec.tree_keys}")
    return {"find_cold": elapsed}


@workload("rss", "Daemon peak RSS (VmHWM) over the round", [Metric("rss_peak", "peak RSS", "MiB")],
          notes="Largest resident memory of the daemon over the sections above (one mount at "
                "a time, each fresh); lower is better.")
def rss(ctx: Context) -> dict[str, float]:
    peak = ctx.fs.sample_rss()
    if peak == 0:
        raise NotApplicable("the daemon never ran in this round")
    return {"rss_peak": peak / 1024}


# -- offline: S3 cut behind a proxy (registered after rss: not part of that peak) -------


def reread_set(ctx: Context) -> dict[Path, str]:
    """The cached tree re-read offline: the small files and the big object (expected sha256)."""
    small = hashlib.sha256(datasets.small_file_body(ctx.spec)).hexdigest()
    files = {ctx.at(key): small for key in datasets.small_file_keys(ctx.spec)}
    files[ctx.at(datasets.BIG_KEY)] = sha256_of_file(datasets.local_big_path(ctx.data_dir))
    return files


@workload(
    "offline_reread",
    "Re-reading a cached tree with S3 cut vs online",
    [
        Metric("reread_online", "re-read online (FS cache warm, page cache dropped; "
               f"best of {REREAD_PASSES})"),
        Metric("reread_offline", "the same re-read with S3 cut"),
        Metric("reread_ratio", "offline / online (1 = no slower offline)", "x", compare=False),
    ],
    setups=(datasets.small_files, datasets.big_object),
    notes="Every filesystem mounted through a TCP proxy in front of SeaweedFS (all other "
          "sections connect directly). The {small_files:,} small files and the {big_mib} MiB "
          "object are read once with `cat` (fresh mount, empty caches: fills the "
          "filesystem's cache), then re-read with `cat`: online, and after the proxy is cut "
          "(connections reset, new ones refused). Each time: the fastest of "
          f"{REREAD_PASSES} passes, each started with the daemon idle (its cache written) "
          "and the page cache dropped; then `sha256sum` checks every file. Offline, an "
          f"error, a wrong byte or more than {OFFLINE_TIMEOUT:.0f} s counts as failed.",
)
def offline_reread(ctx: Context) -> dict[str, float]:
    expected = reread_set(ctx)
    argv = ["cat", "--", *expected]
    label = f"`cat` of the {len(expected)} files"
    fs = ctx.fs
    with fs.through_proxy() as proxy:
        ctx.fresh_mount()
        timed(argv, label=label)  # fills the FS cache
        online = best_reread(fs, argv, label)
        verify_files(f"{fs.name} online", expected)  # wrong bytes online: abort
        values = {"reread_online": online}
        proxy.cut()
        try:
            offline = best_reread(fs, argv, label, timeout=OFFLINE_TIMEOUT)
            verify_files(f"{fs.name} offline", expected, timeout=OFFLINE_TIMEOUT)
        except WorkloadError as exc:  # WrongBytes included: offline, it is a result
            raise MetricsFailed(f"offline re-read: {exc}", values,
                                ["reread_offline", "reread_ratio"]) from None
    return {**values, "reread_offline": offline, "reread_ratio": offline / online}


def best_reread(fs: FileSystem, argv: list[str | Path], label: str,
                timeout: float = COMMAND_TIMEOUT) -> float:
    """Fastest of REREAD_PASSES timed re-reads, each once the daemon is idle (its background
    cache writes done) and the page cache dropped."""
    times = []
    for _ in range(REREAD_PASSES):
        fs.wait_idle()
        drop_page_cache()
        times.append(timed(argv, timeout=timeout, label=label)[0])
    return min(times)


def link_state(fs: FileSystem) -> str:
    """``link.state`` as ``s3fuse status --json`` reports it."""
    return fs.status()["link"]["state"]


def wait_link_online(fs: FileSystem, timeout: float) -> float:
    """Seconds until the status attribute (what ``s3fuse status`` reads) says online, polled
    every STATUS_POLL s; confirmed with ``s3fuse status --json`` itself."""
    from s3fuse.control import STATUS

    start = time.perf_counter()
    while True:
        state = json.loads(os.getxattr(fs.mountpoint, STATUS))["link"]["state"]
        elapsed = time.perf_counter() - start
        if state == "online":
            break
        if elapsed > timeout:
            raise WorkloadError(f"link still {state} {timeout:.0f} s after the proxy was restored")
        time.sleep(STATUS_POLL)
    expect(link_state(fs) == "online", "the status attribute says online, `s3fuse status` not")
    return elapsed


@workload(
    "offline_detect_recover",
    "Detecting that S3 is unreachable, and recovering",
    [
        Metric("detect_offline", "S3 cut: `cat` of an uncached file until it fails "
               "(EHOSTUNREACH)", max_value=5),
        Metric("recover", "S3 back: until `s3fuse status --json` shows `link.state` online"),
        Metric("read_after_recover", "then `cat` of another uncached file"),
    ],
    setups=(datasets.tree,),
    compare_filesystems=False,
    notes="s3fuse only (s3fs and rclone report no link state). Mounted through the proxy, "
          "one directory of the tree listed (the files' bytes never read), the proxy cut: "
          "the first read of an uncached file must fail, within seconds and with "
          "`EHOSTUNREACH`, and the link be reported offline. Then the proxy restored: the "
          "daemon probes S3 every 2 s while offline; the status (the attribute "
          f"`s3fuse status` reads) is polled every {STATUS_POLL * 1000:.0f} ms, and another "
          "uncached file read and checked.",
)
def offline_detect_recover(ctx: Context) -> dict[str, float]:
    fs = ctx.fs
    if not fs.reports_link_state:
        raise NotApplicable(f"{fs.name} reports no link state")
    keys = list(itertools.islice(datasets.tree_keys(ctx.spec), 2))
    directory = ctx.at(keys[0]).parent
    with fs.through_proxy() as proxy:
        ctx.fresh_mount()
        listed = os.listdir(directory)
        expect(len(listed) == ctx.spec.tree_files, f"{directory} lists {len(listed)} entries")
        expect(link_state(fs) == "online", "link not online before the cut")
        proxy.cut()
        detect, proc = run_timed(["cat", "--", ctx.at(keys[0])], timeout=OFFLINE_TIMEOUT)
        stderr = proc.stderr.decode(errors="replace").strip()
        expect(proc.returncode != 0, f"reading uncached {keys[0]} with S3 cut succeeded")
        expect(os.strerror(errno.EHOSTUNREACH) in stderr,
               f"reading uncached {keys[0]} with S3 cut failed otherwise: {stderr[-300:]}")
        expect(link_state(fs) == "offline", "link not reported offline after a failed read")
        proxy.restore()
        recover = wait_link_online(fs, RECOVER_TIMEOUT)
        again, out = timed_bytes(["cat", "--", ctx.at(keys[1])])
        if out != keys[1].encode():
            raise WrongBytes(f"{fs.name}: {keys[1]} after recovery: {out[:80]!r}")
    return {"detect_offline": detect, "recover": recover, "read_after_recover": again}


# -- a black hole: S3 accepts connections and never answers -------------------------------

#: How long S3 stays black-holed before the warm tree is read again: past s3fuse's
#: --metadata-ttl (60 s), so it revalidates; s3fs keeps stats 900 s by default.
BLACKHOLE_AGE = 65.0
BLACKHOLE_TIMEOUT = 120.0  # an `ls -R` or `cat` still running then has failed


def timed_or_abort(fs: FileSystem, args: Sequence[str | Path], timeout: float,
                   label: str) -> tuple[float, bytes]:
    """``timed_bytes``, except that a command still running after ``timeout`` has the
    filesystem's daemon killed: a command waiting in a FUSE request cannot be killed
    itself (s3fs held `ls -R` in that state for over 15 min with S3 black-holed)."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        fs.kill_daemon()  # the daemon gone, the command's request fails
        proc.communicate()
        raise WorkloadError(f"{label} timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise WorkloadError(f"{label} failed ({proc.returncode}): "
                            f"{err.decode(errors='replace').strip()[-500:]}")
    return time.perf_counter() - start, out


@workload(
    "blackhole_serve",
    "Serving a cached tree with S3 black-holed",
    [
        Metric("blackhole_ls", "`ls -R` of the warm tree, S3 black-holed for "
               f"{BLACKHOLE_AGE:.0f} s"),
        Metric("blackhole_cat", "then `cat` of every file of it"),
    ],
    setups=(datasets.tree,),
    notes="Every filesystem mounted through a TCP proxy in front of SeaweedFS that can turn "
          "into a black hole (connections accepted, requests read, nothing ever answered: "
          "a captive portal, a dead VPN, a half-open NAT). One top directory of the tree "
          "({tree_subdirs} x {tree_files} files) is listed with `ls -R` and read with `cat` "
          "(fresh mount, empty caches), the daemon left to go idle, then S3 black-holed "
          f"for {BLACKHOLE_AGE:.0f} s (past s3fuse's 60 s metadata TTL; s3fs keeps stats "
          "900 s and rclone directories 5 min by default) before the same `ls -R` and `cat` are timed "
          f"and the bytes checked. More than {BLACKHOLE_TIMEOUT:.0f} s, an error or a "
          "wrong byte counts as failed.",
)
def blackhole_serve(ctx: Context) -> dict[str, float]:
    fs = ctx.fs
    first = next(datasets.tree_keys(ctx.spec))
    top = ctx.at(first).parent.parent
    prefix = first.rsplit("/", 2)[0] + "/"
    keys = [k for k in datasets.tree_keys(ctx.spec) if k.startswith(prefix)]
    files = [ctx.at(k) for k in keys]
    expected = b"".join(k.encode() for k in keys)
    with fs.through_blackhole() as proxy:
        ctx.fresh_mount()
        _, listed = ls_recursive(top)
        expect(listed == len(keys), f"{top} lists {listed} entries")
        expect(timed_bytes(["cat", "--", *files], label="warming `cat`")[1] == expected,
               "warming `cat` read wrong bytes")
        fs.wait_idle()
        proxy.blackhole()
        time.sleep(BLACKHOLE_AGE)
        values: dict[str, float] = {}
        try:
            values["blackhole_ls"], _ = timed_or_abort(fs, ["ls", "-R", top], BLACKHOLE_TIMEOUT,
                                                       f"`ls -R {top}`")
            elapsed, out = timed_or_abort(fs, ["cat", "--", *files], BLACKHOLE_TIMEOUT,
                                          f"`cat` of {len(files)} files")
        except WorkloadError as exc:
            raise MetricsFailed(f"black-holed: {exc}", values,
                                [m for m in ("blackhole_ls", "blackhole_cat")
                                 if m not in values]) from None
        if out != expected:
            raise WrongBytes(f"{fs.name}: the warm tree read wrong bytes with S3 black-holed")
        values["blackhole_cat"] = elapsed
    return values


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


#: The flat manifests of the scale family, smallest first.
MANIFEST_SIZES = (datasets.BIG_MANIFEST, datasets.HUGE_MANIFEST, datasets.GIANT_MANIFEST)
#: Where an s3fuse daemon keeps its manifest indexes, below its --cache-dir.
MANIFEST_INDEX_DIR = "manifests"


def disk_usage(directory: Path) -> int:
    """Bytes the files directly in ``directory`` take on disk (allocated blocks)."""
    return sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file())


def register_manifest_find(name: str, manifest: ManifestRef, setup: SetupFunc, entries: str,
                           *, huge: bool = False, max_rss_mib: float | None = None) -> None:
    """Index, then ``find MP/NAME -type f | wc -l``, a manifest of ``spec.<entries>`` file
    entries: one size of the ``manifest`` scale family (the report shows the sizes side by
    side, with the cost per entry)."""

    @workload(
        name,
        f"A manifest of {{{entries}:,}} file entries: index, `find -type f`, memory, disk",
        [
            Metric(f"{name}_index", "index: first `ls` of the manifest's directory (empty "
                   "cache, fresh mount: reads and ingests the whole manifest)"),
            Metric(f"{name}_cold", "then `find | wc -l` (index built, nothing else cached)"),
            Metric(f"{name}_warm", "again (warm)"),
            Metric(f"{name}_rss", "daemon peak RSS (VmHWM) of that mount", "MiB",
                   max_value=max_rss_mib),
            Metric(f"{name}_disk", "index size on disk (database, WAL and all)", "MiB"),
        ],
        setups=(setup,),
        manifests=(manifest,),
        compare_filesystems=False,
        huge=huge,
        scale=Scale("manifest", entries, "entry"),
        notes=f"One manifest object of {{{entries}:,}} `file` lines as s3exchange writes "
              f"them (`data/d<dir>/f<n>.bin`, {datasets.MANIFEST_FILES_PER_DIR} per directory, "
              "size and etag filled in; the objects themselves do not exist), mounted with "
              "`--manifest NAME=s3://BUCKET/bench-manifests/NAME/manifest.jsonl` (NAME: "
              f"{', '.join(m.name for m in MANIFEST_SIZES)} from the smallest); s3fs and "
              "rclone cannot read manifests. Each size on a fresh mount with an empty cache; "
              "the index is timed apart from the `find` that walks it.",
    )
    def manifest_find(ctx: Context) -> dict[str, float]:
        top = ctx.in_manifest(manifest)
        want = getattr(ctx.spec, entries)
        ctx.fresh_mount()
        index, _ = timed(["ls", top], capture=True)
        cold, found = count_files(top)
        expect(found == want, f"cold find {top} counted {found} files, expected {want}")
        warm, found = count_files(top)
        expect(found == want, f"warm find {top} counted {found} files, expected {want}")
        return {f"{name}_index": index, f"{name}_cold": cold, f"{name}_warm": warm,
                f"{name}_rss": ctx.fs.daemon_peak_rss_kib() / 1024,
                f"{name}_disk": disk_usage(ctx.fs.cache_dir / MANIFEST_INDEX_DIR) / 2**20}


register_manifest_find("manifest_find", datasets.BIG_MANIFEST, datasets.big_manifest,
                       "manifest_entries")
register_manifest_find("manifest_find_1m", datasets.HUGE_MANIFEST, datasets.huge_manifest,
                       "huge_manifest_entries", huge=True, max_rss_mib=300)
register_manifest_find("manifest_find_10m", datasets.GIANT_MANIFEST, datasets.giant_manifest,
                       "giant_manifest_entries", huge=True, max_rss_mib=300)
