"""util/daemonpool.py: futures as ThreadPoolExecutor gives them, but a part stuck on a
black-holed connection no longer keeps the process alive after it is done."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from s3fuse.util.daemonpool import DaemonPool


def test_results_errors_and_cancelled_work() -> None:
    gate = threading.Event()
    with DaemonPool(1, "t") as pool:
        first = pool.submit(lambda: gate.wait(10) and "first")
        failing = pool.submit(lambda: 1 / 0)
        never = pool.submit(lambda: "never")
        assert never.cancel()  # not started: the one worker is busy with `first`
        gate.set()
    assert first.result() == "first" and never.cancelled()
    with pytest.raises(ZeroDivisionError):
        failing.result()


def test_shutdown_cancels_what_has_not_started() -> None:
    gate = threading.Event()
    pool = DaemonPool(1, "t")
    running = pool.submit(gate.wait, 10)
    waiting = pool.submit(lambda: "late")
    time.sleep(0.1)
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert running.result(timeout=10) is True and waiting.cancelled()


def test_a_stuck_task_does_not_hold_up_the_exit() -> None:
    """With ThreadPoolExecutor the interpreter joins its threads at exit: 30 s here."""
    code = ("import time; from s3fuse.util.daemonpool import DaemonPool; "
            "DaemonPool(2, 'stuck').submit(time.sleep, 30); print('done')")
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.stdout == "done\n" and time.monotonic() - began < 10


def test_work_submitted_after_shutdown_is_refused() -> None:
    """Its workers are gone: the future would never run (a wait on it would hang)."""
    pool = DaemonPool(1, "t")
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)
