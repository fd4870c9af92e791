"""Workload registry. A workload is a function ``(Context) -> {metric: value}``.

Register new ones with ``@workload(...)``; declare the data sets they need as
``setups`` (each runs once per benchmark, shared between workloads). Raise
``NotApplicable`` from a workload that makes no sense for ``ctx.fs``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import datasets
from benchmarks.datasets import DataSpec, SetupEnv
from benchmarks.filesystems import FileSystem

COMMAND_TIMEOUT = 900.0


class NotApplicable(Exception):
    """The workload does not apply to this filesystem."""


class WorkloadError(RuntimeError):
    """A timed command failed or produced a wrong result."""


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str = "s"


@dataclass
class Context:
    """What a workload sees: the filesystem under test and the data-set sizes."""

    fs: FileSystem
    spec: DataSpec
    data_dir: Path

    def at(self, relative: str) -> Path:
        return self.fs.data_root / relative

    def fresh_mount(self) -> None:
        """Cold start: unmount, wipe the FS cache, mount, drop the page cache."""
        self.fs.unmount()
        self.fs.wipe_cache()
        self.fs.mount()
        drop_page_cache()


WorkloadFunc = Callable[[Context], dict[str, float]]
SetupFunc = Callable[[SetupEnv], None]


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    func: WorkloadFunc
    metrics: tuple[Metric, ...]
    setups: tuple[SetupFunc, ...] = field(default=())


WORKLOADS: dict[str, Workload] = {}


def workload(name: str, title: str, metrics: list[Metric], setups: tuple[SetupFunc, ...] = ()):
    """Decorator adding a workload to ``WORKLOADS`` (run in registration order)."""

    def register(func: WorkloadFunc) -> WorkloadFunc:
        WORKLOADS[name] = Workload(name, title, func, tuple(metrics), setups)
        return func

    return register


# -- helpers -------------------------------------------------------------------


def drop_page_cache() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` (needs root)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(args: Sequence[str | Path], capture: bool = False) -> tuple[float, str]:
    """Run a plain shell tool; return (wall seconds, stdout if captured)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(a) for a in args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise WorkloadError(f"{' '.join(map(str, args))} failed ({proc.returncode}): "
                            f"{proc.stderr.strip()[-500:]}")
    return elapsed, proc.stdout or ""


def cat_dir(directory: Path) -> list[str]:
    """argv that cats every file of ``directory`` to /dev/null (glob in the shell)."""
    return ["sh", "-c", 'cat -- "$1"/* > /dev/null', "sh", str(directory)]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise WorkloadError(message)


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
