"""Listing pages kept in memory (cache/listingpages.py): a warm readdir reads no SQLite
row, and a page is never served past a commit that changed its directory."""
from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest

from s3fuse.cache.listingpages import ListingPages
from s3fuse.cache.meta import MetaStore
from s3fuse.errors import CacheFull
from s3fuse.model import Entry
from s3fuse.posix import Posix

NS = "bucket-ns"


def _file(name: str, etag: str = "e") -> Entry:
    return Entry(name, False, 1, 100, etag)


def _names(meta: MetaStore, path: str = "", after: str = "", limit: int = 10) -> list[str]:
    return [e.name for e in meta.entries_after(NS, path, after, limit)[0]]


def _no_query(meta: MetaStore) -> None:
    def fail(*args: object) -> None:
        raise AssertionError(f"queried: {args}")
    meta._db.query = fail  # type: ignore[method-assign]


def test_a_page_read_again_costs_no_query(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "d", [_file("a"), _file("b"), _file("c")])
    first = meta.entries_after(NS, "d", "", 2)
    real_query = meta._db.query
    _no_query(meta)
    assert meta.entries_after(NS, "d", "", 2) == first == ([_file("a"), _file("b")], "b")
    meta._db.query = real_query  # type: ignore[method-assign]
    meta.close()


def test_every_kind_of_write_drops_the_pages_of_its_directory(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "d", [_file("a"), _file("b")])
    meta.replace_listing(NS, "other", [_file("x")])
    assert _names(meta, "d") == ["a", "b"] and _names(meta, "other") == ["x"]
    meta.update_entry(NS, "d", _file("c"))
    assert _names(meta, "d") == ["a", "b", "c"]
    meta.remove_entry(NS, "d", "a")
    assert _names(meta, "d") == ["b", "c"]
    headed = _file("b")
    answer = dataclasses.replace(headed, posix=Posix(mode=0o100600)), "version"
    meta.store_if_unknown(NS, "d", [headed], [answer])
    assert meta.entries_after(NS, "d", "", 10)[0][0].posix == Posix(mode=0o100600)
    meta.replace_listing(NS, "d", [_file("z")])
    assert _names(meta, "d") == ["z"]
    assert len(meta._pages) == 2  # "other" kept its page: no write touched it
    meta.close()


def test_a_new_listing_of_a_directory_drops_its_parents_pages(tmp_path: Path) -> None:
    """The parent's entry of a directory records its marker's version (a new one makes
    its metadata unknown again): the parent's pages show that entry."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    sub = Entry("sub", True, 0, 0, "")
    meta.replace_listing(NS, "", [sub])
    read = dataclasses.replace(sub, posix=Posix(mode=0o40700)), "m1"  # from marker m1
    meta.store_if_unknown(NS, "", [sub], [read])
    assert meta.entries_after(NS, "", "", 10)[0][0].posix == Posix(mode=0o40700)
    meta.replace_listing(NS, "sub", [_file("f")], marker="m2")  # another marker version
    assert meta.entries_after(NS, "", "", 10)[0][0].posix is None
    meta.close()


def test_a_page_read_while_a_write_commits_is_not_kept(tmp_path: Path) -> None:
    """The query began before the write committed (its rows are the old ones): they are
    returned to that one caller but not kept for the next."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "d", [_file("a", "old")])
    real_query = meta._db.query

    def racing(*args: object) -> list:
        rows = real_query(*args)
        meta.update_entry(NS, "d", _file("a", "new"))  # commits meanwhile
        return rows
    meta._db.query = racing  # type: ignore[method-assign]
    assert meta.entries_after(NS, "d", "", 10)[0] == [_file("a", "old")]
    meta._db.query = real_query  # type: ignore[method-assign]
    assert meta.entries_after(NS, "d", "", 10)[0] == [_file("a", "new")]
    meta.close()


def test_queued_writes_show_over_a_kept_page(tmp_path: Path) -> None:
    """A write queued behind a writer shows at once (from the queue), over the page."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "d", [_file("a"), _file("b")])
    assert _names(meta, "d") == ["a", "b"]
    with meta.writing():
        meta.remove_entry(NS, "d", "a")  # queued: the lock is held
        assert _names(meta, "d") == ["b"]
    assert _names(meta, "d") == ["b"]
    meta.close()


def test_the_pages_held_are_bounded_by_their_entries() -> None:
    pages = ListingPages(max_entries=5)
    for n in range(3):
        pages.put((NS, f"d{n}", "", 3), (tuple(_file(c) for c in "abc"), None), pages.generation)
    assert len(pages) == 1 and pages.get((NS, "d2", "", 3)) is not None  # the newest
    pages.put((NS, "big", "", 9), (tuple(_file(str(n)) for n in range(9)), "8"), pages.generation)
    assert pages.get((NS, "big", "", 9)) is None  # more than the bound: never kept


def test_a_page_read_before_an_invalidation_is_not_put() -> None:
    pages = ListingPages()
    before = pages.generation
    pages.invalidate([(NS, "unrelated")])
    pages.put((NS, "d", "", 3), ((_file("a"),), None), before)
    assert pages.get((NS, "d", "", 3)) is None


def test_metadata_stored_for_listed_files_goes_into_the_pages(tmp_path: Path) -> None:
    """A `cat` of a listed directory stores each file's POSIX metadata: its pages get the
    new entries instead of being dropped, so the next `ls -R` reads no row."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "d", [_file("a"), _file("b"), _file("c")])
    meta.entries_after(NS, "d", "", 2)                      # pages: (a, b) and (c)
    meta.entries_after(NS, "d", "b", 2)
    answers = [(dataclasses.replace(_file(n), posix=Posix(mode=0o100600)), "v") for n in "ac"]
    meta.store_if_unknown(NS, "d", [_file("a"), _file("c")], answers)
    meta.update_entry(NS, "d", dataclasses.replace(_file("b"), posix=Posix(mode=0o100640)))
    meta.flush()
    real_query = meta._db.query
    _no_query(meta)
    first, frontier = meta.entries_after(NS, "d", "", 2)
    assert [(e.name, e.posix.mode) for e in first] == [("a", 0o100600), ("b", 0o100640)]  # type: ignore[union-attr]
    assert frontier == "b"
    assert [e.posix.mode for e in meta.entries_after(NS, "d", "b", 2)[0]] == [0o100600]  # type: ignore[union-attr]
    meta._db.query = real_query  # type: ignore[method-assign]
    assert meta.entries_after(NS, "d", "", 2) == (first, "b")  # what the database holds
    meta.close()


def test_a_new_name_inside_a_kept_page_drops_the_pages(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "d", [_file("a"), _file("c")])
    assert _names(meta, "d") == ["a", "c"]
    meta.update_entry(NS, "d", _file("b"))                  # between a and c: not in the page
    meta.flush()
    assert _names(meta, "d") == ["a", "b", "c"]
    meta.close()


def test_a_patch_touches_only_the_names_a_page_covers() -> None:
    pages = ListingPages()
    pages.put(("n", "d", "b", 2), ((_file("c"), _file("d")), "d"), pages.generation)
    pages.patch({("n", "d"): {"a": _file("a", "new"), "e": _file("e", "new")}})  # outside
    assert pages.get(("n", "d", "b", 2)) == ((_file("c"), _file("d")), "d")
    pages.patch({("n", "d"): {"d": _file("d", "new")}})
    assert pages.get(("n", "d", "b", 2)) == ((_file("c"), _file("d", "new")), "d")
    pages.patch({("n", "d"): {"cc": _file("cc")}})          # a new name inside: dropped
    assert pages.get(("n", "d", "b", 2)) is None and len(pages) == 0


def test_a_write_rolled_back_drops_the_pages_instead(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "d", [_file("a", "old")])
    assert meta.entries_after(NS, "d", "", 10)[0] == [_file("a", "old")]
    real = meta._db.transaction

    @contextlib.contextmanager
    def failing() -> Iterator[sqlite3.Connection]:
        with real() as db:
            yield db
            raise sqlite3.OperationalError("database or disk is full")
    meta._db.transaction = failing  # type: ignore[method-assign]
    with pytest.raises(CacheFull):
        meta.update_entry(NS, "d", _file("a", "new"))
    meta._db.transaction = real  # type: ignore[method-assign]
    assert meta.entries_after(NS, "d", "", 10)[0] == [_file("a", "old")]  # as stored
    meta.close()
