"""Listing pages -> directory entries: markers, clashes and hostile names."""
from __future__ import annotations

import logging

from s3fuse.store.s3 import ListPage, ObjectInfo
from s3fuse.tree.base import OnceLogger, is_posix_name
from s3fuse.tree.bucket import entries_from_pages


def obj(key: str, size: int = 1) -> ObjectInfo:
    return ObjectInfo(key, size, 1_000, "etag")


def test_entries_from_pages():
    pages = [
        ListPage(prefixes=["p/sub/", "p/clash/", "p//", "p/../"],
                 objects=[obj("p/"), obj("p/file"), obj("p/clash"), obj("p/.")]),
        ListPage(prefixes=["p/z/"], objects=[obj("p/" + "x" * 256), obj("p/ü")]),
    ]
    hidden = OnceLogger(logging.getLogger("test"))
    entries = entries_from_pages(pages, "p/", hidden, now=1.0)
    assert [(e.name, e.is_dir) for e in entries] == [
        ("clash", True), ("file", False), ("sub", True), ("z", True), ("ü", False)]


def test_posix_names():
    assert is_posix_name("a b") and is_posix_name("é" * 127)
    for bad in ("", ".", "..", "a/b", "a\0b", "é" * 128):
        assert not is_posix_name(bad)


def test_once_logger_logs_once(caplog):
    hidden = OnceLogger(logging.getLogger("once"))
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            hidden.info("k", "hiding %s", "k")
    assert len(caplog.records) == 1
