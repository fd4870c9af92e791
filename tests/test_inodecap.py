"""The cap on held inodes (fs/inodecap.py): past it the longest-known files' entries are
invalidated (never directories or open files), the kernel's FORGETs then free the nodes,
and what the page cache remembered of them goes too."""
from __future__ import annotations

import errno
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import trio

from s3fuse.cli import format_status
from s3fuse.config import Config, validate
from s3fuse.errors import UsageError
from s3fuse.fs import inodecap
from s3fuse.fs.inodecap import InodeCap
from s3fuse.fs.inodes import InodeTable, Node
from s3fuse.fs.pagecache import PageCache
from s3fuse.model import Entry
from s3fuse.names import split
from tests.support.motokeys import moto_put_many


class Kernel:
    """Records invalidations; `forget_all` plays the kernel's FORGETs for them."""

    def __init__(self, table: InodeTable):
        self.table = table
        self.invalidated: list[tuple[int, bytes]] = []
        self.fail_with: int | None = None

    def invalidate(self, parent: int, name: bytes) -> None:
        if self.fail_with is not None:
            raise OSError(self.fail_with, "notify failed")
        self.invalidated.append((parent, name))

    def forget_all(self) -> None:
        for node in list(self.table.oldest_first()):
            if node.invalidated:
                self.table.forget(node.ino, node.lookups)


def tree(files: int, limit: int) -> tuple[InodeTable, InodeCap, Kernel]:
    table = InodeTable()
    kernel = Kernel(table)
    cap = InodeCap(table, limit, lambda node: parent_of(table, node), set,
                   kernel.invalidate)
    table.on_new = cap.grew
    table.remember(table.ensure(0, "", True))  # the bucket's top directory
    table.remember(table.ensure(0, "d", True))
    for n in range(files):
        table.remember(table.ensure(0, f"d/f{n:05d}", False))
    return table, cap, kernel


def parent_of(table: InodeTable, node: Node) -> int | None:
    parent = table.find(node.ns, split(node.ref)[0], True)
    return None if parent is None else parent.ino


def names(kernel: Kernel) -> list[bytes]:
    return [name for _, name in kernel.invalidated]


def send(cap: InodeCap) -> None:
    cap._send(cap.sweep())  # what the sweeper's worker thread does, here in one go


def test_under_the_cap_nothing_is_invalidated() -> None:
    table, cap, kernel = tree(900, 1000)
    send(cap)
    assert kernel.invalidated == [] and len(table) == 903


def test_past_the_cap_the_oldest_files_go_down_to_the_low_water_mark() -> None:
    table, cap, kernel = tree(1500, 1000)
    send(cap)
    low = int(1000 * inodecap.LOW_WATER)
    assert len(kernel.invalidated) == len(table) - low
    assert names(kernel) == [f"f{n:05d}".encode() for n in range(len(kernel.invalidated))]
    directory = table.find(0, "d", True)
    assert directory is not None and {p for p, _ in kernel.invalidated} == {directory.ino}
    send(cap)  # their FORGETs have not come: nothing more to do
    assert len(kernel.invalidated) == len(table) - low
    kernel.forget_all()
    assert len(table) == low and cap.invalidated == len(kernel.invalidated)


def test_directories_and_open_files_are_never_invalidated() -> None:
    table, _, kernel = tree(0, 1000)
    opened = table.remember(table.ensure(0, "d/open", False))
    cap = InodeCap(table, 1000, lambda node: parent_of(table, node), lambda: {opened.ino},
                   kernel.invalidate)
    for n in range(600):
        table.remember(table.ensure(0, f"dir{n}", True))
    for n in range(600):
        table.remember(table.ensure(0, f"d/f{n:05d}", False))
    send(cap)
    assert b"open" not in names(kernel)
    assert all(name.startswith(b"f") for name in names(kernel))
    assert len(kernel.invalidated) == len(table) - 800


def test_a_file_looked_up_again_becomes_the_newest() -> None:
    table, cap, kernel = tree(1100, 1000)
    send(cap)
    again = table.remember(table.ensure(0, "d/f00000", False))  # before its FORGET came
    assert not again.invalidated
    kernel.forget_all()
    assert table.get(again.ino) is again
    assert list(table.oldest_first())[-1] is again


def test_no_cap_means_none() -> None:
    table, cap, kernel = tree(3000, 0)
    send(cap)
    assert kernel.invalidated == []


def test_the_page_cache_forgets_an_inode_the_kernel_let_go() -> None:
    table = InodeTable()
    pages = PageCache()
    table.on_gone = pages.forget
    node = table.remember(table.ensure(0, "f", False))
    entry = Entry(name="f", is_dir=False, size=3, mtime_ns=1, etag="e1")
    pages.told(node.ino, entry)
    pages.open_read(node.ino, entry, 3, "e1")
    assert node.ino in pages._told and node.ino in pages._versions
    table.forget(node.ino, 1)
    assert node.ino not in pages._told and node.ino not in pages._versions


async def test_the_sweeper_sends_in_batches_and_stops_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inodecap, "BATCH", 100)
    table, cap, kernel = tree(0, 1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cap.run)
        for n in range(1500):  # each new node wakes the sweeper once past the cap
            table.remember(table.ensure(0, f"d/f{n:05d}", False))
        with trio.fail_after(5):
            while len(kernel.invalidated) < 1503 - 800:
                await trio.sleep(0.01)
        await cap.stop()
        nursery.cancel_scope.cancel()
    assert len(kernel.invalidated) == 1503 - 800


async def test_a_gone_kernel_connection_ends_the_batch() -> None:
    table, cap, kernel = tree(0, 1000)
    kernel.fail_with = errno.ENODEV
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cap.run)
        for n in range(1100):
            table.remember(table.ensure(0, f"d/f{n:05d}", False))
        with trio.fail_after(5):
            while not cap.invalidated:  # a sweep chose entries, and its batch met ENODEV
                await trio.sleep(0.01)
        await cap.stop()  # returns: the failed batch ended
        nursery.cancel_scope.cancel()
    assert kernel.invalidated == [] and cap.invalidated == 1103 - 800


@pytest.mark.mount
def test_a_huge_listing_keeps_the_held_inodes_under_the_cap(s3: Any, bucket: str, backend: Any,
                                                            mount_factory: Any) -> None:
    """`ls -l` of 3,000 files with --max-inodes 1000: the daemon holds about 1,000 inodes
    afterwards, every file still stats and reads (looked up again), and a file kept open
    meanwhile keeps its name. (No HEAD per file: readdirplus hands out the inodes.)"""
    keys = [f"big/f{n:05d}" for n in range(3000)]
    if backend.name == "moto":
        moto_put_many(bucket, iter(keys), b"data")
    else:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"data"), keys))
    m = mount_factory("--source", f"s3://{bucket}", "--max-inodes", "1000", "--no-posix-metadata")
    top = m.path(bucket, "big")
    with open(top / "f00000", "rb") as kept:
        listing = subprocess.run(["ls", "-l", str(top)], capture_output=True, text=True,
                                 check=True, timeout=120)
        assert listing.stdout.count("\n") == 3001  # "total" and one line per file
        deadline = time.monotonic() + 10
        while (inodes := m.status()["inodes"])["held"] > 1000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert inodes["cap"] == 1000 and inodes["held"] <= 1000, inodes
        assert inodes["invalidated"] >= 2000 - 50, inodes
        assert os.readlink(f"/proc/self/fd/{kept.fileno()}") == str(top / "f00000")
        assert kept.read() == b"data"
    assert all(os.stat(top / f"f{n:05d}").st_size == 4 for n in range(0, 3000, 7))
    assert (top / "f00001").read_bytes() == b"data"


def test_the_cap_is_checked_where_it_is_given() -> None:
    with pytest.raises(UsageError, match="max inodes must be 0 .no cap. or between 1,000"):
        validate(Config(max_inodes=10))
    assert validate(Config(max_inodes=0)).max_inodes == 0


def test_the_status_says_how_many_are_held() -> None:
    shown = format_status({"mountpoint": "/mnt/data", "inodes": {"held": 41_000, "cap": 50_000,
                                                                  "invalidated": 12_345}})
    assert "inodes:    41,000 held by the kernel (cap 50,000; 12,345 dropped since start)" in shown
    assert "(no cap)" in format_status({"inodes": {"held": 3, "cap": 0, "invalidated": 0}})
