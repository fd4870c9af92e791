"""What each kind of thing costs the s3fuse daemon in resident memory (docs/memory.md).

Mounts s3fuse on a SeaweedFS of its own (or on the one `benchmarks/ab.py serve` runs:
``--target W/target.json``), makes N things of one kind exist in the daemon, reads its
VmRSS before and after, at several N. The cost per thing is the marginal one, the
growth between two sizes divided by the things added: the first things of a kind also
pay one-off costs (worker threads started, code paths imported, SQLite caches filled).
Each measurement is on a fresh mount with an empty cache, of this checkout's s3fuse
(``python -m s3fuse`` with it first on PYTHONPATH). Kinds:

- baseline: the daemon just mounted, idle (imports, botocore clients, caches opened);
- directory entry listed: ``ls`` of a directory of N keys (its listing fetched, stored
  and read back; the kernel gets names, not inodes: fs/dirent.py);
- inode looked up: then ``ls -l`` (a lookup and getattr per entry: what the kernel
  holds on to until it forgets);
- open file: N small files held open by this process;
- manifest entry: ``find`` over a manifest of N file entries (indexed on disk).

    python benchmarks/memory.py --sizes 1000,4000,10000 [--target W/target.json]

Prints a markdown table: the daemon's growth at each N (MiB) and the marginal bytes per
thing between consecutive sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and `tests` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import datasets  # noqa: E402
from benchmarks.datasets import ManifestRef, SetupEnv  # noqa: E402
from benchmarks.filesystems import S3FuseTree  # noqa: E402
from benchmarks.s3 import S3Target, bench_server  # noqa: E402

BUCKET = "bench"
PREFIX = "memory"
SETTLE = 1.0  # seconds after a step before VmRSS is read (background work finishing)


def status_kib(pid: int, field: str) -> int:
    """A /proc/PID/status field in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def directory(n: int) -> str:
    return f"{PREFIX}/dir{n}"


def manifest(n: int) -> ManifestRef:
    return ManifestRef(f"m{n}", f"{PREFIX}/manifest{n}/manifest.jsonl")


def make_data(target: S3Target, sizes: list[int], data_dir: Path) -> None:
    """A directory of n one-byte keys and a manifest of n entries for every size n."""
    env = SetupEnv(target, datasets.FULL, data_dir)
    for n in sizes:
        datasets.put_many(target, ((f"{directory(n)}/f{i:07d}", b"x") for i in range(n)))
        datasets.write_flat_manifest(env, manifest(n), n)


class Daemon:
    """One fresh s3fuse mount (empty cache) and its VmRSS."""

    def __init__(self, target: S3Target, root: Path, manifests: list[ManifestRef]):
        self.fs = S3FuseTree("s3fuse", ROOT, target, root, manifests)

    def __enter__(self) -> "Daemon":
        self.fs.wipe_cache()
        self.fs.mount()
        time.sleep(SETTLE)
        return self

    def __exit__(self, *exc: object) -> None:
        self.fs.unmount()

    def rss(self) -> int:
        """VmRSS in bytes, once the daemon has settled."""
        time.sleep(SETTLE)
        assert self.fs.pid is not None
        return status_kib(self.fs.pid, "VmRSS") * 1024


def run(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)


def measure(target: S3Target, work: Path, sizes: list[int]) -> dict[str, dict[int, float]]:
    """kind -> size -> bytes the daemon grew by for that many things (the baseline: its
    whole VmRSS)."""
    costs: dict[str, dict[int, float]] = {k: {} for k in
                                          ("baseline", "listed", "inode", "open", "manifest")}
    manifests = [manifest(n) for n in sizes]
    for n in sizes:
        with Daemon(target, work / "fs", manifests) as d:
            base = d.rss()
            costs["baseline"][n] = base
            where = d.fs.data_root / directory(n)
            run(f"ls {where} | wc -l")
            listed = d.rss()
            costs["listed"][n] = listed - base
            run(f"ls -l {where} | wc -l")
            costs["inode"][n] = d.rss() - listed
        with Daemon(target, work / "fs", manifests) as d:
            where = d.fs.data_root / directory(n)
            names = sorted(os.listdir(where))
            before = d.rss()
            with ExitStack() as files:
                for name in names:
                    files.enter_context(open(where / name, "rb"))
                costs["open"][n] = d.rss() - before
        with Daemon(target, work / "fs", manifests) as d:
            before = d.rss()
            run(f"find {d.fs.manifest_root(manifest(n))} -type f | wc -l")
            costs["manifest"][n] = d.rss() - before
    return costs


TITLES = {
    "baseline": "baseline: mounted, idle (VmRSS)",
    "listed": "per directory entry listed (`ls` of N keys)",
    "inode": "per inode looked up (`ls -l` after `ls`)",
    "open": "per open file (N files held open)",
    "manifest": "per manifest entry (`find` over N entries)",
}


def table(costs: dict[str, dict[int, float]], sizes: list[int]) -> str:
    steps = list(zip(sizes, sizes[1:]))
    lines = ["| kind | " + " | ".join(f"N = {n:,}" for n in sizes) + " | "
             + " | ".join(f"per thing, {a:,} -> {b:,}" for a, b in steps) + " |",
             "| --- |" + " --- |" * (len(sizes) + len(steps))]
    for kind, title in TITLES.items():
        grown = costs[kind]
        cells = [f"{grown[n] / 2**20:.1f} MiB" for n in sizes]
        if kind == "baseline":
            cells += ["—"] * len(steps)
        else:
            cells += [f"{(grown[b] - grown[a]) / (b - a):,.0f} B" for a, b in steps]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextmanager
def bucket(args: argparse.Namespace, work: Path) -> Iterator[S3Target]:
    """The target to measure against: ab.py serve's, or a SeaweedFS of our own."""
    if args.target:
        info = json.loads(args.target.read_text())
        info.pop("quick", None)
        yield S3Target(**info)
        return
    with bench_server(work / "seaweedfs") as sw:
        target = S3Target(sw.endpoint_url, BUCKET, sw.access_key, sw.secret_key)
        target.client().create_bucket(Bucket=BUCKET)
        yield target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000,10000",
                        help="comma-separated N (default 1000,4000,10000)")
    parser.add_argument("--target", type=Path, help="target.json of a running ab.py serve")
    parser.add_argument("--workdir", type=Path, help="scratch dir (default: a new temp dir)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (work / "data").mkdir(parents=True, exist_ok=True)
        target = stack.enter_context(bucket(args, work))
        started = time.monotonic()
        make_data(target, sizes, work / "data")
        print(f"data: {time.monotonic() - started:.0f} s", file=sys.stderr)
        print(table(measure(target, work, sizes), sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
