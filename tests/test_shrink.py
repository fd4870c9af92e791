"""Tables that inodes keep leaving give their memory back (util/shrink.py): CPython never
shrinks a dict, and the churn past the inode cap grew each table to twice the size its
entries need."""
from __future__ import annotations

import sys

import pytest

from s3fuse.fs.inodes import InodeTable
from s3fuse.fs.pagecache import PageCache
from s3fuse.model import Entry
from s3fuse.util.shrink import MIN_REMOVALS, RemovalCounter

CAP, LOW = 50_000, 40_000


def churn(table: InodeTable, pages: PageCache, total: int) -> None:
    """What `ls -l` of `total` files does with the inode cap at CAP: nodes come, the
    kernel is told each one's version, and past CAP the oldest go down to LOW."""
    held: list[int] = []
    for n in range(total):
        node = table.remember(table.ensure(0, f"d/f{n:07d}", False))
        pages.told(node.ino, Entry(name=f"f{n:07d}", is_dir=False, size=1, mtime_ns=0,
                                   etag=f"e{n}"))
        held.append(node.ino)
        if len(held) > CAP + 10_000:  # the sweep runs late (every 0.2 s at most)
            for ino in held[:len(held) - LOW]:
                table.forget(ino, 1)
            del held[:len(held) - LOW]


def fresh_size(table: dict) -> int:  # type: ignore[type-arg]
    return sys.getsizeof(dict(table))


def test_removal_counter_asks_for_a_copy_once_removals_outnumber_what_is_left():
    counter = RemovalCounter()
    assert not any(counter.removed_one(10) for _ in range(MIN_REMOVALS))
    assert counter.removed_one(10)
    assert not counter.removed_one(10)  # counting again from 0
    big = RemovalCounter()
    assert not any(big.removed_one(100_000) for _ in range(100_000))
    assert big.removed_one(100_000)


@pytest.fixture(scope="module")
def churned() -> tuple[InodeTable, PageCache]:
    """Tables after the churn of 150,000 files through the cap: compacted twice on the way."""
    table, pages = InodeTable(), PageCache()
    table.on_gone = pages.forget
    churn(table, pages, 150_000)
    return table, pages


def test_churned_inode_and_page_tables_stay_sized_for_what_they_hold(churned):
    table, pages = churned
    assert 40_000 < len(table) < 60_000
    for name, held in [("by ino", table._by_ino), ("by name", table._by_ref[(0, False)]),
                       ("told", pages._told)]:
        assert sys.getsizeof(held) < fresh_size(held) * 2, name  # was 2x
        assert sys.getsizeof(held) < 3 << 20, name  # 2^18 slots: 3.8-5.2 MiB


def test_a_compacted_table_keeps_every_node_and_its_order(churned):
    table, _ = churned
    nodes = [node for node in table.oldest_first() if not node.is_root]
    assert [n.ref for n in nodes] == sorted(n.ref for n in nodes)  # oldest first (made in name order)
    for node in nodes[:100] + nodes[-100:]:
        assert table.get(node.ino) is node
        assert table.find(0, node.ref, False) is node
