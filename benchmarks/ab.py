"""Interleaved A/B timing of s3fuse source trees (and s3fs/rclone) on one SeaweedFS.

For tuning: the full suite rebuilds its data sets on every run; this keeps one SeaweedFS
with the data sets running (``serve``) and times workloads against it (``run``), the
variants alternating round by round, so noise on a busy machine hits all of them alike.

    python benchmarks/ab.py serve --workdir W [--quick] [--workloads W1,W2] &   # until killed
    python benchmarks/ab.py run --workdir W --variants base=/tmp/base,new=.,s3fs \\
        --workloads seq_read,ls_dir --rounds 5

A variant ``NAME=DIR`` runs ``python -m s3fuse`` with ``DIR`` first on PYTHONPATH (a
checkout or an exported tree); ``s3fs`` and ``rclone`` are the other filesystems.
Needs root (drops the page cache).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import datasets, posix_workloads, scale_dir, training, write_workloads  # noqa: E402
from benchmarks.filesystems import FILESYSTEMS, S3FuseTree  # noqa: E402
from benchmarks.s3 import S3Target, bench_server  # noqa: E402
from benchmarks.workloads import WORKLOADS, Context, NotApplicable  # noqa: E402

BUCKET = "bench"
REGISTERING = (posix_workloads, scale_dir, training, write_workloads)  # their workloads and data sets


def serve(args: argparse.Namespace) -> int:
    spec = datasets.QUICK if args.quick else datasets.FULL
    shutil.rmtree(args.workdir / "seaweedfs", ignore_errors=True)  # a new server, empty
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "data").mkdir(exist_ok=True)
    with bench_server(args.workdir / "seaweedfs") as sw:
        target = S3Target(sw.endpoint_url, BUCKET, sw.access_key, sw.secret_key)
        target.client().create_bucket(Bucket=BUCKET)
        env = datasets.SetupEnv(target, spec, args.workdir / "data")
        setups = (datasets.big_object, datasets.small_files, datasets.tree,
                  datasets.shard_archive, write_workloads.write_sources_large,
                  write_workloads.write_sources_small, posix_workloads.posix_tree_source,
                  posix_workloads.posix_meta_objects)
        if args.workloads:  # the data sets of these workloads only
            setups = tuple(dict.fromkeys(s for n in args.workloads.split(",")
                                         for s in WORKLOADS[n].setups))
        for setup in setups:
            started = time.monotonic()
            setup(env)
            print(f"data set {setup.__name__}: {time.monotonic() - started:.1f}s", flush=True)
        (args.workdir / "target.json").write_text(json.dumps(
            {**target.__dict__, "quick": args.quick}))
        print(f"serving {sw.endpoint_url}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(3600)
        finally:
            (args.workdir / "target.json").unlink(missing_ok=True)
    return 0


def run(args: argparse.Namespace) -> int:
    info = json.loads((args.workdir / "target.json").read_text())
    quick = info.pop("quick")
    spec = datasets.QUICK if quick else datasets.FULL
    target = S3Target(**info)
    workloads = [WORKLOADS[n] for n in args.workloads.split(",")]
    manifests = list(dict.fromkeys([datasets.SHARD_MANIFEST,
                                    *(m for w in workloads for m in w.manifests)]))
    fss = []
    for item in args.variants.split(","):
        name, _, src = item.partition("=")
        root = args.workdir / "fs" / name
        if src:
            fss.append(S3FuseTree(name, Path(src).resolve(), target, root, manifests))
        else:
            fss.append(FILESYSTEMS[name](target, root, manifests))
    samples: dict[str, dict[str, list[float]]] = {fs.name: {} for fs in fss}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for round_no in range(args.rounds):
            shift = round_no % len(fss)
            for fs in fss[shift:] + fss[:shift]:
                ctx = Context(fs, spec, args.workdir / "data")
                try:
                    for w in workloads:
                        try:
                            values = w.func(ctx)
                        except NotApplicable:
                            continue
                        for key, value in values.items():
                            samples[fs.name].setdefault(key, []).append(value)
                        print(f"  r{round_no + 1} [{fs.name}] {w.name}: "
                              + ", ".join(f"{k}={v:.3f}" for k, v in values.items()), flush=True)
                finally:
                    fs.unmount()
    finally:
        for fs in fss:
            fs.unmount()
    keys = list(dict.fromkeys(k for per in samples.values() for k in per))
    first = fss[0].name
    print(f"\nmedians over {args.rounds} rounds (ratio to {first}):")
    for key in keys:
        base = statistics.median(samples[first].get(key) or [float("nan")])
        cells = []
        for fs in fss:
            values = samples[fs.name].get(key)
            if values:
                med = statistics.median(values)
                ratio = f"{med / base:.2f}" if base else "-"
                cells.append(f"{fs.name} {med:.3f} ({ratio})")
        print(f"  {key:24s} " + "  ".join(cells))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workloads", help="build only these workloads' data sets")
    p = sub.add_parser("run")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--variants", required=True)
    p.add_argument("--workloads", default="seq_read,ls_dir,small_files,find_tree")
    p.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    return serve(args) if args.cmd == "serve" else run(args)


if __name__ == "__main__":
    sys.exit(main())
