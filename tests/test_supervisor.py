"""The supervised runtime without a mount: failure policies, exception groups, clean
cancellation, link events delivered from worker threads, and the idle query."""
from __future__ import annotations

import errno
import logging
import threading
from typing import Any

import pytest
import trio
import trio.testing

from s3fuse.idle import Idle
from s3fuse.store.link import Link
from s3fuse.util.events import first_set
from s3fuse.util.supervisor import (InjectedFailure, Kind, Policy, Supervisor, UPLOAD_WORKER)

RESTART = Kind("restarting", Policy.RESTART, service=True, backoff_base=1.0, backoff_max=4.0,
               healthy_after=100.0, failed_after=3)
REPORT = Kind("reported", Policy.REPORT, failed_after=1)
DROP = Kind("dropped", Policy.DROP)
KINDS = (RESTART, REPORT, DROP)


class Flaky:
    """Fails `failures` times (with `make()`'s exception), then returns; records start times."""

    def __init__(self, failures: int, make: Any = lambda: RuntimeError("bug")):
        self.failures = failures
        self.make = make
        self.starts: list[float] = []

    async def __call__(self) -> None:
        self.starts.append(trio.current_time())
        await trio.sleep(0)
        if len(self.starts) <= self.failures:
            raise self.make()


async def test_restart_with_doubling_backoff_until_it_succeeds(autojump_clock: trio.testing.MockClock,
                                                               caplog: pytest.LogCaptureFixture):
    sup = Supervisor(KINDS, injections={})
    task = Flaky(4)
    async with trio.open_nursery() as nursery:
        sup.bind(nursery)
        assert sup.spawn(task, kind=RESTART, name="w1")
    assert len(task.starts) == 5
    gaps = [b - a for a, b in zip(task.starts, task.starts[1:])]
    for gap, bound in zip(gaps, (1.0, 2.0, 4.0, 4.0)):  # doubling, capped, jitter 0.5..1
        assert bound * 0.5 <= gap <= bound + 1e-6
    status = sup.status()
    assert status["kinds"]["restarting"]["failures"] == 4
    assert status["kinds"]["restarting"]["state"] == "ok"  # it succeeded in the end
    assert [f["action"] for f in status["recent_failures"]] == ["restarting it"] * 4
    assert status["recent_failures"][0]["error"] == "RuntimeError: bug"
    assert status["recent_failures"][0]["task"] == "w1"
    assert sum("background restarting task w1 failed" in r.getMessage() for r in caplog.records) == 4


async def test_repeated_failures_mark_a_restarting_kind_failed_while_it_keeps_restarting(
        autojump_clock: trio.testing.MockClock):
    sup = Supervisor(KINDS, injections={})
    task = Flaky(10 ** 6)
    with trio.move_on_after(30):
        async with trio.open_nursery() as nursery:
            sup.bind(nursery)
            sup.spawn(task, kind=RESTART)
            while len(task.starts) < 3:
                await sup.changed().wait()
            await trio.sleep(0.1)
            kind = sup.status()["kinds"]["restarting"]
            assert kind["state"] == "failed" and kind["restarting"] == 1
            await trio.sleep(20)
            assert len(task.starts) > 5  # still restarted (at the capped backoff)
            nursery.cancel_scope.cancel()
    assert sup.status()["kinds"]["restarting"]["running"] == 0


async def test_report_marks_failed_through_the_owner_and_never_restarts():
    sup = Supervisor(KINDS, injections={})
    seen: list[BaseException] = []
    task = Flaky(1, lambda: OSError(errno.ENOSPC, "No space left on device"))
    async with trio.open_nursery() as nursery:
        sup.bind(nursery)
        sup.spawn(task, kind=REPORT, name="bucket/dir", on_failure=seen.append)
    assert len(task.starts) == 1
    assert isinstance(seen[0], OSError) and seen[0].errno == errno.ENOSPC
    status = sup.status()
    assert status["kinds"]["reported"]["state"] == "failed"
    assert status["recent_failures"][-1]["action"] == "marked failed"
    assert "No space left" in status["recent_failures"][-1]["error"]
    async with trio.open_nursery() as nursery:  # a later task of the kind succeeds: ok again
        sup.bind(nursery)
        sup.spawn(Flaky(0), kind=REPORT)
    assert sup.status()["kinds"]["reported"]["state"] == "ok"


async def test_a_failing_failure_handler_is_logged_not_raised(caplog: pytest.LogCaptureFixture):
    sup = Supervisor(KINDS, injections={})

    def broken(exc: BaseException) -> None:
        raise ValueError("handler bug")

    async with trio.open_nursery() as nursery:
        sup.bind(nursery)
        sup.spawn(Flaky(1), kind=REPORT, on_failure=broken)
    assert any("failure handler" in r.getMessage() for r in caplog.records)


async def test_drop_logs_with_traceback_and_forgets(caplog: pytest.LogCaptureFixture):
    sup = Supervisor(KINDS, injections={})
    task = Flaky(1)
    with caplog.at_level(logging.ERROR, logger="s3fuse.util.supervisor"):
        async with trio.open_nursery() as nursery:
            sup.bind(nursery)
            sup.spawn(task, kind=DROP)
    assert len(task.starts) == 1
    record, = [r for r in caplog.records if r.name == "s3fuse.util.supervisor"]
    assert record.exc_info is not None and "dropped" in record.getMessage()
    assert sup.status()["kinds"]["dropped"] == {"policy": "drop", "running": 0, "restarting": 0,
                                                "failures": 1, "state": "ok"}


async def test_an_exception_group_or_a_raw_oserror_never_ends_the_root_nursery():
    sup = Supervisor(KINDS, injections={})
    finished = trio.Event()

    async def nested_nursery() -> None:
        async def disk_full() -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        async with trio.open_nursery() as inner:
            inner.start_soon(disk_full)
            inner.start_soon(trio.sleep_forever)

    async def sibling() -> None:
        await trio.sleep(0.05)
        finished.set()

    async with trio.open_nursery() as root:
        sup.bind(root)
        sup.spawn(nested_nursery, kind=DROP)
        sup.spawn(Flaky(1, lambda: OSError(errno.ENOSPC, "raw")), kind=REPORT)
        root.start_soon(sibling)
    assert finished.is_set()
    failures = sup.status()["recent_failures"]
    assert {f["kind"] for f in failures} == {"dropped", "reported"}
    assert any("No space left" in f["error"] for f in failures)


async def test_cancellation_propagates_from_running_tasks_and_from_backoff(
        autojump_clock: trio.testing.MockClock):
    sup = Supervisor(KINDS, injections={})
    ran_after_cancel = []

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            ran_after_cancel.append("cleanup")

    always_failing = Flaky(10 ** 6)
    async with trio.open_nursery() as nursery:
        sup.bind(nursery)
        sup.spawn(forever, kind=RESTART)
        sup.spawn(always_failing, kind=RESTART)
        await trio.sleep(0.5)  # the failing one is in its backoff now
        nursery.cancel_scope.cancel()
    assert ran_after_cancel == ["cleanup"]  # cancelled once, not restarted
    assert len(always_failing.starts) == 1
    kinds = sup.status()["kinds"]["restarting"]
    assert kinds["running"] == 0 and kinds["restarting"] == 0


async def test_base_exceptions_in_a_group_propagate_and_the_rest_is_handled():
    sup = Supervisor(KINDS, injections={})

    async def mixed() -> None:
        raise BaseExceptionGroup("mixed", [ValueError("bug"), KeyboardInterrupt()])

    with pytest.raises(BaseExceptionGroup) as info:
        await sup.run(mixed, kind=RESTART)
    assert info.group_contains(KeyboardInterrupt)
    assert not info.group_contains(ValueError)
    assert sup.status()["recent_failures"][-1]["error"] == "ValueError: bug"


async def test_run_in_place_and_unbound_spawn():
    sup = Supervisor(KINDS, injections={})
    assert not sup.active
    assert sup.spawn(Flaky(0), kind=DROP) is False  # nothing to run it in: skipped
    task = Flaky(1)
    await sup.run(task, kind=DROP)  # returns after the failure: dropped
    assert len(task.starts) == 1


async def test_injected_failure_hits_the_nth_start_of_its_kind(autojump_clock: trio.testing.MockClock):
    sup = Supervisor((UPLOAD_WORKER,), injections={"upload-worker": 2})
    first, second = Flaky(0), Flaky(0)
    async with trio.open_nursery() as nursery:
        sup.bind(nursery)
        sup.spawn(first, kind=UPLOAD_WORKER, name="first")
        await trio.sleep(0.01)
        sup.spawn(second, kind=UPLOAD_WORKER, name="second")
    assert first.starts == [0.0]    # the first start was not hit: ran at once, no backoff
    assert len(second.starts) == 1  # restarted after the injected failure, then ran
    assert second.starts[0] > 0.01  # ... after the backoff
    failure, = sup.status()["recent_failures"]
    assert failure["kind"] == "upload-worker" and InjectedFailure.__name__ in failure["error"]
    assert failure["task"] == "second"


# ---------------------------------------------------------------- link events


async def test_link_transitions_from_worker_threads_wake_trio_waiters():
    link = Link()
    woke: list[str] = []

    async def offline_waiter() -> None:
        await link.wait_offline()
        woke.append("offline")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(offline_waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            await trio.to_thread.run_sync(link.failed, "connect timeout")
            await link.wait_offline()
        assert woke == ["offline"]
        changed = link.changed()
        thread = threading.Thread(target=link.succeeded)  # a plain thread, not trio's
        thread.start()
        await changed.wait()  # delivered to the loop, not only visible in `online`
        thread.join()
        assert link.online


async def test_first_set_returns_on_any_event():
    a, b = trio.Event(), trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_set, a, b)
            await trio.testing.wait_all_tasks_blocked()
            b.set()
        await first_set(a, b)  # already set: at once


# ---------------------------------------------------------------- the idle query


async def test_idle_waits_for_transient_tasks_but_not_for_services():
    sup = Supervisor(KINDS, injections={})
    idle = Idle(sup, None, Link())
    release = trio.Event()

    async def ahead() -> None:
        await release.wait()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            sup.bind(nursery)
            sup.spawn(trio.sleep_forever, kind=RESTART)  # a service: never "in flight"
            await trio.testing.wait_all_tasks_blocked()
            assert (await idle.state())["idle"]
            sup.spawn(ahead, kind=DROP)
            await trio.testing.wait_all_tasks_blocked()
            state = await idle.wait(0.05)
            assert state == {"idle": False, "tasks": {"dropped": 1}, "uploads": None}
            nursery.start_soon(_set_later, release)
            assert (await idle.wait(5))["idle"]
            nursery.cancel_scope.cancel()


async def _set_later(event: trio.Event) -> None:
    await trio.sleep(0.05)
    event.set()
