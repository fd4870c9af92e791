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
#: What the mount's SQLite files (listings, the block index, the upload journal and their
#: WALs) may grow into the reserve: only blocks and staged bytes claim room (a mount on a
#: loaded machine was 0.5 MiB under it once its metadata was written)
DATABASES = 2 * MiB


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
    assert free(disk) >= RESERVE - DATABASES

    env = {**s3_env(moto_backend.endpoint), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    pinned = s3fuse("pin", str(root / "data"), env=env)     # 48 MiB do not fit above 24 MiB
    assert pinned.returncode == 1
    lines = pinned.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot pin" in lines[0] and "reserve" in lines[0], pinned.stderr
    assert free(disk) >= RESERVE - DATABASES

    closed = os.urandom(8 * MiB)
    (root / "closed.bin").write_bytes(closed)
    written, write_error, _ = write_until_full(root / "huge.bin", 64 * MiB)
    assert write_error is not None and write_error.errno == errno.ENOSPC, write_error
    assert written < 48 * MiB
    assert free(disk) >= RESERVE - DATABASES - MiB                       # one write's worth at most
    sync(m.mountpoint)                                       # huge.bin failed; closed.bin:
    assert body(s3, bucket, "closed.bin") == closed          # uploaded intact
    assert "huge.bin" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert m.proc is not None and m.proc.poll() is None


def fill_to_the_last_byte(disk: Path) -> None:
    fd = os.open(disk / "ballast", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for step in (MiB, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * step)
                except OSError:
                    break
    finally:
        os.close(fd)


def a_cache_on(disk: Path, reserve: DiskReserve | None = None) -> BlockCache:
    return BlockCache(disk / "c" / "blocks", 1 << 30, disk / "c" / "pinned", reserve)


def test_a_cache_closed_on_a_disk_that_then_filled_opens(disk: Path):
    """SQLite needs room for a database's WAL index to open it, and diskcache rewrote its
    settings at every open: a mount could not start on a full disk (nor `cache prune` run).
    The oldest cached blocks make room; their rows go with them; pinned blocks stay."""
    cache = a_cache_on(disk)
    blocks = [os.urandom(4 * MiB) for _ in range(4)]
    for i, block in enumerate(blocks):
        cache.put("b", "k", "e", i, block)
    cache.pin("b", "p", "e", 0, blocks[0])
    cache.close()
    fill_to_the_last_byte(disk)
    cache = a_cache_on(disk, DiskReserve(disk, 8 * MiB))
    assert free(disk) >= 1 * MiB
    kept = [i for i in range(4) if cache.get("b", "k", "e", i) == blocks[i]]
    assert 0 < len(kept) < 4  # the oldest written make room (their order is the writer
    # thread's: block files are written in the background, not in the order put)
    assert cache.usage()["blocks"] == len(kept)             # no row without its file
    cache.evict_to_reserve()                                 # room to record uploads
    assert free(disk) >= 8 * MiB or cache.usage()["blocks"] == 0
    assert cache.get("b", "p", "e", 0) == blocks[0]          # pinned: never dropped
    cache.close()


def test_cache_stats_prune_and_clear_work_on_a_full_disk(disk: Path):
    """The tools meant to free space failed on a full disk ("the cache disk is full"):
    stats reads without writing, prune and clear make room for SQLite, then free all."""
    from s3fuse import cachetool
    from s3fuse.cache.cachedir import secure_dir
    from s3fuse.cache.meta import MetaStore
    cache_dir = secure_dir(disk / "c")
    daemon = a_cache_on(disk)                                # a mount holds it open
    meta = MetaStore(cache_dir / "meta.sqlite")
    for i in range(6):
        daemon.put("b", "k", "e", i, os.urandom(4 * MiB))
    fill_to_the_last_byte(disk)
    assert cachetool.stats(cache_dir, None)["blocks"] == 6
    assert free(disk) < MiB                                  # stats freed nothing
    pruned = cachetool.prune(cache_dir, None, None, 5 * MiB)
    assert pruned["blocks"] == 1 and pruned["removed_blocks"] == 5 and free(disk) > 16 * MiB
    fill_to_the_last_byte(disk)
    assert cachetool.clear(cache_dir, None, force=True)["removed_blocks"] == 1
    assert free(disk) > 3 * MiB and daemon.usage()["blocks"] == 0
    daemon.close()
    meta.close()
