"""Let long blocking work in a worker thread stop when the task waiting for it is cancelled.

`trio.to_thread.run_sync` cannot interrupt its thread: a cancelled task waits until the
thread returns. Unmounting cancels every background task, so an unmount during a
relisting of 1,000,000 keys (1,000 ListObjectsV2 pages in one thread call) or the
ingestion of a 10,000,000-line manifest waited for all of it: `make bench` saw a daemon
still running 15 s after `fusermount3 -u` and killed it. Loops over S3 pages or chunks
pass them through `stop_points`, which raises `trio.Cancelled` in the thread between two
of them once the task is cancelled: the work unwinds as for any exception (its cleanup
runs, nothing half-built is stored) and the task ends within one page.

Reads that go through the trio loop (`trio.from_thread.run`, as a shard's archive is read)
stop there already: trio delivers the task's cancellation to them.
"""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

import trio

T = TypeVar("T")


def stop_point() -> None:
    """Raise trio.Cancelled if the trio task this thread works for was cancelled; nothing
    in a thread trio did not start (tests, command-line tools)."""
    try:
        trio.from_thread.check_cancelled()
    except RuntimeError:  # not a trio worker thread: nobody to stop for
        pass


def stop_points(items: Iterable[T]) -> Iterator[T]:
    """`items`, with a stop point before each one is fetched."""
    iterator = iter(items)
    while True:
        stop_point()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item
