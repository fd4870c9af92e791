"""Small process and port helpers shared by the test fixtures and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

# Ports are drawn below Linux's default ephemeral range (32768-60999) so that
# outgoing client connections never steal them between choice and bind.
_PORT_LOW, _PORT_HIGH = 10000, 22767


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP listener could bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, offset: int = 0, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct free ports P; with ``offset``, P+offset is free too."""
    chosen: list[int] = []
    taken: set[int] = set()
    rng = random.Random()
    for _ in range(10000):
        if len(chosen) == count:
            return chosen
        port = rng.randint(_PORT_LOW, _PORT_HIGH)
        pair = {port, port + offset}
        if pair & taken or not all(port_is_free(p, host) for p in pair):
            continue
        chosen.append(port)
        taken |= pair
    raise RuntimeError(f"could not find {count} free port(s) with offset {offset}")


def tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session),
    SIGKILL it after ``grace`` seconds, and reap ``proc``."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Kill stragglers of the group even when the leader already exited.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable (D state): give up
        proc.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def mountpoints() -> set[str]:
    """Every mountpoint in this mount namespace, from /proc/self/mounts.

    Unlike os.path.ismount this also sees a dead FUSE mount (ENOTCONN).
    """
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return {
            line.split()[1].encode().decode("unicode_escape")  # undo \040-style escapes
            for line in mounts
        }


def is_mounted(path: Path | str) -> bool:
    return os.path.abspath(path) in mountpoints()


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
