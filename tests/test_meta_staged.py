"""A listing staged page by page is stored as replace_listing stores the same entries
(cache/meta.py `replace_staged`): by one INSERT ... SELECT when nothing must be merged,
by the merge when stored metadata is kept or changes were learned meanwhile."""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from s3fuse.cache.meta import MetaStore, merge_changes, version
from s3fuse.model import Entry
from s3fuse.posix import Posix

NS = "ns"
CHECKED = 7.0
NOW = 9.0


def listed(count: int, etag: str = "e") -> list[Entry]:
    files = [Entry(f"f{i:05d}", False, i, 1_000 + i, f"{etag}{i}", CHECKED) for i in range(count)]
    return sorted(files + [Entry("sub", True, 0, 0, "", CHECKED)], key=lambda e: e.name)


def staged(meta: MetaStore, entries: list[Entry]):
    stage = meta.stage()
    stage.add_files([(e.name, e.size, e.mtime_ns, e.etag) for e in entries if not e.is_dir])
    assert stage.add_dirs([e.name for e in entries if e.is_dir]) == []
    return stage


def rows(path: Path) -> tuple[list[tuple], list[tuple]]:
    with sqlite3.connect(path) as db:
        return (db.execute("SELECT * FROM entries ORDER BY ns, dir, name").fetchall(),
                db.execute("SELECT * FROM dirs ORDER BY ns, path").fetchall())


def both_ways(tmp_path: Path, before, entries: list[Entry], changes: dict[str, Entry | None],
              marker: str | None = None, *, merged: bool) -> tuple:
    """The database after storing `entries` (after `before(meta)`) by replace_listing
    and by replace_staged: the two must be equal. `merged`: replace_staged merges
    (replace_listing), else it copies the stage."""
    results = []
    for way in ("listing", "staged"):
        (tmp_path / way).mkdir()
        meta = MetaStore(tmp_path / way / "meta.sqlite")
        before(meta)
        if way == "listing":
            meta.replace_listing(NS, "d/x", merge_changes(entries, changes), NOW, marker=marker)
        else:
            stage = staged(meta, entries)
            calls = []
            meta.replace_listing = lambda *args, real=meta.replace_listing, **kw: (  # type: ignore[method-assign]
                calls.append(args), real(*args, **kw))
            try:
                meta.replace_staged(NS, "d/x", stage, CHECKED, changes, NOW, marker=marker)
            finally:
                stage.close()
            assert bool(calls) == merged
        assert [p.name for p in (tmp_path / way).iterdir() if p.suffix == ".staging"] == []
        meta.close()
        results.append(rows(tmp_path / way / "meta.sqlite"))
    assert results[0] == results[1]
    return results[1]


def nothing(meta: MetaStore) -> None:
    meta.replace_listing(NS, "d", [Entry("x", True, 0, 0, "", CHECKED)], NOW)


def test_a_first_listing_is_stored_as_replace_listing_stores_it(tmp_path: Path) -> None:
    entries, dirs = both_ways(tmp_path, nothing, listed(30_000), {}, marker="m 5",
                               merged=False)
    assert len([e for e in entries if e[1] == "d/x"]) == 30_001
    assert (NS, "d/x", NOW) in dirs
    parent = [e for e in entries if e[1] == "d" and e[2] == "x"]
    assert parent[0][9] == "m 5"  # the marker's version on the parent's entry


def test_a_relisting_drops_what_is_gone(tmp_path: Path) -> None:
    def before(meta: MetaStore) -> None:
        nothing(meta)
        meta.replace_listing(NS, "d/x", listed(50) + [Entry("zz", False, 1, 1, "z")], 1.0)
    entries, _ = both_ways(tmp_path, before, listed(40, etag="n"), {}, merged=False)
    names = [e[2] for e in entries if e[1] == "d/x"]
    assert "zz" not in names and "f00045" not in names and len(names) == 41


def test_stored_metadata_of_the_same_version_is_kept(tmp_path: Path) -> None:
    old = listed(20)

    def before(meta: MetaStore) -> None:
        nothing(meta)
        meta.replace_listing(NS, "d/x", old, 1.0)
        answered = [(dataclasses.replace(e, posix=Posix(mode=0o100600, mtime_ns=3)),
                     version(e.etag, e.mtime_ns)) for e in old[:5]]
        meta.store_if_unknown(NS, "d/x", old[:5], answered)
    entries, _ = both_ways(tmp_path, before, listed(20), {}, merged=True)
    kept = [e for e in entries if e[1] == "d/x" and e[8] is not None]
    assert len(kept) == 5 and all(e[5] == 3 for e in kept)  # the stored mtime shows


def test_changes_learned_meanwhile_are_applied(tmp_path: Path) -> None:
    changes: dict[str, Entry | None] = {"f00003": None, "new": Entry("new", False, 5, 5, "n", CHECKED),
                                        "f00004": Entry("f00004", False, 99, 99, "u", CHECKED)}
    entries, _ = both_ways(tmp_path, nothing, listed(10), changes, merged=True)
    by_name = {e[2]: e for e in entries if e[1] == "d/x"}
    assert "f00003" not in by_name and by_name["new"][4] == 5 and by_name["f00004"][4] == 99


def test_a_failed_store_leaves_the_last_listing(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "d/x", listed(3), 1.0)
    stage = staged(meta, listed(5))
    stage.connection.execute("DROP TABLE staging.listed")  # the INSERT ... SELECT fails
    with pytest.raises(sqlite3.OperationalError):
        meta.replace_staged(NS, "d/x", stage, CHECKED, {}, NOW)
    stage.close()
    assert [e.name for e in meta.entries(NS, "d/x")] == [e.name for e in listed(3)]
    assert meta.listed_at(NS, "d/x") == 1.0
    meta.update_entry(NS, "d/x", Entry("later", False, 1, 1, "l"))  # the writer lock was let go
    meta.flush()
    meta.close()
