"""A pin of a huge tree holds a few files at a time, not a task per file (issue 13).

The pin job listed every file below the path, then started one trio task per file:
~3.8 KB per file, 36 GiB for a pin of 10M objects. It now counts them in one walk and
pins them from a second, PARALLEL_FILES at a time. 50,000 files through a namespace
that makes its entries as asked: the traced peak stays small, every file is pinned.
"""
from __future__ import annotations

import tracemalloc
from typing import Callable

import trio

from s3fuse.model import Entry, Ref
from s3fuse.pinning import Pinner
from s3fuse.util.supervisor import Supervisor

FILES = 50_000
BOUND = 16 << 20  # the old job: ~190 MB for these


class Handle:
    size = 10

    def __init__(self, pinned: list[int]):
        self._pinned = pinned

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None:
        self._pinned[0] += 1
        progress(self.size)

    async def close(self) -> None:
        """Nothing held."""


class Pages:
    """A directory of FILES files, made page by page."""

    async def page(self, start: int, limit: int) -> list[tuple[int, Ref, Entry]]:
        return [(i + 1, i, Entry(f"part-{i:08d}.parquet", False, 10, 1, "e"))
                for i in range(start, min(start + limit, FILES))]


class Flat:
    """One namespace: its root is a directory of FILES files."""

    root = "root"

    def __init__(self) -> None:
        self.pinned = [0]

    async def opendir(self, ref: Ref) -> Pages:
        return Pages()

    async def open(self, ref: Ref) -> Handle:
        return Handle(self.pinned)


class Root:
    def __init__(self, ns: Flat):
        self.ns = ns

    async def find(self, name: str) -> int | None:
        return 0 if name == "flat" else None

    def get(self, index: int) -> Flat:
        return self.ns


class NoPins:
    def pins(self) -> list[tuple[str, str]]:
        return []

    def set_pin(self, path: str, state: str) -> None:
        """Recorded nowhere: memory is the point here."""


async def test_a_pin_of_many_files_holds_a_few_at_a_time():
    ns = Flat()
    background = Supervisor()
    pinner = Pinner(Root(ns), NoPins(), background)  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:
            background.bind(nursery)
            pinner.start("flat", "pin")
            while pinner.jobs()[0]["state"] == "running":
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    job, = pinner.jobs()
    assert job["state"] == "done" and job["files_total"] == FILES == ns.pinned[0]
    assert job["bytes_done"] == 10 * FILES
    assert peak < BOUND, f"{peak / 2**20:.0f} MiB traced pinning {FILES} files"
