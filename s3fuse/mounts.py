"""Finding and talking to running s3fuse mounts (for status/umount), and spawning one."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .control import PID, STATUS
from .errors import UsageError
from .util.procs import pid_alive

FSTYPE = "fuse.s3fuse"


def s3fuse_mounts() -> list[Path]:
    """Mountpoints of every s3fuse filesystem on this machine."""
    found = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == FSTYPE:
            found.append(Path(fields[1].replace("\\040", " ").replace("\\011", "\t")
                              .replace("\\012", "\n").replace("\\134", "\\")))
    return found


def is_s3fuse_mount(path: Path) -> bool:
    try:
        resolved = path.resolve() if path.exists() else path.absolute()
    except OSError:  # another user's mount without allow_other: EACCES even to lstat
        resolved = path.absolute()
    return any(m == resolved or m == path.absolute() for m in s3fuse_mounts())


def read_status(mountpoint: Path) -> dict[str, Any]:
    raw = os.getxattr(str(mountpoint), STATUS)
    return json.loads(raw)


def daemon_pid(mountpoint: Path) -> int:
    return int(os.getxattr(str(mountpoint), PID))


def fusermount_unmount(mountpoint: Path, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    return subprocess.run(args, capture_output=True, text=True)


def spawn_background(argv: list[str], log_path: Path, timeout: float = 120.0,
                     program: list[str] | None = None) -> tuple[int, str]:
    """Start `s3fuse <argv> --foreground` (`program` instead of s3fuse: tests) detached;
    wait until it says READY or fails.

    Returns (exit code, message: why it failed, or a warning of a mount that started).
    The daemon's output goes to `log_path`.
    """
    read_fd, write_fd = os.pipe()
    cmd = [*(program or [sys.executable, "-m", "s3fuse"]), *argv, "--foreground",
           "--ready-fd", str(write_fd)]
    try:  # never through a symlink planted in place of the log, and never readable by others
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        return 2, f"cannot open the daemon log {log_path}: {exc.strerror}"
    start = os.fstat(fd).st_size  # the log of this start begins here
    with open(fd, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.terminate()
                return 1, f"the daemon did not become ready within {timeout:.0f}s (log: {log_path})"
            ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                buf += chunk
    finally:
        os.close(read_fd)
    line = buf.decode(errors="replace").strip()
    if line == "READY" or line.startswith("READY "):  # with a warning for the user
        return 0, line[6:]
    code = proc.wait(timeout=30) if proc.poll() is None else proc.returncode
    if line.startswith("ERROR "):
        return (code or 1), line[6:]
    last = last_log_line(log_path, start)
    return (code or 1), (f"{last} (the daemon exited with {code}; log: {log_path})" if last
                         else f"the daemon exited with {code} (log: {log_path})")


def last_log_line(log_path: Path, start: int, limit: int = 64 << 10) -> str:
    """The last line the daemon wrote to its log since `start`, for a daemon that died
    without a word on its ready pipe (a traceback's last line is its exception)."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(start, os.fstat(log.fileno()).st_size - limit))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("s3fuse: ") if lines else ""


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until the daemon `pid` has exited (it unmounts before it exits). Not until the
    path stops being a mount: another mount beneath this one (or one the daemon could not
    remove) would make us wait the whole timeout and call a gone daemon still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def require_mount(path: Path) -> Path:
    if not is_s3fuse_mount(path):
        raise UsageError(f"{path} is not an s3fuse mount")
    return path
