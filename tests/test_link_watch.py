"""The link watch (store/liveness.py): a mount in use but quiet asks S3 once per interval
whether it still answers, so a black hole that began meanwhile is known before the next
request pays the first-byte deadline; a busy mount and an unused one send nothing."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, TypeVar

import pytest
import trio
import trio.testing

from s3fuse.store.liveness import (IN_USE, WATCH_MAX, WATCH_MIN, probe_while_offline,
                                   watch_interval, watch_while_in_use)
from s3fuse.store.memory import MemoryStore

INTERVAL = 15.0
T = TypeVar("T")


def test_interval_is_half_the_ttl_within_bounds() -> None:
    assert watch_interval(60) == WATCH_MAX == 15
    assert watch_interval(10) == 5
    assert watch_interval(0.5) == WATCH_MIN == 1


@pytest.fixture
def autojump_clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """Mock time that jumps as soon as every task waits. The watch asks S3 in a worker
    thread, which a jump overtakes when the thread is slow to start (a loaded machine: 0
    checks of 20 once in CI): here the store's calls run inline, as the MemoryStore answers
    at once anyway, so the count depends on the watch's logic only."""
    async def run_inline(fn: Callable[..., T], *args: object, **_: object) -> T:
        await trio.lowlevel.checkpoint()
        return fn(*args)
    monkeypatch.setattr(trio.to_thread, "run_sync", run_inline)
    return trio.testing.MockClock(autojump_threshold=0)


def answered(store: MemoryStore) -> None:
    """A request of the mount got its answer now (in trio's mock time)."""
    store.link.answered_at = trio.current_time()


@asynccontextmanager
async def watched(store: MemoryStore, *, used: bool = True) -> AsyncIterator[trio.Nursery]:
    """The watch running over `store` (a request answered just before, if `used`)."""
    async with trio.open_nursery() as nursery:
        if used:
            answered(store)
        nursery.start_soon(watch_while_in_use, store, INTERVAL, IN_USE, trio.current_time)
        yield nursery
        nursery.cancel_scope.cancel()


async def test_unused_mount_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with watched(store, used=False):
        await trio.sleep(3600)
    assert store.link_checks == 0


async def test_quiet_mount_in_use_is_checked_per_interval_until_unused(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with watched(store):
        await trio.sleep(IN_USE / 2 + 1)
        halfway = store.link_checks
        await trio.sleep(3600)
    assert halfway == pytest.approx(IN_USE / 2 / INTERVAL, abs=1)
    assert store.link_checks == pytest.approx(IN_USE / INTERVAL, abs=1)  # then none
    assert store.link.online


async def test_busy_mount_is_not_checked(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with watched(store):
        for _ in range(100):  # an answer every 5 s: the traffic proves the link
            await trio.sleep(INTERVAL / 3)
            answered(store)
    assert store.link_checks == 0


async def test_silence_takes_the_link_offline_and_the_probe_brings_it_back(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with watched(store) as nursery:
        nursery.start_soon(probe_while_offline, store, 2.0)
        store.reachable = False  # S3 went away while nothing was asked
        with trio.fail_after(INTERVAL + 1):
            await store.link.wait_offline()
        checks = store.link_checks
        await trio.sleep(10 * INTERVAL)  # offline: the probe's job, not the watch's
        assert store.link_checks == checks and not store.link.online
        store.reachable = True
        with trio.fail_after(3):
            await store.link.wait_online()
    assert checks == 1
