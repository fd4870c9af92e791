"""The FUSE file and directory handle tables: fh number -> open handle and its inode.

Kept apart from the adapter so that fs/ops.py only decodes, calls and encodes. A file
handle records whether it writes as a type (a WriteHandle), never by probing it.
"""
from __future__ import annotations

import errno
import itertools
import logging
from dataclasses import dataclass

import pyfuse3

from ..tree.contract import DirStream, FileHandle, WriteHandle
from .inodes import Node
from .listingshape import Shape
from .pagecache import Opened

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OpenFile:
    node: Node
    handle: FileHandle
    writer: WriteHandle | None  # the same handle when it was opened for writing
    opened: Opened
    append: bool = False        # opened with O_APPEND: every write goes at the end


@dataclass(slots=True)
class OpenDir:
    node: Node
    stream: DirStream
    shape: Shape                # which files go out as names only (fs/listingshape.py)
    sent_name: bool = False     # a file went out as a name only (the walk watches this one)


class HandleTable:
    def __init__(self) -> None:
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        self._fh = itertools.count(1)

    def add_file(self, node: Node, handle: FileHandle, opened: Opened,
                 writer: WriteHandle | None = None, append: bool = False) -> int:
        fh = next(self._fh)
        self._files[fh] = OpenFile(node, handle, writer, opened, append)
        return fh

    def file(self, fh: int) -> OpenFile | None:
        return self._files.get(fh)

    def reader(self, fh: int) -> FileHandle:
        found = self._files.get(fh)
        if found is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return found.handle

    def writer(self, fh: int) -> WriteHandle:
        return self.open_writer(fh)[1]

    def open_writer(self, fh: int) -> tuple[OpenFile, WriteHandle]:
        """The open file of a handle opened for writing, and its writer (EBADF for any other)."""
        found = self._files.get(fh)
        if found is None or found.writer is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return found, found.writer

    def pop_file(self, fh: int) -> OpenFile | None:
        return self._files.pop(fh, None)

    def open_on(self, ino: int) -> OpenFile | None:
        """A handle open on `ino` (fstat of a file whose name is gone)."""
        return next((f for f in self._files.values() if f.node.ino == ino), None)

    def open_inos(self) -> set[int]:
        """The inodes of every open file."""
        return {f.node.ino for f in self._files.values()}

    def add_dir(self, node: Node, stream: DirStream, shape: Shape) -> int:
        fh = next(self._fh)
        self._dirs[fh] = OpenDir(node, stream, shape)
        return fh

    def dir(self, fh: int) -> OpenDir:
        found = self._dirs.get(fh)
        if found is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return found

    def pop_dir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    def node(self, fh: int) -> Node | None:
        """The inode of a file or directory handle (for log lines)."""
        found = self._files.get(fh) or self._dirs.get(fh)
        return None if found is None else found.node
