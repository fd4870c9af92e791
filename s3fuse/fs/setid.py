"""Set-id bits and writes that go past the page cache.

A write by a process without CAP_FSETID clears a file's set-user-ID bit (and its
set-group-ID bit when group execute is set). Through the page cache the kernel does it
itself, with a setattr. A write-only handle is opened `direct_io` (fs/pagecache.py
`open_write`), and for direct writes the kernel leaves it to the file system (with a
write flag pyfuse3 does not pass on). So a handle is opened direct only when its writes
could not have to clear anything: its opener is root, or the file has no such bit. A bit
set later, while such a handle is open, is cleared by the handle's next write (`SetIdGuard`).
"""
from __future__ import annotations

import os
import stat


def setid_bits(mode: int) -> int:
    """The set-id bits of `mode` that an unprivileged write clears: S_ISGID only with
    group execute (without it, the bit marks mandatory locking)."""
    return mode & (stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))


def write_only(flags: int) -> bool:
    """Is a file opened with `flags` for writing only (it cannot read or be mapped)?"""
    return flags & os.O_ACCMODE == os.O_WRONLY


def privileged(uid: int | None) -> bool:
    """May a process of `uid` write without clearing set-id bits (CAP_FSETID: root)?
    None: called without a request context (in-process), which is the daemon's own."""
    return uid is None or uid == 0


class SetIdGuard:
    """Direct handles of unprivileged openers, and those of them whose file got a set-id
    bit after they opened: their next write clears it first."""

    def __init__(self) -> None:
        self._watched: dict[int, int] = {}  # fh -> inode: direct, unprivileged opener
        self._due: set[int] = set()         # fhs whose next write must clear the bits

    def opened(self, fh: int, ino: int) -> None:
        self._watched[fh] = ino

    def mode_set(self, ino: int, mode: int) -> None:
        """A setattr gave inode `ino` this mode."""
        if setid_bits(mode):
            self._due.update(fh for fh, watched in self._watched.items() if watched == ino)

    def due(self, fh: int) -> bool:
        """Must this handle clear its file's set-id bits before writing?"""
        return fh in self._due

    def cleared(self, ino: int) -> None:
        self._due.difference_update(fh for fh, watched in self._watched.items()
                                    if watched == ino)

    def released(self, fh: int) -> None:
        self._watched.pop(fh, None)
        self._due.discard(fh)
