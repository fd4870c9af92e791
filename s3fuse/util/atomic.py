"""Whole-or-nothing file writes: a reader (systemd, the next mount) finds the old file or
the new one, never half of one, and never through a symlink planted in the directory."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int, durable: bool = False) -> None:
    """`data` to `path` with `mode`, by a rename over it; `durable`: fsynced, file and
    directory (it survives power loss once this returns)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        with open(fd, "wb") as out:
            out.write(data)
            os.fchmod(fd, mode)  # whatever the umask took away
            if durable:
                out.flush()
                os.fsync(fd)
        os.replace(partial, path)
    except BaseException:  # a full disk: nothing half-written left beside the file
        partial.unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
