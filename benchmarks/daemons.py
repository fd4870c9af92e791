"""Finding, watching and stopping a FUSE daemon that is not our child.

s3fs and rclone run daemonized, as their users run them: the command we start forks (or
re-executes itself) and exits once the mount is live, so the process that serves the mount
is not the one we started. It is found afterwards as the process that holds ``/dev/fuse``
open with the mountpoint among its arguments; its memory and CPU are read from /proc, and it
is stopped by pid. We make ourselves the subreaper of our descendants so that a daemon that
exits comes back to us to be reaped (this machine's init leaves zombies behind).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")
FUSE_DEVICE = "/dev/fuse"
PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the subreaper of its descendants (prctl), so the daemons our
    commands fork are reparented to us, not to init, and ``alive`` can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER): %s", os.strerror(ctypes.get_errno()))


def cmdline(pid: int, proc: Path = PROC) -> list[str]:
    """The arguments of process ``pid`` ([] when it is gone or a kernel thread)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def holds_fuse_device(pid: int, proc: Path = PROC) -> bool:
    """True when process ``pid`` has ``/dev/fuse`` open (it serves a FUSE mount)."""
    try:
        fds = list((proc / str(pid) / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == FUSE_DEVICE:
                return True
        except OSError:
            continue
    return False


def find_daemon(mountpoint: Path, exclude: int | None = None, proc: Path = PROC) -> int | None:
    """The pid of the process serving the FUSE mount at ``mountpoint``: the one holding
    ``/dev/fuse`` with ``mountpoint`` as an argument (``exclude``: a launcher still
    exiting). None when there is none; the lowest pid when several match (a daemon's
    helper processes come after it)."""
    wanted = {str(mountpoint), os.path.abspath(mountpoint)}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        pid = int(entry.name)
        if wanted & set(cmdline(pid, proc)) and holds_fuse_device(pid, proc):
            found.append(pid)
    return min(found) if found else None


def alive(pid: int, proc: Path = PROC) -> bool:
    """True while ``pid`` runs. A zombie has exited: reaped here when it is our child."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] != "Z":
        return True
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # someone else's zombie
        pass
    return False


def wait_exit(pid: int, timeout: float, interval: float = 0.05) -> bool:
    """Wait until ``pid`` has exited; False when it still runs after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def stop(pid: int, grace: float = 2.0) -> None:
    """SIGTERM ``pid``, SIGKILL it after ``grace`` s, and wait (10 s at most) until gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if not alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(pid, wait):
            return
    log.warning("daemon %d survived SIGKILL (uninterruptible sleep?)", pid)


def peak_rss_kib(pid: int, proc: Path = PROC) -> int:
    """VmHWM (peak resident memory since the process started, KiB); 0 when it is gone."""
    try:
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines()
                 if line.startswith("VmHWM:")), 0)


def cpu_and_writes(pid: int, proc: Path = PROC) -> tuple[int, int]:
    """(CPU clock ticks used, bytes written to storage) of ``pid`` so far; OSError when
    it is gone."""
    fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    io = dict(line.split(": ") for line in (proc / str(pid) / "io").read_text().splitlines())
    return int(fields[11]) + int(fields[12]), int(io["write_bytes"])
