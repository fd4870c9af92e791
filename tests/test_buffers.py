"""GET body buffers: the size asked, writable, and their pages in memory before any write."""
from __future__ import annotations

import os

import pytest

from s3fuse.store import buffers
from s3fuse.store.buffers import MIN_SIZE, body_buffer


def _anon_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))


@pytest.mark.parametrize("size", [0, 1, MIN_SIZE - 1, MIN_SIZE, (8 << 20) + 33])
def test_a_buffer_of_the_size_asked_holds_what_is_written(size: int):
    buffer = body_buffer(size)
    assert type(buffer) is bytearray and len(buffer) == size
    data = os.urandom(size)
    memoryview(buffer)[:] = data
    assert buffer == data


def test_a_big_buffer_is_in_memory_before_it_is_written(monkeypatch: pytest.MonkeyPatch):
    """One madvise mapped its pages, not a fault per page as the socket fills it (and
    not a zero-fill: without the madvise, the buffer's pages are not there yet)."""
    before = _anon_kib()
    populated = buffers._new_buffer(64 << 20)  # what body_buffer makes when none is free
    assert _anon_kib() - before >= 60 << 10
    del populated
    monkeypatch.setattr(buffers, "_madvise", lambda start, length, advice: 0)
    before = _anon_kib()
    lazy = buffers._new_buffer(64 << 20)
    assert _anon_kib() - before < 4 << 10
    del lazy


def test_without_madvise_a_buffer_is_a_zeroed_bytearray(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(buffers, "_madvise", None)
    assert body_buffer(MIN_SIZE) == bytes(MIN_SIZE)
