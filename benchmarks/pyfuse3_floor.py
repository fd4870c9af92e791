"""The floor of a pyfuse3 + trio file system: what FUSE requests cost with nothing behind them.

Why: s3fuse keeps its stack (pyfuse3 + trio), so part of each request's cost is the stack's
own. This mounts a file system that answers from a dict (one directory of N files of S
bytes each, readdir replies with zero timeouts so that every `stat` of `ls -l` is a
LOOKUP, as a cold s3fuse directory's are; opens keep the page cache, as s3fuse's of an
unchanged file do) and times what no Python file system on this machine can go under:

- `ls -l` of it: the per-lookup wall time and daemon CPU (quoted in docs/posix.md);
- `cat` of every file again, warm: the bytes come from the page cache, so what is left
  is the open, flush and release of each file (`make bench` measures it beside s3fuse's
  `small_files` warm row: benchmarks/limits.py FLOORS);
- `cp` of a big local file into it: a create, then a write request per 1 MiB (the
  kernel's largest, as s3fuse's), the bytes dropped (beside `write_large`'s close).

    python -m benchmarks.pyfuse3_floor [--files 1000] [--size 4096] [--rounds 5]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median_high
from typing import Any

DIR_INO = 2
#: The one file `cp` may create (in the directory): its bytes are counted, then dropped.
NEW_NAME = b"new"


def serve(mountpoint: str, files: int, size: int = 4096) -> None:
    """Run the dict-backed file system until unmounted (in its own process)."""
    import pyfuse3
    import trio

    names = {f"f{i:06d}".encode(): DIR_INO + 1 + i for i in range(files)}
    ordered = sorted(names.items())
    now = time.time_ns()
    body = b"x" * size  # benchmarks/datasets.py small_file_body
    new_ino = DIR_INO + 1 + files
    written = {"size": -1}  # NEW_NAME's size; -1: not created

    def attrs(ino: int, ttl: float) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.entry_timeout, a.attr_timeout = ino, ttl, ttl
        is_dir = ino in (pyfuse3.ROOT_INODE, DIR_INO)
        a.st_mode = (stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)
        a.st_nlink = 2 if is_dir else 1
        a.st_size = 0 if is_dir else written["size"] if ino == new_ino else size
        a.st_blksize = 1 << 20  # as s3fuse's files: cp writes 1 MiB at a time
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = now
        return a

    class Floor(pyfuse3.Operations):
        async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
            return attrs(inode, 60)

        async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
            if parent == pyfuse3.ROOT_INODE and name == b"d":
                return attrs(DIR_INO, 60)
            if parent == DIR_INO and name in names:
                return attrs(names[name], 60)
            if parent == DIR_INO and name == NEW_NAME and written["size"] >= 0:
                return attrs(new_ino, 60)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def create(self, parent: int, name: bytes, mode: int, flags: int,
                         ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
            if parent != DIR_INO or name != NEW_NAME:
                raise pyfuse3.FUSEError(errno.EACCES)
            written["size"] = 0
            return pyfuse3.FileInfo(fh=new_ino), attrs(new_ino, 60)

        async def write(self, fh: int, off: int, buf: bytes) -> int:
            written["size"] = max(written["size"], off + len(buf))
            return len(buf)

        async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any,
                          ctx: Any) -> pyfuse3.EntryAttributes:
            if inode == new_ino and fields.update_size:
                written["size"] = attr.st_size
            return attrs(inode, 60)

        async def unlink(self, parent: int, name: bytes, ctx: Any) -> None:
            if parent != DIR_INO or name != NEW_NAME or written["size"] < 0:
                raise pyfuse3.FUSEError(errno.ENOENT)
            written["size"] = -1

        async def opendir(self, inode: int, ctx: Any) -> int:
            return inode

        async def readdir(self, fh: int, start: int, token: Any) -> None:
            if fh == pyfuse3.ROOT_INODE:
                if start == 0:
                    pyfuse3.readdir_reply(token, b"d", attrs(DIR_INO, 0), 1)
                return
            for i in range(start, len(ordered)):  # zero timeouts: each stat is a LOOKUP
                if not pyfuse3.readdir_reply(token, ordered[i][0], attrs(ordered[i][1], 0), i + 1):
                    return

        async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
            raise pyfuse3.FUSEError(errno.ENOTSUP)

        async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh: int, off: int, length: int) -> bytes:
            return body[off:off + length]

        async def flush(self, fh: int) -> None:
            pass

        async def release(self, fh: int) -> None:
            pass

    options = set(pyfuse3.default_options) | {"fsname=pyfuse3-floor"}
    pyfuse3.init(Floor(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


def _cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far (schedstat: ns)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
            total += int(fh.read().split()[0])
    return total


@contextmanager
def _mounted(files: int, size: int) -> Iterator[tuple[Path, int]]:
    """The floor file system mounted on a scratch directory: (its directory of files, the
    daemon's pid); unmounted after."""
    with tempfile.TemporaryDirectory(prefix="pyfuse3-floor-") as tmp:
        mnt = Path(tmp)
        daemon = subprocess.Popen([sys.executable, "-m", "benchmarks.pyfuse3_floor", "--serve",
                                   str(mnt), "--files", str(files), "--size", str(size)])
        try:
            for _ in range(100):
                if os.path.ismount(mnt):
                    break
                time.sleep(0.05)
            yield mnt / "d", daemon.pid
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            daemon.wait(timeout=30)


def measure(files: int, rounds: int) -> dict[str, float]:
    """Median wall time and daemon CPU per lookup of `ls -l` over `rounds` cold rounds."""
    with _mounted(files, 4096) as (directory, pid):
        walls, cpus = [], []
        for _ in range(rounds):
            Path("/proc/sys/vm/drop_caches").write_text("2\n")  # forget the dentries
            cpu = _cpu_ns(pid)
            began = time.perf_counter()
            subprocess.run(["ls", "-l", str(directory)], check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - began)
            cpus.append((_cpu_ns(pid) - cpu) / 1e9)
    return {"files": files, "rounds": rounds, "ls_l_s": median_high(walls),
            "wall_us_per_lookup": median_high(walls) / files * 1e6,
            "cpu_us_per_lookup": median_high(cpus) / files * 1e6}


def warm_cat(files: int, size: int, rounds: int = 3) -> float:
    """Median seconds of `cat` of every file again, its bytes in the page cache, run as
    the `small_files` warm row runs it on s3fuse (benchmarks/workloads.py cat_dir: a shell
    glob, then one `cat`): a readdir, then each file's open, flush and release."""
    with _mounted(files, size) as (directory, _):
        read = subprocess.run(["cat", *sorted(str(p) for p in directory.iterdir())],
                              check=True, stdout=subprocess.PIPE).stdout  # into the page cache
        if read != b"x" * (files * size):
            raise RuntimeError(f"cat of the floor read {len(read)} bytes, not its {files} files")
        from benchmarks.workloads import cat_dir  # the measuring process only

        argv = cat_dir(directory)
        walls = []
        for _ in range(rounds):
            began = time.perf_counter()
            subprocess.run(argv, check=True)
            walls.append(time.perf_counter() - began)
    return median_high(walls)


def cp_write(source: Path, rounds: int = 3) -> float:
    """Median seconds of `cp SOURCE` to a new file of the floor file system (its bytes
    dropped; SOURCE in the page cache), as `write_large` copies into s3fuse."""
    source.read_bytes()  # into the page cache
    with _mounted(0, 0) as (directory, _):
        walls = []
        for _ in range(rounds):
            target = directory / NEW_NAME.decode()
            target.unlink(missing_ok=True)
            began = time.perf_counter()
            subprocess.run(["cp", str(source), str(target)], check=True)
            walls.append(time.perf_counter() - began)
            if target.stat().st_size != source.stat().st_size:
                raise RuntimeError(f"cp into the floor wrote {target.stat().st_size} bytes")
    return median_high(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="also time `cp FILE` into it (bytes dropped)")
    parser.add_argument("--serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.files, args.size)
    else:
        found = {**measure(args.files, args.rounds),
                 "warm_cat_s": warm_cat(args.files, args.size, args.rounds)}
        if args.write:
            found["cp_write_s"] = cp_write(args.write, args.rounds)
        print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
