"""Scale section: one flat directory of 10,000, 100,000 and 1,000,000 keys.

Users keep a million objects under one prefix (camera dumps, sharded data sets, logs); a
filesystem whose listing, stats or memory grow worse than linearly with the directory is
unusable there. Each size is its own workload (``flat_dir_10k``, ``flat_dir_100k``,
``flat_dir_1m``; the two larger ones only with ``--huge`` or by name: at 100,000 keys a
round takes ~10 minutes, since s3fs and rclone send a request per key) with the same four
metrics, so the report can put the sizes side by side (``series``). A command still running after the
documented cap has the daemon stopped and counts as failed (a result, in the report).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from benchmarks import bulkput
from benchmarks.datasets import DataSpec, SetupEnv
from benchmarks.workloads import Context, Metric, MetricsFailed, WorkloadError, expect, \
    timed_or_abort, workload

log = logging.getLogger(__name__)

SERIES = "A flat directory of many keys"
PREFIX = "flat"
#: A command gets this many seconds per 100,000 keys (at least CAP_MIN) before the daemon
#: is stopped: 600 s at 1,000,000 keys (a HEAD per key at ~1,700/s).
CAP_PER_100K = 60.0
CAP_MIN = 60.0
NAMES = ("flat_dir_10k", "flat_dir_100k", "flat_dir_1m")


def directory(spec: DataSpec, size: int) -> str:
    """The prefix holding the ``spec.flat_dir_keys[size]`` keys (nothing else below it)."""
    return f"{PREFIX}/{spec.flat_dir_keys[size]}"


def flat_keys(spec: DataSpec, size: int) -> list[str]:
    """``flat/N/f0000000.dat``...: N keys, in name order."""
    count = spec.flat_dir_keys[size]
    return [f"{directory(spec, size)}/f{i:07d}.dat" for i in range(count)]


def cap(keys: int) -> float:
    """Seconds a command over ``keys`` entries may run before the daemon is stopped."""
    return max(CAP_MIN, CAP_PER_100K * keys / 100_000)


def seeder(size: int):
    """The data-set setup for one size: empty objects PUT by bulkput (once per run)."""

    def setup(env: SetupEnv) -> None:
        keys = flat_keys(env.spec, size)
        put = bulkput.put_empty(env.target, keys)
        expect(put == len(keys), f"seeded {put} of {len(keys)} keys")

    setup.__name__ = f"flat_dir_keys_{size}"
    return setup


class Steps:
    """The commands of one workload run: each capped, a failure recorded and the next
    still run (on a fresh mount when the daemon was stopped)."""

    def __init__(self, ctx: Context, keys: int) -> None:
        self.ctx, self.keys, self.cap = ctx, keys, cap(keys)
        self.values: dict[str, float] = {}
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.peak_kib = 0

    def run(self, metric: str, script: str, top: Path) -> str | None:
        """``bash -o pipefail -c SCRIPT bash TOP`` timed into ``metric``; its output, or
        None when it failed or passed the cap (the daemon then stopped)."""
        label = "`" + script.replace('"$1"', "DIR") + "`"
        try:
            elapsed, out = timed_or_abort(self.ctx.fs, ["bash", "-o", "pipefail", "-c", script,
                                                        "bash", top], self.cap, label)
        except WorkloadError as exc:
            self.fail(metric, str(exc))
            return None
        self.values[metric] = elapsed
        return out.decode(errors="replace")

    def fail(self, metric: str, message: str) -> None:
        self.failed.append(metric)
        self.errors.append(message)

    def sample_rss(self) -> None:
        """Fold the live daemon's VmHWM in (before its mount is replaced)."""
        self.peak_kib = max(self.peak_kib, self.ctx.fs.daemon_peak_rss_kib())

    def result(self, rss_metric: str) -> dict[str, float]:
        """The values; MetricsFailed naming the failed ones. Peak RSS only when no daemon
        was stopped (a stopped daemon's peak is unknown)."""
        if self.failed:
            raise MetricsFailed("; ".join(self.errors), self.values, [*self.failed, rss_metric])
        return {**self.values, rss_metric: self.peak_kib / 1024}


def flat_dir(ctx: Context, name: str, size: int) -> dict[str, float]:
    """Fresh mount: `ls | wc -l`, then `ls -l | tail`; fresh mount: `find | wc -l`."""
    keys = flat_keys(ctx.spec, size)
    top = ctx.at(directory(ctx.spec, size))
    steps = Steps(ctx, len(keys))
    ctx.fresh_mount()
    out = steps.run(f"{name}_ls", 'ls "$1" | wc -l', top)
    if out is not None:
        _check(steps, f"{name}_ls", int(out) == len(keys), f"`ls` counted {out.strip()} entries")
        out = steps.run(f"{name}_lsl", 'ls -l "$1" | tail -n 2', top)
        if out is not None:
            last = keys[-1].rsplit("/", 1)[1]
            _check(steps, f"{name}_lsl", out.rstrip().endswith(f" {last}"),
                   f"`ls -l` ended with {out.strip()[-200:]!r}")
    else:
        steps.fail(f"{name}_lsl", "not run: `ls` failed")
    steps.sample_rss()
    ctx.fresh_mount()
    out = steps.run(f"{name}_find", 'find "$1" -type f | wc -l', top)
    if out is not None:
        _check(steps, f"{name}_find", int(out) == len(keys),
               f"`find` counted {out.strip()} files")
    steps.sample_rss()
    return steps.result(f"{name}_rss")


def _check(steps: Steps, metric: str, ok: bool, message: str) -> None:
    """A wrong count is a failure of that metric, not a time."""
    if not ok:
        steps.values.pop(metric, None)
        steps.fail(metric, message)


def register(name: str, size: int, huge: bool) -> None:
    """One size of the series as a workload."""
    keys = f"{{flat_dir_keys[{size}]:,}}"

    @workload(
        name,
        f"A flat directory of {keys} keys",
        _metrics(name),
        setups=(seeder(size),),
        huge=huge,
        series=SERIES,
        size=f"{{flat_dir_keys[{size}]}}",
        notes=f"{keys} empty objects under one prefix (`{PREFIX}/N/f0000000.dat`...), PUT "
              "once per run by 128 parallel connections. Fresh mount (empty caches, page "
              "cache dropped): `ls DIR | wc -l`, then `ls -l DIR | tail -n 2` on the same "
              "mount (a stat of every entry, with the listing known); fresh mount again: "
              "`find DIR -type f | wc -l`. Counts are checked. Peak RSS is the larger "
              "VmHWM of the two daemons. s3fs HEADs every object while it lists (its `ls` "
              "pays for them), so its `ls -l` is answered from its stat cache; s3fuse and "
              "rclone HEAD at the first stat of an entry (`ls` and `find` send none): the sum "
              "of the first two rows compares the same work. A command gets "
              f"{CAP_PER_100K:.0f} s per 100,000 keys (at least {CAP_MIN:.0f} s); one still "
              "running then has its daemon stopped and counts as failed.",
    )
    def run(ctx: Context) -> dict[str, float]:
        return flat_dir(ctx, name, size)


def _metrics(name: str) -> list[Metric]:
    return [
        Metric(f"{name}_ls", "`ls | wc -l` (fresh mount)"),
        Metric(f"{name}_lsl", "then `ls -l | tail`"),
        Metric(f"{name}_find", "`find -type f | wc -l` (fresh mount)"),
        Metric(f"{name}_rss", "daemon peak RSS (VmHWM)", "MiB"),
    ]


def register_all(names: Sequence[str] = NAMES) -> None:
    for size, name in enumerate(names):
        register(name, size, huge=size > 0)


register_all()
