"""A thread pool whose threads never hold up the daemon's exit.

concurrent.futures.ThreadPoolExecutor joins its threads when the interpreter exits. The
parts of a multipart upload (or copy) run in such threads, and at unmount the upload
itself is abandoned (it stays journalled: the next mount sends it again), but a part
stuck on a black-holed connection kept the process alive for its whole read timeout and
retries (~30 s, ~90 s with the default timeout) after "unmounted". These threads are
daemon threads: the process ends without them. Same interface as far as the uploads use
it: `submit` gives a Future, `shutdown(cancel_futures=)`, a `with` block waits for the
running ones.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_STOP = None  # in the queue: a worker ends


class DaemonPool:
    """`workers` daemon threads named `name-N`, taking work in the order submitted."""

    def __init__(self, workers: int, name: str) -> None:
        self._shut = False
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]
                                      | None] = queue.SimpleQueue()
        self._pending: list[Future[Any]] = []
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True)
                         for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._shut:  # its workers are gone: the future would never run
            raise RuntimeError("cannot submit to a pool that was shut down")
        future: Future[T] = Future()
        self._pending.append(future)
        self._work.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more work; `cancel_futures`: what has not started never will. `wait`: until
        the running ones end."""
        self._shut = True
        if cancel_futures:
            for future in self._pending:
                future.cancel()
        for _ in self._threads:
            self._work.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()

    def __enter__(self) -> DaemonPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _run(self) -> None:
        while (item := self._work.get()) is not _STOP:
            future, fn, args = item  # type: ignore[misc]
            if not future.set_running_or_notify_cancel():
                continue  # cancelled before it started
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - the caller's to see, via the future
                future.set_exception(exc)
