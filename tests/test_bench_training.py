"""The training-style bench at a tiny size: shards written by s3exchange, members read by
processes through a real s3fuse mount and straight from S3, bytes checked both ways."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import training, training_readers, workloads
from benchmarks.datasets import QUICK, SetupEnv
from benchmarks.filesystems import S3FuseTree
from benchmarks.s3 import S3Target
from benchmarks.workloads import Context, WrongBytes

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "training"


@pytest.fixture
def env(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SetupEnv:
    """Two sizes of 1 and 2 shards of 4 members each; dropping the page cache is a no-op."""
    monkeypatch.setattr(training, "SHARD_COUNTS", (1, 2))
    monkeypatch.setattr(training, "PROCESSES", 3)
    monkeypatch.setattr(training, "members_per_shard", lambda spec: 4)
    monkeypatch.setattr(training, "drop_page_cache", lambda: None)
    monkeypatch.setattr(workloads, "drop_page_cache", lambda: None)
    target = S3Target(moto_endpoint, BUCKET, "testing", "testing")
    target.client().create_bucket(Bucket=BUCKET)
    (tmp_path / "data").mkdir()
    setup = SetupEnv(target, QUICK, tmp_path / "data")
    training.training_shards(setup)
    return setup


def test_picks_are_half_of_each_shard_shuffled_and_the_same_every_time(env: SetupEnv) -> None:
    index = training.load_index(env.data_dir)
    for fmt in training.FORMATS:
        chosen = training.picks(index, fmt, 2)
        assert chosen == training.picks(index, fmt, 2)
        assert sorted(p.shard for p in chosen) == [0, 0, 1, 1]
        assert len({p.path for p in chosen}) == 4


def test_direct_reads_fetch_the_members_bytes(env: SetupEnv) -> None:
    index = training.load_index(env.data_dir)
    s3 = training.s3_settings(env.target)
    with training_readers.ReaderPool(2) as pool:
        for fmt in training.FORMATS:
            chosen = training.picks(index, fmt, 2)
            got = pool.run(training.direct_reads(fmt, chosen), [p.size for p in chosen], s3,
                           BUCKET)
            assert training.checked("direct", got, chosen) is got
            assert got.members == 4 and got.bytes == sum(p.size for p in chosen)
            assert got.seconds > 0 and got.members_per_s > 0


def test_wrong_bytes_stop_the_bench(env: SetupEnv) -> None:
    chosen = training.picks(training.load_index(env.data_dir), training.FORMATS[0], 1)
    got = training_readers.Timed(1.0, 2, 10, ["0" * 64, chosen[1].sha256])
    with pytest.raises(WrongBytes, match=f"1 of 2 members: {chosen[0].path}"):
        training.checked("s3fuse", got, chosen)


def test_the_workload_reads_every_member_through_s3fuse(env: SetupEnv, tmp_path: Path) -> None:
    fs = S3FuseTree("s3fuse", ROOT, env.target, tmp_path / "fs",
                    [fmt.manifest for fmt in training.FORMATS])
    try:
        values = training.training_reads(Context(fs, QUICK, env.data_dir))
    finally:
        fs.unmount()
    for fmt in training.FORMATS:
        for what in ("1", "1_direct", "2", "2_direct", "warm"):
            assert values[training.key(fmt, what)] > 0
        assert values[training.key(fmt, "ratio")] == pytest.approx(
            values[training.key(fmt, "2")] / values[training.key(fmt, "2_direct")])
        assert values[training.key(fmt, "members_per_s")] == pytest.approx(
            4 / values[training.key(fmt, "2")])
