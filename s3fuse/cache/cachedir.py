"""The cache directory: created private, refused when unsafe, locked per daemon.

"Unsafe" means someone else could change what the daemon reads back: the
directory, or anything in its top two levels (meta.sqlite, journal.sqlite,
blocks/cache.db, staging files, manifest indexes, the log), is a symlink, is
owned by another user, or is writable by group or others. Such a cache is
refused (one line, exit 2): its SQLite files decide what is served and uploaded.
Merely readable by others is tightened to 0700/0600 instead, with one log line.
"""
from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from ..errors import UsageError

log = logging.getLogger(__name__)


def secure_dir(path: Path) -> Path:
    """Create `path` (0700) or check an existing one; refuse what others could tamper with."""
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create cache dir {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"cache dir {path} is not a plain directory")
    if st.st_uid != os.geteuid():
        raise UsageError(f"cache dir {path} is owned by uid {st.st_uid}, not by us: refusing it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"cache dir {path} is writable by group/others: refusing it (chmod 700)")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def secure_cache_dir(path: Path) -> Path:
    """`secure_dir(path)` plus the same checks on what is already inside it, and that
    files can be made in it (else one line naming the cache dir, exit 2, whichever file
    the mount would have failed to make first: its log, its lock)."""
    secure_dir(path)
    check_entries(path)
    if not os.access(path, os.W_OK | os.X_OK) or _read_only_fs(path):
        raise UsageError(f"cache dir {path} is not writable (give a writable --cache-dir)")
    return path


def _read_only_fs(path: Path) -> bool:
    """On a file system mounted read-only (root's os.access ignores that)?"""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_entries(cache_dir: Path, depth: int = 2) -> None:
    """Refuse symlinks, foreign owners and group/other-writable modes in the top `depth`
    levels of the cache (block files deeper down are verified by their headers)."""
    uid = os.geteuid()
    try:
        entries = list(os.scandir(cache_dir))
    except OSError as exc:
        raise UsageError(f"cannot read cache dir {cache_dir}: {exc.strerror}") from None
    for entry in entries:
        path = Path(entry.path)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"cache entry {path} is a symlink: refusing the cache dir")
        if st.st_uid != uid:
            raise UsageError(f"cache entry {path} is owned by uid {st.st_uid}, not by us: "
                             "refusing the cache dir")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UsageError(f"cache entry {path} is writable by group/others: refusing the "
                             f"cache dir (chmod -R go-rwx {cache_dir})")
        is_dir = stat.S_ISDIR(st.st_mode)
        if st.st_mode & 0o077:
            log.info("tightening %s to %s", path, "0700" if is_dir else "0600")
            os.chmod(path, 0o700 if is_dir else 0o600, follow_symlinks=False)
        if is_dir and depth > 1:
            check_entries(path, depth - 1)


class CacheLock:
    """An exclusive flock on `<cache>/lock`: one daemon per cache directory."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UsageError(f"cache dir {self.path.parent} is in use by pid {holder}: "
                             "give each mount its own --cache-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(cache_dir: Path) -> int | None:
        """The pid holding the lock on `cache_dir`, or None when it is free."""
        path = cache_dir / "lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None
