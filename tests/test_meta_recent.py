"""MetaStore answers from memory what it just stored: entries from HEAD answers (a cold
`ls -l` looks each one up right after storing it) and directories known to exist (every
upload says so of its parent): no query, and never an answer other than the database's
(with the queued writes) would give."""
from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hypothesis import given, settings, strategies as st

from s3fuse.cache.listingpages import ListingPages
from s3fuse.cache.meta import MetaStore, version
from s3fuse.model import Entry
from s3fuse.posix import Posix

NS = "bucket-ns"
NAMES = ("a", "b", "c")


class _Forgetful(dict):
    """A `_recent` that keeps nothing: every entry read goes to the database."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _listed(name: str, etag: str) -> Entry:
    return Entry(name, False, 1, 100, etag)


def _answer(entry: Entry, mode: int) -> tuple[Entry, str]:
    posix = Posix(mode=0o100000 | mode, uid=mode, mtime_ns=5)
    return dataclasses.replace(entry, mtime_ns=5, posix=posix), version(entry.etag, 100)


def test_an_entry_just_stored_is_answered_without_a_query(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    listed = [_listed(n, "e" + n) for n in NAMES]
    meta.replace_listing(NS, "", listed)
    meta.store_if_unknown(NS, "", listed, [_answer(e, 0o644) for e in listed])
    read_back = {n: meta.entry(NS, "", n) for n in NAMES}

    def no_query(*args: object) -> None:
        raise AssertionError(f"queried: {args}")
    real_query = meta._db.query_one
    meta._db.query_one = no_query  # type: ignore[method-assign]
    assert {n: meta.entry(NS, "", n) for n in NAMES} == read_back
    meta._db.query_one = real_query  # type: ignore[method-assign]
    fresh = MetaStore(tmp_path / "meta.sqlite")  # what the database holds
    assert {n: fresh.entry(NS, "", n) for n in NAMES} == read_back
    assert read_back["a"].posix == Posix(mode=0o100644, uid=0o644, mtime_ns=5)  # type: ignore[union-attr]
    fresh.close()
    meta.close()


def test_a_relist_showing_another_version_is_not_answered_from_memory(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "", [_listed("a", "ea")])
    meta.store_if_unknown(NS, "", [_listed("a", "ea")], [_answer(_listed("a", "ea"), 0o600)])
    assert meta.entry(NS, "", "a").posix is not None  # type: ignore[union-attr]
    meta.replace_listing(NS, "", [_listed("a", "rewritten")])  # someone else's new version
    assert meta.entry(NS, "", "a") == _listed("a", "rewritten")  # unknown again: HEAD it
    meta.close()


_OP = st.one_of(
    st.tuples(st.just("head"), st.sampled_from(NAMES), st.integers(0, 0o777)),
    st.tuples(st.just("update"), st.sampled_from(NAMES), st.integers(0, 0o777)),
    st.tuples(st.just("remove"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("relist"), st.sampled_from(NAMES), st.integers(0, 3)),
)


def _apply(meta: MetaStore, op: tuple[str, str, int], etags: dict[str, str]) -> None:
    kind, name, n = op
    if kind == "head":  # a HEAD answer for what the listing showed when it was asked
        headed = _listed(name, etags.get(name, "e" + name))
        meta.store_if_unknown(NS, "", [headed], [_answer(headed, n)])
    elif kind == "update":  # an upload or a metadata copy landed
        etags[name] = f"up{n}"
        meta.update_entry(NS, "", Entry(name, False, 2, 7, f"up{n}", 1.0,
                                        Posix(mode=0o100000 | n, mtime_ns=7)))
    elif kind == "remove":
        meta.remove_entry(NS, "", name)
    else:  # a listing from S3: a new version of `name` when n is odd
        if n % 2:
            etags[name] = f"v{n}"
        meta.replace_listing(NS, "", [_listed(m, etags.get(m, "e" + m)) for m in NAMES])


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(_OP, st.booleans()), max_size=14))
def test_entries_read_as_the_database_says_whatever_the_writes(
        tmp_path_factory: Any, ops: list[tuple[tuple[str, str, int], bool]]) -> None:
    """Every write kind, made directly or queued behind a writer (shown from the queue,
    then written when the writer lets go): `entry` and the listing pages answer as a
    store that keeps nothing in memory does, at every step."""
    top = tmp_path_factory.mktemp("recent")
    stores = MetaStore(top / "cached.sqlite"), MetaStore(top / "plain.sqlite")
    stores[1]._recent = _Forgetful()
    stores[1]._pages = ListingPages(max_entries=0)  # keeps no listing page
    etags: list[dict[str, str]] = [{}, {}]
    for meta, seen in zip(stores, etags):
        _apply(meta, ("relist", "a", 0), seen)

    def shown() -> list[tuple[dict[str, Entry | None], list[Any]]]:
        return [({n: meta.entry(NS, "", n) for n in NAMES},
                 [meta.entries_after(NS, "", after, limit)
                  for after, limit in (("", 10), ("", 1), ("a", 1))]) for meta in stores]
    for op, queued in ops:
        with ExitStack() as writers:
            if queued and op[0] in ("update", "remove"):  # a writer holds the lock meanwhile
                for meta in stores:
                    writers.enter_context(meta.writing())
            for meta, seen in zip(stores, etags):
                _apply(meta, op, seen)
            cached, plain = shown()
            assert cached == plain
        cached, plain = shown()
        assert cached == plain
    for meta in stores:
        meta.close()


def test_a_directory_known_once_costs_nothing_again(tmp_path: Path) -> None:
    """Every upload tells the store its parent exists (know_dir): only the first time
    reads and writes; the row it writes is never deleted, so the answer stays true."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.know_dir(NS, "made/here")
    assert meta.listed_at(NS, "made/here") == 0
    real_query = meta._db.query_one

    def no_query(*args: object) -> None:
        raise AssertionError(f"queried: {args}")
    meta._db.query_one = no_query  # type: ignore[method-assign]
    meta.know_dir(NS, "made/here")
    meta._db.query_one = real_query  # type: ignore[method-assign]
    meta.close()
    assert MetaStore(tmp_path / "meta.sqlite").listed_at(NS, "made/here") == 0
