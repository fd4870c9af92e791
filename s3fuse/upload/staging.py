"""Staging files: the local bytes of written files, until S3 has them.

`<cache>/staging/<32 hex>`: the directory is 0700, files 0600, and names are random
ids, never derived from a key. A staging file is written by the FUSE layer while
the file is open; once submitted to the upload queue it is immutable (a later open
for writing copies it into a new staging file). All methods but `new_id` block: call
them from a worker thread. Empty files are made ahead for new files (SPARES).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import secrets
import threading
import zlib
from pathlib import Path
from typing import Callable, Iterator

from ..cache.cachedir import secure_dir

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: fsync at close does all the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a staging file to disk, without waiting (blocks only when
    the device queue is full): a large file's fsync at close then has little left to do."""
    if _SYNC_RANGE is not None:
        _SYNC_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


#: Empty staging files made ahead, in a worker thread, for new files to take (`new_id`):
#: creating one on the trio loop at a small file's close cost ~160 us there during a
#: `cp -r` of 1,000 files (ext4 creates waiting on the journal the group commit's fsyncs
#: keep busy), a sixth of the loop's time per file.
SPARES = 64


class Staging:
    def __init__(self, directory: Path, claim: Callable[..., None] | None = None,
                 claim_now: Callable[[int, bool], bool] | None = None):
        """`claim(n)`: room for n more bytes above the cache disk's free-space reserve, or
        ENOSPC (BlockCache.claim: evicting cached blocks first). `claim_now(n)`: the same
        room if there is some without evicting (BlockCache.claim_now; `fresh`: by the free
        space now), else False."""
        self.directory = secure_dir(directory)
        self._claim = claim
        self._claim_now = claim_now
        self._made: dict[str, int] = {}  # made ahead and not taken by `make`: id -> open fd
        self._spares: list[str] = []  # ... of them, not handed out by `new_id` yet
        self._made_lock = threading.Lock()

    def wants_spares(self) -> bool:
        """Should `make_spares` run (fewer than half of SPARES left)? Does not block."""
        return len(self._spares) < SPARES // 2

    def make_spares(self) -> None:
        """Make empty staging files until there are SPARES for `new_id` to hand out (fewer
        when the disk refuses: new files then make their own, and say why)."""
        while len(self._spares) < SPARES:
            staging_id = secrets.token_hex(16)
            try:
                fd = self._open_new(staging_id)
            except OSError as exc:
                log.debug("no staging file made ahead: %s", exc)
                return
            with self._made_lock:
                self._made[staging_id] = fd
                self._spares.append(staging_id)

    def drop_spares(self) -> None:
        """Delete the spares never handed out (at a clean stop: no orphans to sweep)."""
        with self._made_lock:
            spares, self._spares = self._spares, []
        for staging_id in spares:
            self.discard(staging_id)

    def claim_now(self, n: int, fresh: bool = False) -> bool:
        """Room for `n` more bytes without evicting anything: no disk work but a statvfs
        now and then (`fresh`: now), so the trio loop may ask. False: only `claim`, in a
        thread, can tell."""
        if self._claim is None:
            return True
        return self._claim_now is not None and self._claim_now(n, fresh)

    def claim(self, n: int, fresh: bool = False) -> None:
        """Refuse (ENOSPC, at write time) a write of `n` bytes that would eat into the cache
        disk's free-space reserve: what was closed before stays queued and safe. `fresh`:
        by the free space now (DiskReserve.claim)."""
        if self._claim is not None:
            self._claim(n, fresh=fresh)

    def new_id(self) -> str:
        """The id of a staging file for `make`: a spare made ahead when there is one (then
        `make` needs no system call), else one still to create. Does not block."""
        with self._made_lock:
            if self._spares:
                return self._spares.pop()
        return secrets.token_hex(16)

    def make(self, staging_id: str) -> int:
        """The empty staging file `staging_id` (0600), made now unless made ahead; returns
        it open read-write."""
        with self._made_lock:
            fd = self._made.pop(staging_id, None)
        return self._open_new(staging_id) if fd is None else fd

    def _open_new(self, staging_id: str) -> int:
        return os.open(self.path(staging_id), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                       0o600)

    def create(self) -> tuple[str, Path]:
        """A new, empty staging file (0600): its id and path."""
        staging_id = self.new_id()
        os.close(self.make(staging_id))
        return staging_id, self.path(staging_id)

    def clone(self, staging_id: str) -> tuple[str, Path]:
        """A new name for the same immutable bytes (a hard link: no copy), e.g. for a rename."""
        clone_id = secrets.token_hex(16)
        path = self.directory / clone_id
        os.link(self.path(staging_id), path)
        return clone_id, path

    def copy(self, staging_id: str) -> tuple[str, Path]:
        """A new staging file with the bytes of `staging_id`, to be written (copy-on-write)."""
        fd = os.open(self.path(staging_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self.copy_fd(fd)
        finally:
            os.close(fd)

    def copy_fd(self, fd: int) -> tuple[str, Path]:
        """A new staging file with the bytes of the open file `fd` (whose staging file may
        already be deleted: an upload finished while it was open). Holes stay holes: a
        sparse file (`truncate -s 512M`, then `>>`) was copied dense, 512 MiB of zeros
        claimed and written on the cache disk (copy_file_range does not keep them)."""
        size = os.fstat(fd).st_size
        extents = list(_data_extents(fd, size))
        self.claim(sum(stop - start for start, stop in extents))
        copy_id, path = self.create()
        try:
            with open(path, "r+b") as dst:
                for start, stop in extents:
                    _copy_range(fd, dst.fileno(), start, stop)
                dst.truncate(size)  # a hole at the end
        except BaseException:  # ENOSPC: a half copy would take the disk until the next start
            self.discard(copy_id)
            raise
        return copy_id, path

    def path(self, staging_id: str) -> Path:
        if not _ID_RE.match(staging_id):
            raise ValueError(f"not a staging id: {staging_id!r}")
        return self.directory / staging_id

    def size(self, staging_id: str) -> int:
        return self.path(staging_id).stat().st_size

    def crc32(self, staging_id: str) -> int | None:
        """The CRC-32 of a staging file's bytes (None when it is gone)."""
        crc = 0
        try:
            with open(self.path(staging_id), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    crc = zlib.crc32(chunk, crc)
        except FileNotFoundError:
            return None
        return crc

    def commit(self, staging_id: str) -> None:
        """Make the file and its directory entry durable (fsync both)."""
        self.fsync(staging_id)
        self.fsync_directory()

    def fsync(self, staging_id: str) -> None:
        """fsync a staging file's bytes (nothing when it is gone: uploaded and deleted)."""
        try:
            fd = os.open(self.path(staging_id), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ValueError):
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_directory(self) -> None:
        """Make the names of new staging files durable."""
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self, staging_id: str) -> None:
        with self._made_lock:
            fd = self._made.pop(staging_id, None)
        if fd is not None:  # made ahead, handed out, never used
            os.close(fd)
        self.path(staging_id).unlink(missing_ok=True)

    def ids(self) -> set[str]:
        """Every staging file present (for finding the ones no journal row refers to)."""
        return {entry.name for entry in os.scandir(self.directory) if _ID_RE.match(entry.name)}


def _copy_range(src: int, dst: int, start: int, stop: int) -> None:
    """Bytes [start, stop) of `src` to the same place in `dst` (in the kernel)."""
    while start < stop:
        step = os.copy_file_range(src, dst, stop - start, start, start)
        if step == 0:  # immutable files do not shrink; never loop if one did
            raise OSError(f"a staging file shrank while being copied (at byte {start})")
        start += step


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The [start, stop) ranges of `fd`'s first `size` bytes that hold data (SEEK_DATA and
    SEEK_HOLE); the whole file where the file system cannot tell."""
    at = 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            yield at, size  # SEEK_DATA not supported: all of it
            return
        if start >= size:
            return
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, stop
        at = stop
