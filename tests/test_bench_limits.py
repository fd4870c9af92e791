"""The benchmark's limit column: how limits are measured (ranged GETs against a real S3
server), kept in results.json and shown beside the filesystems in docs/benchmarks.md."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import limits, report
from benchmarks.datasets import QUICK, SetupEnv
from benchmarks.s3 import S3Target
from benchmarks.workloads import WrongBytes
from benchmarks.run import merge_results

SEQ = {"name": "seq_read", "title": "Sequential read", "notes": "", "metrics": [
    {"key": "read_cold", "title": "cold", "unit": "s", "compare": True},
    {"key": "read_hot", "title": "hot", "unit": "s", "compare": True}]}
LS = {"name": "ls_dir", "title": "ls -l", "notes": "", "metrics": [
    {"key": "ls_cold", "title": "cold ls", "unit": "s", "compare": True}]}


def results(**extra: Any) -> dict[str, Any]:
    meta = {"date": "d", "rounds": 2, "quick": True, "seaweedfs": "w", "s3exchange": "1",
            "spec": {**QUICK.__dict__, "tree_keys": QUICK.tree_keys},
            "machine": {"nproc": 2, "cpu": "c", "mem_gib": 1, "kernel": "k", "python": "3"}}
    return {
        "meta": meta,
        "filesystems": {fs: {"version": "v", "status": "ok", "command": [fs], "why": f"{fs} why"}
                        for fs in ("s3fuse", "s3fs", "rclone")},
        "workloads": [SEQ, LS],
        "samples": {"s3fuse": {"read_cold": [1.0, 1.2], "read_hot": [0.05], "ls_cold": [1.0]},
                    "s3fs": {"read_cold": [0.8], "read_hot": [0.1], "ls_cold": [2.0]},
                    "rclone": {"read_cold": [0.9], "read_hot": [0.2], "ls_cold": [3.0]}},
        "errors": [],
        **extra,
    }


def test_ranges_cover_the_object_in_parts() -> None:
    assert limits.ranges(10, 4) == [(0, 3), (4, 7), (8, 9)]
    assert limits.ranges(8, 4) == [(0, 3), (4, 7)]
    assert limits.ranges(0, 4) == []


def test_the_cold_limit_uses_s3fuses_read_ahead_window() -> None:
    from s3fuse.data.reader import BLOCK_SIZE, READAHEAD_BLOCKS

    assert (limits.CONNECTIONS, limits.PART_SIZE) == (READAHEAD_BLOCKS + 1, BLOCK_SIZE)
    assert f"{limits.CONNECTIONS} parallel ranged GETs" in limits.LIMITS["read_cold"].title


@pytest.fixture
def env(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SetupEnv:
    """A bucket on moto with one object; dropping the page cache is a no-op here."""
    monkeypatch.setattr(limits, "drop_page_cache", lambda: None)
    target = S3Target(moto_endpoint, "limits", "testing", "testing")
    target.client().create_bucket(Bucket="limits")
    target.client().put_object(Bucket="limits", Key="obj", Body=b"z" * 10_000)
    return SetupEnv(target, QUICK, tmp_path)


def test_parallel_get_reads_the_whole_object(env: SetupEnv) -> None:
    assert limits.parallel_get(env, "obj", connections=3, part=1024) > 0


def test_parallel_get_counts_the_bytes(env: SetupEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "ranges", lambda size, part: [(0, part - 1)])
    with pytest.raises(WrongBytes, match="read 1024 bytes, expected 10000"):
        limits.parallel_get(env, "obj", connections=3, part=1024)


def test_measure_records_only_the_limits_of_the_metrics_run(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setitem(limits.LIMITS, "read_hot",
                        limits.Limit("read_hot", "local cat", lambda env: 0.25))
    monkeypatch.setattr(limits, "FLOORS", {})
    found: dict[str, dict] = {}
    env = SetupEnv(S3Target("http://x", "b", "k", "s"), QUICK, tmp_path)
    assert limits.measure(env, {"read_hot", "ls_cold"}, found, {}) == {"read_hot": 0.25}
    limits.measure(env, {"read_hot"}, found, {})
    assert found == {"read_hot": {"title": "local cat", "samples": [0.25, 0.25]}}


def test_limit_cells_show_the_limit_and_s3fuse_over_it() -> None:
    meds = {"s3fuse": {"read_cold": 1.5}}
    metric = {"key": "read_cold", "unit": "s"}
    assert report.limit_cells(metric, meds, {"read_cold": 0.5}) == ["0.500 s", "**3.00**"]
    assert report.limit_cells(metric, meds, {}) == ["—", "—"]
    assert report.limit_cells(metric, {}, {"read_cold": 0.5}) == ["0.500 s", "—"]


def test_tables_with_a_limit_get_the_two_columns_and_a_note() -> None:
    lims = {"read_cold": {"title": "5 parallel ranged GETs", "samples": [0.4, 0.6]}}
    text = report.markdown(results(limits=lims), "x.png")
    seq = text.split("## Sequential read")[1].split("## ")[0]
    assert "| s3fuse / best other | limit | s3fuse / limit |" in seq
    assert "| cold | 1.100 s | 0.800 s | 0.900 s | **1.38** (vs s3fs) | 0.500 s | **2.20** |" in seq
    assert "| hot | 50.0 ms | 0.100 s | 0.200 s | **0.50** (vs s3fs) | — | — |" in seq
    assert "- Limit of *cold*: 5 parallel ranged GETs (2 samples)" in seq
    ls = text.split("## ls -l")[1].split("## ")[0]
    assert "limit" not in ls
    assert "**Limit** = the same bytes read without a FUSE layer" in text


def test_the_report_says_why_each_filesystem_runs_as_it_does() -> None:
    text = report.markdown(results(), "x.png")
    assert "- **s3fs**: s3fs why" in text and "- **rclone**: rclone why" in text
    assert "**Limit**" not in text  # no limits measured: no column, no bullet


def test_an_old_results_file_keeps_its_hot_read_baseline_as_a_limit() -> None:
    old = results(baseline={"local_hot_read": [0.02, 0.03]})
    assert report.limit_medians(old) == {"read_hot": 0.025}
    assert "| hot | 50.0 ms | 0.100 s | 0.200 s | **0.50** (vs s3fs) | 25.0 ms | **2.00** |" \
        in report.markdown(old, "x.png")


def test_merging_keeps_the_limits_not_measured_again() -> None:
    previous = results(limits={"read_cold": {"title": "GETs", "samples": [1.0]},
                               "read_hot": {"title": "cat", "samples": [0.1]}})
    new = results(limits={"read_hot": {"title": "cat", "samples": [0.2]}})
    new["workloads"] = [SEQ]
    merged = merge_results(previous, new)
    assert merged["limits"] == {"read_cold": {"title": "GETs", "samples": [1.0]},
                                "read_hot": {"title": "cat", "samples": [0.2]}}


def test_the_report_says_how_big_the_servers_volumes_were() -> None:
    """Writes stall while SeaweedFS grows volumes (benchmarks/s3.py): the size is part of
    the setup; a results file from before it was recorded ran on 64 MiB volumes."""
    assert "SeaweedFS S3 server (w, volumes of 64 MiB)" in report.markdown(results(), "x.png")
    previous, new = results(limits={}), results(limits={})
    new["meta"]["volume_mib"] = 1024
    merged = merge_results(previous, new)
    assert "volumes of 1024 MiB" in report.markdown(merged, "x.png")


def test_a_speedup_below_one_reads_as_slower() -> None:
    """A baseline faster than s3fuse is "1.72x slower", never "0.58x faster"."""
    assert report._speedup(2.9, "s") == "**2.90x** faster"
    assert report._speedup(0.58, "s") == "**1.72x** slower"
    assert report._speedup(0.5, "MiB") == "**2.00x** more"
    assert report._speedup(None, "s") == "—"


def test_a_floor_is_measured_beside_the_limits_and_shown_under_its_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A metric bound by FUSE requests (the warm `cat` of small files) gets the same tool's
    time on a pyfuse3 + trio file system answering from a dict: its floor."""
    monkeypatch.setattr(limits, "LIMITS", {})
    monkeypatch.setattr(limits, "FLOORS", {"read_hot": limits.Limit("read_hot", "dict fs",
                                                                     lambda env: 0.04)})
    env = SetupEnv(S3Target("http://x", "b", "k", "s"), QUICK, tmp_path)
    found_limits: dict[str, dict] = {}
    floors: dict[str, dict] = {}
    assert limits.measure(env, {"read_hot"}, found_limits, floors) == {"floor:read_hot": 0.04}
    assert found_limits == {} and floors == {"read_hot": {"title": "dict fs", "samples": [0.04]}}
    text = report.markdown(results(floors=floors), "x.png")
    seq = text.split("## Sequential read")[1].split("## ")[0]
    assert "- Floor of *hot*: 40.0 ms; **s3fuse / floor: 1.25**: dict fs (1 samples)" in seq
    assert "**Floor** (under some tables)" in text
    assert "**Floor**" not in report.markdown(results(), "x.png")


def test_merging_keeps_the_floors_not_measured_again() -> None:
    previous = results(floors={"read_hot": {"title": "dict fs", "samples": [0.04]}})
    new = results(floors={}, limits={})
    new["workloads"] = [LS]
    assert merge_results(previous, new)["floors"] == previous["floors"]
    assert merge_results(results(), new)["floors"] == {}  # a results.json from before floors


def test_the_write_limit_uploads_the_file_as_s3fuse_does_and_removes_it(
        env: SetupEnv, tmp_path: Path) -> None:
    """One multipart upload of s3fuse's part size, parts in parallel; the object checked
    and deleted (the bench bucket keeps only its data sets)."""
    source = tmp_path / "big.bin"
    source.write_bytes(b"w" * (5 << 20) + b"tail")  # two parts of 5 MiB (S3's least)
    assert limits.multipart_put(env, source, parallel=2, part=5 << 20) > 0
    listed = env.target.client().list_objects_v2(Bucket="limits", Prefix="limit-upload/")
    assert listed.get("KeyCount", 0) == 0


def test_the_heads_limit_asks_curl_for_every_key_and_checks_the_answers(env: SetupEnv) -> None:
    """curl signs its HEADs (SigV4) and runs them in parallel; a key not answered 200 is
    an error, not a time."""
    assert limits.curl_heads(env, ["obj"] * 5, parallel=2) > 0
    with pytest.raises(WrongBytes, match=r"codes \['200', '404'\]"):
        limits.curl_heads(env, ["obj", "missing"])


def test_the_new_limits_and_floor_bound_the_metrics_they_name() -> None:
    assert {"flat_dir_10k_lsl", "flat_dir_100k_lsl"} <= set(limits.LIMITS)
    assert "flat_dir_1m_lsl" not in limits.LIMITS  # a million HEADs a round: minutes
    assert "write_durable" in limits.LIMITS and "write_close" in limits.FLOORS
