"""The supervisor: every background task runs under a declared failure policy for its kind.

Background work (upload workers, the sync pass, read-ahead and cache writes, list-ahead,
pins, the offline probe, the systemd status line) shares the daemon's root nursery, where
one uncaught exception would end the nursery and with it the mount. Here a task's failure
(any Exception, an ExceptionGroup from a nested nursery, a raw OSError such as ENOSPC) is
handled by its kind's policy instead, and never leaves the supervisor; cancellation (and
KeyboardInterrupt/SystemExit) always passes through, so unmount stays clean.

| policy  | on a failure                                     | kinds                          |
|---------|--------------------------------------------------|--------------------------------|
| RESTART | log, restart after a backoff (doubling, jitter)  | upload workers, sync, probe, … |
| REPORT  | log, mark the task failed (the owner's callback) | pins                           |
| DROP    | log, forget it (it was only ahead-of-time work)  | read-ahead, cache writes, …    |

Any kind that fails `failed_after` times in a row is shown as failed in `s3fuse status`
until a task of it succeeds again. Running counts per kind and the recent failures are
in `status()`; `changed()` wakes whoever waits for background work to settle (the idle
query). Components get the Supervisor at construction; the daemon binds it to its
nursery. Unbound, `spawn` does nothing and returns False: tools without a daemon skip
background work, which is always safe for ahead-of-time work.

Tests inject failures with `S3FUSE_TEST_TASK_FAILURE=KIND[:N][,KIND[:N]...]` (read once,
at import): the N-th (default first) start of a task of KIND raises InjectedFailure.
"""
from __future__ import annotations

import enum
import logging
import os
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import trio

log = logging.getLogger(__name__)

RECENT_FAILURES = 20


class Policy(enum.Enum):
    RESTART = "restart"
    REPORT = "report"
    DROP = "drop"


@dataclass(frozen=True)
class Kind:
    """A kind of background work and what happens when one of its tasks fails."""

    name: str
    policy: Policy
    #: a long-running service (always there): not "work in flight" for the idle query
    service: bool = False
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    #: a restarted task that ran this long without failing counts as healthy again
    healthy_after: float = 60.0
    #: consecutive failures after which the kind shows as failed
    failed_after: int = 3


UPLOAD_QUEUE = Kind("upload-queue", Policy.RESTART, service=True)
UPLOAD_WORKER = Kind("upload-worker", Policy.RESTART, service=True)
UPLOAD_SYNC = Kind("upload-sync", Policy.RESTART, service=True)
UPLOAD_CLEANUP = Kind("upload-cleanup", Policy.DROP)
PROBE = Kind("probe", Policy.RESTART, service=True)
LINK_WATCH = Kind("link-watch", Policy.RESTART, service=True)
STATUS_REPORT = Kind("status-report", Policy.RESTART, service=True)
PIN = Kind("pin", Policy.REPORT, failed_after=1)
READ_AHEAD = Kind("read-ahead", Policy.DROP)
CACHE_WRITE = Kind("cache-write", Policy.DROP)
LIST_AHEAD = Kind("list-ahead", Policy.DROP)
BUFFER_TRIM = Kind("buffer-trim", Policy.RESTART, service=True)
INODE_CAP = Kind("inode-cap", Policy.RESTART, service=True)
PAGE_DROP = Kind("page-drop", Policy.RESTART, service=True)
INODE_SAVE = Kind("inode-save", Policy.RESTART, service=True)

KINDS = (UPLOAD_QUEUE, UPLOAD_WORKER, UPLOAD_SYNC, UPLOAD_CLEANUP, PROBE, LINK_WATCH,
         STATUS_REPORT, PIN, READ_AHEAD, CACHE_WRITE, LIST_AHEAD, BUFFER_TRIM, INODE_CAP,
         PAGE_DROP, INODE_SAVE)


class InjectedFailure(RuntimeError):
    """A failure injected by S3FUSE_TEST_TASK_FAILURE (tests only)."""


def _parse_injections(spec: str) -> dict[str, int]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, nth = item.partition(":")
        points[kind] = int(nth) if nth.isdigit() and int(nth) > 0 else 1
    return points


_INJECT = _parse_injections(os.environ.get("S3FUSE_TEST_TASK_FAILURE", ""))


@dataclass
class _Stats:
    running: int = 0
    restarting: int = 0
    started: int = 0
    failures: int = 0
    consecutive: int = 0


def _split(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(the failure to handle, what must propagate): Exceptions are failures; Cancelled,
    KeyboardInterrupt and SystemExit propagate, also out of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        failure, rest = exc.split(Exception)
        return failure, rest
    return (exc, None) if isinstance(exc, Exception) else (None, exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Supervisor:
    """Runs background tasks under their kind's failure policy (see the module docstring)."""

    def __init__(self, kinds: tuple[Kind, ...] = KINDS,
                 injections: Mapping[str, int] | None = None) -> None:
        self._nursery: trio.Nursery | None = None
        self._kinds = {kind.name: kind for kind in kinds}
        self._stats = {kind.name: _Stats() for kind in kinds}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)
        self._inject = dict(_INJECT if injections is None else injections)
        self._changed = trio.Event()

    def bind(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def active(self) -> bool:
        return self._nursery is not None

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any, kind: Kind = READ_AHEAD,
              name: str = "", on_failure: Callable[[BaseException], None] | None = None) -> bool:
        """Start `fn(*args)` under `kind`'s policy; False (nothing started) when unbound."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(self._run_task, fn, args, kind, name, on_failure,
                                 name=f"{kind.name} {name or getattr(fn, '__name__', '')}".strip())
        return True

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, kind: Kind,
                  name: str = "", on_failure: Callable[[BaseException], None] | None = None) -> None:
        """Run `fn(*args)` in the calling task under `kind`'s policy: returns when it
        returns, or after a failure it does not restart; raises only cancellation."""
        await self._run_task(fn, args, kind, name, on_failure)

    async def _run_task(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kind: Kind,
                        name: str, on_failure: Callable[[BaseException], None] | None) -> None:
        stats = self._stats.setdefault(kind.name, _Stats())
        self._kinds.setdefault(kind.name, kind)
        attempt = 0
        while True:
            stats.running += 1
            stats.started += 1
            self._fire()
            began = trio.current_time()
            try:
                self._maybe_inject(kind)
                await fn(*args)
            except BaseException as exc:  # noqa: BLE001 - split below: cancellation propagates
                failure, passthrough = _split(exc)
                if failure is not None:
                    if trio.current_time() - began >= kind.healthy_after:  # a new streak
                        attempt, stats.consecutive = 0, 0
                    attempt += 1
                    self._failed(kind, name, failure, on_failure)
                if passthrough is exc:
                    raise
                if passthrough is not None:
                    raise passthrough from None
            else:
                stats.consecutive = 0
                return
            finally:
                stats.running -= 1
                self._fire()
            if kind.policy is not Policy.RESTART:
                return
            stats.restarting += 1
            self._fire()
            try:
                await trio.sleep(self._backoff(kind, attempt))
            finally:
                stats.restarting -= 1

    def _maybe_inject(self, kind: Kind) -> None:
        left = self._inject.get(kind.name)
        if left is None:
            return
        if left > 1:
            self._inject[kind.name] = left - 1
            return
        del self._inject[kind.name]
        raise InjectedFailure(f"S3FUSE_TEST_TASK_FAILURE: injected failure of a {kind.name} task")

    @staticmethod
    def _backoff(kind: Kind, attempt: int) -> float:
        return min(kind.backoff_max, kind.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _failed(self, kind: Kind, name: str, exc: BaseException,
                on_failure: Callable[[BaseException], None] | None) -> None:
        stats = self._stats[kind.name]
        stats.failures += 1
        stats.consecutive += 1
        action = {Policy.RESTART: "restarting it", Policy.REPORT: "marked failed",
                  Policy.DROP: "dropped"}[kind.policy]
        what = f"{kind.name} task" + (f" {name}" if name else "")
        log.error("background %s failed (%s): %s", what, action, _describe(exc), exc_info=exc)
        self._recent.append({"time": time.time(), "kind": kind.name, "task": name,
                             "error": _describe(exc), "action": action})
        if on_failure is not None:
            try:
                on_failure(exc)
            except Exception:  # noqa: BLE001 - a reporting hook must not end the nursery
                log.exception("failure handler of the %s failed", what)

    def _fire(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def changed(self) -> trio.Event:
        """Set at the next start or end of any task (for the idle query)."""
        return self._changed

    def in_flight(self) -> dict[str, int]:
        """Tasks of non-service kinds running or about to restart, per kind (none: settled)."""
        return {name: stats.running + stats.restarting for name, stats in self._stats.items()
                if not self._kinds[name].service and stats.running + stats.restarting}

    def status(self) -> dict[str, Any]:
        """Per kind: policy, running, restarting, failures, state; and recent failures."""
        kinds = {}
        for name, stats in self._stats.items():
            kind = self._kinds[name]
            kinds[name] = {"policy": kind.policy.value, "running": stats.running,
                           "restarting": stats.restarting, "failures": stats.failures,
                           "state": "failed" if stats.consecutive >= kind.failed_after else "ok"}
        return {"kinds": kinds, "recent_failures": list(self._recent)}
