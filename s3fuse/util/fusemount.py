"""The moment of mounting: one mount per mountpoint, and why the kernel mount failed.

Two `s3fuse mount` of one directory started together both pass the front's "not a mount
point" check, and both mounts would stack (the lower daemon hidden, `umount` confused). The
daemon therefore takes an exclusive lock for the mountpoint and checks again under it, right
before libfuse mounts. The lock is a file of the mounting user's own (`lock_dir`), named by
the directory's device and inode: a lock on the directory itself could be taken by any user
who may read it, and kept every mount there from starting (root's service included).

A non-root mount goes through fusermount3, which libfuse runs with our stderr: its reason
(no write access, allow_other not allowed, no-new-privileges) was in the log only, while
libfuse's error says "fuse_session_mount failed". The mount captures that stderr and puts
fusermount3's line in the error, with a hint.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Callable

from ..errors import UsageError

log = logging.getLogger(__name__)

#: fusermount3's refusals -> what to do about them.
HINTS = (
    ("no write access to mountpoint", "mount on a directory you own or may write, or as root"),
    ("user_allow_other", "as root, add user_allow_other to /etc/fuse.conf; or mount "
                         "without --allow-other"),
    ("Operation not permitted", "fusermount3 could not become root: no-new-privileges is set "
                                "(systemd NoNewPrivileges= or a setting implying it, a "
                                "container), or fusermount3 is not setuid root"),
    ("fuse device not found", "load the fuse module: modprobe fuse"),
    ("failed to open /dev/fuse", "this user may not open /dev/fuse: its mode (the fuse3 "
                                 "package makes it 0666) or a container's device policy"),
)


def lock_dir() -> Path:
    """Where this user's mountpoint locks live: a directory only they may write."""
    if os.geteuid() == 0:
        return Path("/run/s3fuse")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "s3fuse"
    return Path.home() / ".cache" / "s3fuse" / "locks"


def _lock_file(path: Path, directory: Path) -> int | None:
    """An fd of the lock file of the mountpoint at `path`; None when `directory` cannot be
    made ours alone (then the mount goes on without the lock: it only guards a race)."""
    try:
        st = os.stat(path)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        own = os.stat(directory)
        if own.st_uid != os.geteuid() or own.st_mode & 0o022:
            log.warning("mountpoint lock dir %s is not this user's alone: mounting without "
                        "the lock", directory)
            return None
        return os.open(directory / f"mount-{st.st_dev}-{st.st_ino}.lock",
                       os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.warning("no mountpoint lock in %s (%s): mounting without it", directory,
                    exc.strerror or exc)
        return None


def claim_mountpoint(path: Path, directory: Path | None = None) -> int | None:
    """Lock the mountpoint at `path` for this mount (an fd to keep open while mounted, or
    None when no lock could be had); UsageError when another mount holds it or something
    is mounted there already."""
    fd = _lock_file(path, directory or lock_dir())
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.ismount(path):
            raise UsageError(f"{path} is already a mount point")
    except BlockingIOError:
        os.close(fd)  # type: ignore[arg-type]
        raise UsageError(f"mountpoint {path} is being mounted by another process") from None
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return fd


def mount_with_reason(init: Callable[[], object]) -> None:
    """Run `init` (pyfuse3.init) with stderr captured; on its RuntimeError raise one whose
    text has fusermount3's (or libfuse's) own line and a hint. What was captured still
    reaches the real stderr (the log)."""
    with tempfile.TemporaryFile() as captured:
        saved = _stderr_to(captured)
        try:
            init()
        except RuntimeError as exc:
            failure: RuntimeError | None = exc
        else:
            failure = None
        finally:
            text = _stderr_back(saved, captured)
    if failure is not None:
        raise RuntimeError(explain(str(failure), text)) from None


def _stderr_to(target: IO[bytes]) -> int:
    """Point fd 2 at `target`; the saved fd to restore it with."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(target.fileno(), 2)
    return saved


def _stderr_back(saved: int, captured: IO[bytes]) -> str:
    """Restore fd 2, copy what was captured to it, and return that text."""
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    captured.seek(0)
    data = captured.read()
    if data:
        os.write(2, data)
    return data.decode(errors="replace")


def explain(failure: str, stderr: str) -> str:
    """libfuse's `failure`, or better the last line fusermount3 or libfuse wrote, with a
    hint when it is a refusal we know."""
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip().startswith(("fusermount", "fuse:"))]
    if not lines:
        return failure
    reason = lines[-1]
    hint = next((text for pattern, text in HINTS if pattern in reason), None)
    return f"{reason} ({hint})" if hint else reason
