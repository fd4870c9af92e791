"""An append-only sequence of strings held in memory up to a budget, then on disk.

A relisting of a directory of 1,000,000 keys gathers every key before it can store them
(a name may be overridden by a later page: a prefix of the same name, a change learned
meanwhile). Held as Python objects that cost ~600 bytes per key (630 MiB peak); packed
into one string per page and, past `budget` characters, written to an unnamed file in
the cache directory, the daemon's memory stays bounded whatever the directory's size.
The file is sequential I/O in the worker thread that lists, and it vanishes when closed
(or when the process dies: it never had a name).
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

#: Characters held in memory before the pieces go to disk (~25,000-30,000 listed keys).
#: With 8 Mi (~100,000 keys), each relisting of a 1,000,000-key directory that an `ls -l`
#: walk starts (every TTL: 3 in 5 minutes) left its 8 MiB of strings freed among the
#: inodes made meanwhile, where the heap kept them: RSS climbed 84 -> 93 -> 100 -> 105
#: MiB, one step per relisting. With 2 Mi the walk peaks at 99 MiB, as fast.
SPILL_BUDGET = 2 << 20


class SpillList:
    """Strings appended in order, read back in order; a context manager (closes the file).

    Blocking (file I/O): use it in a worker thread. When the file cannot be made or
    written (a read-only or full cache disk) the strings stay in memory: memory is the
    price, never data.
    """

    def __init__(self, directory: Path | None, budget: int = SPILL_BUDGET) -> None:
        self._directory, self._budget = directory, budget
        self._pieces: list[str | tuple[int, int]] = []  # in memory, or (offset, length) on disk
        self._held = 0  # characters of the pieces in memory
        self._file: BinaryIO | None = None
        self._disk_failed = directory is None

    def append(self, piece: str) -> None:
        self._pieces.append(piece)
        self._held += len(piece)
        if self._held > self._budget and not self._disk_failed:
            self._spill()

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            if isinstance(piece, str):
                yield piece
            else:
                assert self._file is not None
                offset, length = piece
                self._file.seek(offset)
                yield self._file.read(length).decode("utf-8", "surrogatepass")

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def _spill(self) -> None:
        """Write the pieces still in memory; they become (offset, length) only once all
        are flushed, so a failure leaves every one of them readable where it was."""
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(dir=self._directory, prefix="spill-")
            end = self._file.seek(0, os.SEEK_END)
            placed: list[tuple[int, tuple[int, int]]] = []
            for at, piece in enumerate(self._pieces):
                if isinstance(piece, str):
                    data = piece.encode("utf-8", "surrogatepass")
                    self._file.write(data)
                    placed.append((at, (end, len(data))))
                    end += len(data)
            self._file.flush()
        except OSError as exc:  # the strings stay in memory, and later ones too
            log.info("listing kept in memory, %s cannot take it: %s", self._directory, exc)
            self._disk_failed = True
            return
        for at, where in placed:
            self._pieces[at] = where
        self._held = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pieces = []

    def __enter__(self) -> SpillList:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
