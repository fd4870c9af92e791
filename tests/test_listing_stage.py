"""A listing is staged page by page (cache/liststage.py, tree/bucket/ingest.py): in memory,
in a scratch file past a number of rows, read back in name order; whatever the disk
does, nothing listed is lost, and the entries are those an in-memory listing gives."""
from __future__ import annotations

import logging
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from s3fuse.cache.meta import apply_changes, merge_changes
from s3fuse.model import Entry
from s3fuse.store.protocol import ListPage, ObjectInfo
from s3fuse.tree.bucket.ingest import Ingest, entries_from_pages
from s3fuse.cache.liststage import ListingStage, remove_leftovers
from s3fuse.errors import CacheFull
from s3fuse.util.oncelog import OnceLogger

HIDDEN = OnceLogger(logging.getLogger("test"))


def obj(key: str, size: int = 1, etag: str = "e") -> ObjectInfo:
    return ObjectInfo(key, size, 1_000 + size, etag)


def ingest_all(pages: list[ListPage], spill_dir: Path | None, rows: int) -> list[Entry]:
    with Ingest("p/", HIDDEN, 1.0, ListingStage(None, spill_dir, spill_rows=rows)) as ingest:
        for page in pages:
            ingest.add(page)
        return list(ingest.entries())


def test_a_spilled_listing_is_the_listing_held_in_memory(tmp_path: Path) -> None:
    """Directories come in the order of `name/` ("a-b/" before "a/"), files in the
    order of their names; a key that is also a prefix is hidden, the marker is no entry."""
    pages = [ListPage(["p/a-b/", "p/a/"], [obj("p/", 0, "m"), obj("p/a"), obj("p/a.txt", 7)]),
             ListPage(["p/c/"], [obj(f"p/b{i:05d}", i, f"e{i}") for i in range(3000)]),
             ListPage([], [obj("p/c"), obj("p/d\né", 3)])]
    in_memory = ingest_all(pages, None, rows=1 << 30)
    spilled = ingest_all(pages, tmp_path, rows=64)
    assert spilled == in_memory
    names = [(e.name, e.is_dir) for e in in_memory]
    assert names[:4] == [("a", True), ("a-b", True), ("a.txt", False), ("b00000", False)]
    assert names[-3:] == [("b02999", False), ("c", True), ("d\né", False)]
    assert in_memory[3] == Entry("b00000", False, 0, 1_000, "e0", 1.0)


def test_a_store_listing_out_of_order_is_sorted(tmp_path: Path) -> None:
    pages = [ListPage([], [obj("p/m"), obj("p/b")]), ListPage(["p/b/"], [obj("p/a"), obj("p/m", 5)])]
    entries = ingest_all(pages, tmp_path, rows=1)
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


def flat_page(number: int, prefix: str = "p/") -> ListPage:
    return ListPage([], [obj(f"{prefix}f{number:04d}{i:04d}.dat", 0, f"{number:016x}{i:016x}")
                         for i in range(1000)])


@pytest.mark.timeout(120)
def test_a_big_listing_holds_no_rows_in_python(tmp_path: Path) -> None:
    """100,000 keys, 1,000 per page: the peak of Python allocations while listing and
    reading the entries back is about one page (as Entry objects a key cost ~600 bytes:
    60 MiB); SQLite keeps the rows, in a file past SPILL_ROWS."""
    tracemalloc.start()
    try:
        with Ingest("p/", HIDDEN, 1.0, ListingStage(None, tmp_path)) as ingest:
            for number in range(100):
                ingest.add(flat_page(number))
            assert ingest.stage.spilled
            count = sum(1 for _ in ingest.entries())
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100_000
    assert peak < 3 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_past_spill_rows_the_rows_go_to_a_file_removed_at_close(tmp_path: Path) -> None:
    stage = ListingStage(None, tmp_path, spill_rows=2500)
    with Ingest("p/", HIDDEN, 1.0, stage) as ingest:
        for number in range(2):
            ingest.add(flat_page(number))
        assert not stage.spilled and list(tmp_path.iterdir()) == []  # 2,000 rows: in memory
        ingest.add(flat_page(2))
        assert stage.spilled
        [scratch] = tmp_path.iterdir()
        assert scratch.name == f"listing-{os.getpid()}-{scratch.name.split('-')[2]}"
        ingest.add(flat_page(3))
        names = [e.name for e in ingest.entries()]
    assert names == sorted(f"f{n:04d}{i:04d}.dat" for n in range(4) for i in range(1000))
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_cannot_take_the_file_keeps_the_rows_in_memory(tmp_path: Path, caplog) -> None:
    stage = ListingStage(None, tmp_path / "missing", spill_rows=10)
    with caplog.at_level(logging.INFO), Ingest("p/", HIDDEN, 1.0, stage) as ingest:
        for number in range(3):
            ingest.add(flat_page(number))
        assert not stage.spilled
        assert sum(1 for _ in ingest.entries()) == 3000
    assert len([r for r in caplog.records if "kept in memory" in r.message]) == 1  # not per page


def test_scratch_files_of_dead_daemons_are_removed_not_those_of_live_ones(tmp_path: Path) -> None:
    dead = 2 ** 22 + 1  # above pid_max's default of 4,194,304: no such process
    for name in (f"listing-{dead}-0.staging", f"listing-{os.getpid()}-7.staging", "meta.sqlite",
                 "listing-x-1.staging"):
        (tmp_path / name).write_bytes(b"")
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"listing-{os.getpid()}-7.staging", "meta.sqlite", "listing-x-1.staging"])


def test_the_scratch_file_of_a_daemon_killed_but_not_reaped_is_removed(tmp_path: Path) -> None:
    """A zombie (dead, its parent has not waited for it yet) holds no file open."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", ""])
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().split(") ", 1)[1][0] != "Z":  # exited, not waited for
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (tmp_path / f"listing-{child.pid}-0.staging").write_bytes(b"")
        remove_leftovers(tmp_path)
        assert list(tmp_path.iterdir()) == []
    finally:
        child.wait()


def test_a_full_disk_under_the_scratch_file_is_cache_full(tmp_path: Path) -> None:
    """SQLITE_FULL (here: the scratch database capped at its current size) is ENOSPC for
    the listing, as a full disk under meta.sqlite is; not an unexpected error."""
    stage = ListingStage(None, tmp_path, spill_rows=10)
    with Ingest("p/", HIDDEN, 1.0, stage) as ingest:
        ingest.add(flat_page(0))
        assert stage.spilled
        pages = stage.connection.execute("PRAGMA spill.page_count").fetchone()[0]
        stage.connection.execute(f"PRAGMA spill.max_page_count={pages}")
        with pytest.raises(CacheFull):
            ingest.add(flat_page(1))
