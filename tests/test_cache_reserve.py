"""The cache disk's free-space reserve (issue 13): pins, staging and cached blocks stop short.

Without one, a pin, a big write or plain reads filled the file system the cache lives
on (/var by default for root) to the last block. Here the cache is on a 64 MiB tmpfs
with a 24 MiB reserve: cached blocks evict older ones rather than cross it, a pin that
cannot fit is refused up front with one line (exit 1), a write that would cross it
fails with ENOSPC at write time while what was closed before is uploaded intact, and
the disk never has less than the reserve free.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterator

import pytest

from s3fuse.cache.blocks import BlockCache
from s3fuse.cache.reserve import DiskReserve, ReserveReached, default_reserve
from s3fuse.config import build_config
from tests.support.mount import s3_env
from tests.test_disk_full import tmpfs, write_until_full
from tests.test_pin_cache import s3fuse
from tests.test_write_mount import body, sync

MiB = 1 << 20
DISK = 64 * MiB
RESERVE = 24 * MiB


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path / "disk", DISK)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_default_reserve_is_five_percent_at_most_a_gib():
    assert default_reserve(64 * MiB) == int(64 * MiB * 0.05)
    assert default_reserve(10 << 30) == 512 * MiB
    assert default_reserve(2 << 40) == 1 << 30


def test_cache_reserve_option(tmp_path: Path):
    toml = tmp_path / "c.toml"
    toml.write_text('cache_reserve = "2G"\n')
    assert build_config({"config": str(toml)}, [], {}).cache_reserve == 2 << 30
    assert build_config({"cache_reserve": "300M"}, [], {}).cache_reserve == 300 * MiB
    assert build_config({}, ["cache_reserve=1G"], {}).cache_reserve == 1 << 30
    assert build_config({}, [], {}).cache_reserve is None


def test_blocks_evict_and_pins_stop_before_the_reserve(disk: Path):
    reserve = DiskReserve(disk, RESERVE)
    cache = BlockCache(disk / "blocks", 1 << 30, disk / "pinned", reserve)
    block = os.urandom(4 * MiB)
    for i in range(30):  # 120 MiB of reads through a 64 MiB disk: older blocks make room
        cache.put("b", "k", "e", i, block)
        assert free(disk) >= RESERVE
    assert cache.get("b", "k", "e", 29) == block and cache.get("b", "k", "e", 0) is None
    pinned = 0
    with pytest.raises(ReserveReached) as refused:
        for i in range(30):
            cache.pin("b", "p", "e", i, block)
            pinned += 1
            assert free(disk) >= RESERVE
    assert refused.value.errno == errno.ENOSPC and "reserve" in str(refused.value)
    assert pinned >= 8  # everything cached was evicted for them: about 40 MiB - 24 MiB
    assert cache.usage()["blocks"] == 0
    cache.close()


@pytest.mark.mount
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["moto"], indirect=True)
def test_pins_writes_and_reads_keep_the_reserve(s3, bucket, disk, mount_factory, moto_backend):
    for i in range(6):
        s3.put_object(Bucket=bucket, Key=f"data/{i}.bin", Body=os.urandom(8 * MiB))
    big = os.urandom(48 * MiB)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=big)
    m = mount_factory("--source", f"s3://{bucket}", "--cache-reserve", "24M",
                      cache_dir=disk / "cache")
    m.expect_log(r"pin of data refused|reserve|No space left")
    root = m.path(bucket)

    assert (root / "big.bin").read_bytes() == big           # cached as far as the reserve lets
    assert free(disk) >= RESERVE

    env = {**s3_env(moto_backend.endpoint), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    pinned = s3fuse("pin", str(root / "data"), env=env)     # 48 MiB do not fit above 24 MiB
    assert pinned.returncode == 1
    lines = pinned.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot pin" in lines[0] and "reserve" in lines[0], pinned.stderr
    assert free(disk) >= RESERVE

    closed = os.urandom(8 * MiB)
    (root / "closed.bin").write_bytes(closed)
    written, write_error, _ = write_until_full(root / "huge.bin", 64 * MiB)
    assert write_error is not None and write_error.errno == errno.ENOSPC, write_error
    assert written < 48 * MiB
    assert free(disk) >= RESERVE - MiB                       # one write's worth at most
    sync(m.mountpoint)                                       # huge.bin failed; closed.bin:
    assert body(s3, bucket, "closed.bin") == closed          # uploaded intact
    assert "huge.bin" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert m.proc is not None and m.proc.poll() is None
