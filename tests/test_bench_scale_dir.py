"""The flat-directory scale section (benchmarks/scale_dir.py): its keys are seeded by real,
signed S3 PUTs (benchmarks/bulkput.py, checked by SeaweedFS), its counts are checked, and
a command past the cap has the daemon stopped and counts as failed while the other
commands are still measured; the report puts the sizes side by side."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from benchmarks import bulkput, report, scale_dir, workloads
from benchmarks.datasets import DataSpec, SetupEnv
from benchmarks.s3 import S3Target
from benchmarks.workloads import WORKLOADS, Context, MetricsFailed
from tests.conftest import Backend

SPEC = DataSpec(flat_dir_keys=(20, 30, 40))


@pytest.mark.seaweedfs
def test_bulk_puts_are_signed_s3_puts_of_empty_objects(seaweedfs_backend: Backend) -> None:
    b = seaweedfs_backend
    b.client.create_bucket(Bucket="bulk")
    target = S3Target(b.endpoint, "bulk", b.access_key, b.secret_key)
    keys = [f"d/k{i:04d} é+%" for i in range(300)]
    assert bulkput.put_empty(target, keys, connections=16) == 300
    listed = [o["Key"] for page in b.client.get_paginator("list_objects_v2").paginate(
        Bucket="bulk", Prefix="d/") for o in page["Contents"]]
    assert listed == keys
    assert b.client.head_object(Bucket="bulk", Key=keys[7])["ContentLength"] == 0
    wrong = S3Target(b.endpoint, "bulk", b.access_key, "not-the-secret")
    with pytest.raises(bulkput.BulkPutError, match="403"):
        bulkput.put_empty(wrong, ["d/refused"], connections=1)


@pytest.mark.seaweedfs
def test_the_seeder_puts_one_size_under_its_own_prefix(seaweedfs_backend: Backend,
                                                       tmp_path: Path) -> None:
    b = seaweedfs_backend
    b.client.create_bucket(Bucket="seed")
    scale_dir.seeder(1)(SetupEnv(S3Target(b.endpoint, "seed", b.access_key, b.secret_key),
                                 SPEC, tmp_path))
    page = b.client.list_objects_v2(Bucket="seed", Prefix="flat/30/")
    assert page["KeyCount"] == 30 and page["Contents"][0]["Key"] == "flat/30/f0000000.dat"


class LocalDir:
    """A stand-in for a mounted filesystem: the keys as local files; killing the
    "daemon" ends the hung commands (as a dead FUSE daemon fails their requests)."""

    def __init__(self, root: Path, hung: Path) -> None:
        self.data_root, self.hung, self.mounts, self.kills = root, hung, 0, 0

    def unmount(self) -> None: ...

    def wipe_cache(self) -> None: ...

    def mount(self) -> None:
        self.mounts += 1

    def kill_daemon(self) -> None:
        self.kills += 1
        for pid in self.hung.read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        self.hung.write_text("")

    def daemon_peak_rss_kib(self) -> int:
        return 3 << 10


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalDir:
    """The 30 keys of size 1 as local files; no page cache dropped."""
    monkeypatch.setattr(workloads, "drop_page_cache", lambda: None)
    root, hung = tmp_path / "root", tmp_path / "hung"
    hung.write_text("")
    for key in scale_dir.flat_keys(SPEC, 1):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).touch()
    return LocalDir(root, hung)


def run(local: LocalDir) -> dict[str, float]:
    return scale_dir.flat_dir(Context(local, SPEC, local.data_root), "flat_dir_100k", 1)  # type: ignore[arg-type]


def test_every_command_timed_and_counted(local: LocalDir) -> None:
    values = run(local)
    assert set(values) == {f"flat_dir_100k_{m}" for m in ("ls", "lsl", "find", "rss")}
    assert values["flat_dir_100k_rss"] == 3.0
    assert local.mounts == 2 and local.kills == 0


def test_a_missing_key_fails_the_counts(local: LocalDir) -> None:
    (local.data_root / scale_dir.flat_keys(SPEC, 1)[-1]).unlink()
    with pytest.raises(MetricsFailed) as failed:
        run(local)
    assert set(failed.value.failed) == {f"flat_dir_100k_{m}" for m in ("ls", "lsl", "find",
                                                                       "rss")}
    assert "counted 29" in str(failed.value)


def test_a_command_past_the_cap_stops_the_daemon_and_the_others_still_count(
        local: LocalDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`find` hangs (a stand-in on PATH that records its pid and sleeps): stopped at the
    cap, it fails with the RSS (that daemon's peak is unknown); ls and ls -l count."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "find"
    fake.write_text(f"#!/bin/sh\necho $$ >> {local.hung}\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(scale_dir, "cap", lambda keys: 1.0)
    with pytest.raises(MetricsFailed) as failed:
        run(local)
    assert failed.value.failed == ("flat_dir_100k_find", "flat_dir_100k_rss")
    assert set(failed.value.values) == {"flat_dir_100k_ls", "flat_dir_100k_lsl"}
    assert "`find DIR -type f | wc -l` timed out after 1 s" in str(failed.value)
    assert local.kills == 1


def test_the_cap_grows_with_the_directory() -> None:
    assert scale_dir.cap(10_000) == scale_dir.CAP_MIN
    assert scale_dir.cap(1_000_000) == 10 * scale_dir.CAP_PER_100K


def test_only_the_smallest_size_runs_without_huge() -> None:
    assert [WORKLOADS[n].huge for n in scale_dir.NAMES] == [False, True, True]
    assert {WORKLOADS[n].series for n in scale_dir.NAMES} == {scale_dir.SERIES}


def test_the_report_shows_every_size_and_the_growth() -> None:
    described = [WORKLOADS[n].describe() for n in scale_dir.NAMES]
    samples = {"s3fuse": {}, "s3fs": {}}
    for n, scale in zip(scale_dir.NAMES, (1, 10, 100)):
        samples["s3fuse"].update({f"{n}_ls": [scale * 0.01], f"{n}_lsl": [scale * 0.1],
                                  f"{n}_find": [scale * 0.02], f"{n}_rss": [50.0 + scale]})
    samples["s3fs"] = {"flat_dir_10k_ls": [0.5]}
    results = {"meta": {"date": "d", "rounds": 1, "quick": False, "seaweedfs": "w",
                        "s3exchange": "1", "spec": {**SPEC.__dict__, "tree_keys": 1},
                        "machine": {"nproc": 2, "cpu": "c", "mem_gib": 1, "kernel": "k",
                                    "python": "3"}},
               "filesystems": {fs: {"version": "v", "status": "ok", "command": [fs]}
                               for fs in samples},
               "workloads": described, "samples": samples,
               "errors": [{"round": 0, "fs": "s3fs", "workload": "flat_dir_1m",
                           "error": "`ls DIR | wc -l` timed out after 300 s",
                           "metrics": ["flat_dir_1m_ls"]}]}
    text = report.markdown(results, "x.png")
    assert "## A flat directory of 40 keys" in text
    growth = text.split("### A flat directory of many keys: growth with size")[1]
    assert "| measurement | filesystem | 20 | 30 | 40 | growth (1 = linear) |" in growth
    # 100x the time for 2x the keys: log(100)/log(2)
    assert "| `ls \\| wc -l` (fresh mount) | s3fuse | 10.0 ms | 0.100 s | 1.000 s | 6.64 |" \
        in growth
    assert "| `ls \\| wc -l` (fresh mount) | s3fs | 0.500 s | — | **failed** | — |" in growth
    assert "s3fs failed in round 1: `ls DIR \\| wc -l` timed out after 300 s" in text


def test_no_growth_table_for_one_size() -> None:
    results = {"meta": {"spec": {**SPEC.__dict__}}, "workloads": [
        WORKLOADS[scale_dir.NAMES[0]].describe()]}
    assert report._growth(results["workloads"][0], results, ["s3fuse"], {}, {}) == []
