"""A relisting holds its keys in bounded memory (util/spill.py, tree/bucket/ingest.py):
packed per page, on disk past a budget, read back in order; whatever the disk does,
nothing listed is lost, and the entries are those an in-memory listing gives."""
from __future__ import annotations

import errno
import logging
import random
import tracemalloc
from pathlib import Path

import pytest

from s3fuse.cache.meta import apply_changes, merge_changes
from s3fuse.model import Entry
from s3fuse.store.protocol import ListPage, ObjectInfo
from s3fuse.tree.bucket.ingest import Ingest, entries_from_pages
from s3fuse.util import spill
from s3fuse.util.oncelog import OnceLogger
from s3fuse.util.spill import SpillList

HIDDEN = OnceLogger(logging.getLogger("test"))
PIECES = ["first", "zwei é", "\udcff surrogate", "x" * 5000, "", "last"]


def test_pieces_under_the_budget_stay_in_memory(tmp_path: Path) -> None:
    with SpillList(tmp_path, budget=1 << 20) as pieces:
        for piece in PIECES:
            pieces.append(piece)
        assert not pieces.spilled
        assert list(pieces) == PIECES
    assert list(tmp_path.iterdir()) == []


def test_pieces_past_the_budget_go_to_an_unnamed_file_and_come_back_in_order(tmp_path: Path) -> None:
    with SpillList(tmp_path, budget=100) as pieces:
        for piece in PIECES:
            pieces.append(piece)
        assert pieces.spilled
        assert list(tmp_path.iterdir()) == []  # unnamed: gone with the process
        assert list(pieces) == PIECES
        assert list(pieces) == PIECES  # read again


def test_a_directory_that_cannot_take_it_keeps_the_pieces_in_memory(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO), SpillList(tmp_path / "missing", budget=10) as pieces:
        for piece in PIECES:
            pieces.append(piece)
        assert not pieces.spilled
        assert list(pieces) == PIECES
    assert [r.message for r in caplog.records if "kept in memory" in r.message]


def test_a_disk_failing_mid_spill_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    real = spill.tempfile.TemporaryFile

    class FullDisk:
        """Takes the first write, then ENOSPC (a flush of it too)."""

        def __init__(self, **kwargs: object) -> None:
            self._file = real(**kwargs)
            self.writes = 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._file.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self._file, name)

    monkeypatch.setattr(spill.tempfile, "TemporaryFile", FullDisk)
    with SpillList(tmp_path, budget=10) as pieces:
        for piece in PIECES:
            pieces.append(piece)
        assert list(pieces) == PIECES


def obj(key: str, size: int = 1, etag: str = "e") -> ObjectInfo:
    return ObjectInfo(key, size, 1_000 + size, etag)


def ingest_all(pages: list[ListPage], spill_dir: Path | None, budget: int) -> list[Entry]:
    with Ingest("p/", HIDDEN, now=1.0, spill_dir=spill_dir, spill_budget=budget) as ingest:
        for page in pages:
            ingest.add(page)
        return list(ingest.entries())


def test_a_spilled_listing_is_the_listing_held_in_memory(tmp_path: Path) -> None:
    """Directories come in the order of `name/` ("a-b/" before "a/"), files in the
    order of their names; a key that is also a prefix is hidden, the marker is no entry."""
    pages = [ListPage(["p/a-b/", "p/a/"], [obj("p/", 0, "m"), obj("p/a"), obj("p/a.txt", 7)]),
             ListPage(["p/c/"], [obj(f"p/b{i:05d}", i, f"e{i}") for i in range(3000)]),
             ListPage([], [obj("p/c"), obj("p/d\né", 3)])]
    in_memory = ingest_all(pages, None, budget=1 << 30)
    spilled = ingest_all(pages, tmp_path, budget=64)
    assert spilled == in_memory
    names = [(e.name, e.is_dir) for e in in_memory]
    assert names[:4] == [("a", True), ("a-b", True), ("a.txt", False), ("b00000", False)]
    assert names[-3:] == [("b02999", False), ("c", True), ("d\né", False)]
    assert in_memory[3] == Entry("b00000", False, 0, 1_000, "e0", 1.0)


def test_a_store_listing_out_of_order_is_sorted(tmp_path: Path) -> None:
    pages = [ListPage([], [obj("p/m"), obj("p/b")]), ListPage(["p/b/"], [obj("p/a"), obj("p/m", 5)])]
    entries = ingest_all(pages, tmp_path, budget=1)
    assert [(e.name, e.is_dir, e.size) for e in entries] == [
        ("a", False, 1), ("b", True, 0), ("m", False, 5)]  # the later "m" wins, as in a dict
    assert entries == entries_from_pages(pages, "p/", HIDDEN, now=1.0)


def test_merging_changes_into_a_stream_is_applying_them_to_the_list() -> None:
    rng = random.Random(7)
    for _ in range(200):
        names = sorted(rng.sample(range(100), rng.randrange(0, 30)))
        entries = [Entry(f"n{i:03d}", False, i) for i in names]
        changes: dict[str, Entry | None] = {}
        for i in rng.sample(range(100), rng.randrange(0, 10)):
            changes[f"n{i:03d}"] = None if rng.random() < 0.4 else Entry(f"n{i:03d}", False, 1000 + i)
        assert list(merge_changes(iter(entries), changes)) == apply_changes(entries, changes)


@pytest.mark.timeout(120)
def test_a_big_listing_holds_a_bounded_amount_of_memory(tmp_path: Path) -> None:
    """100,000 keys, 1,000 per page, a budget of 1 MiB: the peak of Python allocations
    while listing stays near the budget (packed but held: 5.6 MiB; Entry objects: ~60)."""
    def page(number: int) -> ListPage:
        return ListPage([], [obj(f"p/f{number:04d}{i:04d}.dat", 0, f"{number:016x}{i:016x}")
                             for i in range(1000)])

    tracemalloc.start()
    try:
        with Ingest("p/", HIDDEN, now=1.0, spill_dir=tmp_path, spill_budget=1 << 20) as ingest:
            for number in range(100):
                ingest.add(page(number))
            count = sum(1 for _ in ingest.entries())
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100_000
    assert peak < 3 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_by_default_a_listing_of_40000_keys_goes_to_disk(tmp_path: Path) -> None:
    """The default budget (~25,000-30,000 keys of a flat directory: ~70-85 characters
    each for name, size, mtime and ETag): a
    relisting of a big directory keeps 2 Mi characters in memory, not 8 (that much, freed
    among the inodes a walk makes meanwhile, stayed in the heap)."""
    def page(number: int) -> ListPage:
        return ListPage([], [obj(f"flat/1000000/f{number:03d}{i:04d}.dat", 0,
                                 f"{number:016x}{i:016x}") for i in range(1000)])

    with Ingest("flat/1000000/", HIDDEN, now=1.0, spill_dir=tmp_path) as ingest:
        for number in range(20):
            ingest.add(page(number))
        assert not ingest._files.spilled  # 20,000 keys: in memory
        for number in range(20, 40):
            ingest.add(page(number))
        assert ingest._files.spilled
        assert sum(1 for _ in ingest.entries()) == 40_000
