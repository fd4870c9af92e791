"""A diskcache Disk that never unpickles and never follows a path it did not make.

diskcache pickles any value that is not bytes/str/int/float and trusts the mode
and file name read back from its SQLite file (CVE-2025-69872). Anyone who can
write the cache database could then run code in the daemon or make it delete
files. We store only plain values and refuse anything else on the way back.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Callable

import diskcache
from diskcache.core import MODE_BINARY, MODE_PICKLE

from ..errors import CorruptData

_VALUE_FILE = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val$")
_PLAIN = (bytes, str, int, float)


def check_filename(filename: str | None) -> None:
    if filename is not None and not _VALUE_FILE.match(filename.replace(os.sep, "/")):
        raise CorruptData(f"cache entry points outside the cache: {filename!r}")


class SafeDisk(diskcache.Disk):
    """diskcache.Disk restricted to plain values and its own value files."""

    def put(self, key):  # type: ignore[no-untyped-def]
        if type(key) not in _PLAIN:
            raise TypeError(f"cache keys must be bytes/str/int/float, not {type(key).__name__}")
        return super().put(key)

    def get(self, key, raw):  # type: ignore[no-untyped-def]
        if not raw:
            raise CorruptData("refusing a pickled cache key")
        return super().get(key, raw)

    def store(self, value, read, key=diskcache.core.UNKNOWN):  # type: ignore[no-untyped-def]
        if not read and type(value) not in _PLAIN:
            raise TypeError(f"cache values must be bytes/str/int/float, not {type(value).__name__}")
        if read and hasattr(value, "write_to"):  # a sealed block (blocks.py): writes itself
            filename, full_path = self.filename(key, value)
            return self._write_new(full_path, value.write_to), MODE_BINARY, filename, None
        if type(value) is bytes and len(value) >= self.min_file_size:
            # diskcache iterates a BytesIO here, i.e. writes line by line: one write instead.
            filename, full_path = self.filename(key, value)
            self._write(full_path, iter((value,)), "xb")
            return len(value), MODE_BINARY, filename, None
        return super().store(value, read, key=key)

    def _write_new(self, full_path: str, write_to: Callable[[int], int]) -> int:
        """Create `full_path` (its directories too when missing: another cache may remove
        them meanwhile, as diskcache knows) and let `write_to(fd)` fill it; removed if that
        fails. The directories only after a failed open: making them first cost a mkdir
        per block (a quarter of a small block's write)."""
        for attempt in range(1, 11):
            try:
                fd = os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except OSError:
                if attempt == 10:
                    raise
                with contextlib.suppress(OSError):
                    os.makedirs(os.path.dirname(full_path))
                continue
            try:
                return write_to(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(full_path)
                raise
            finally:
                os.close(fd)
        raise AssertionError("unreachable")

    def filename(self, key=diskcache.core.UNKNOWN, value=diskcache.core.UNKNOWN):  # type: ignore[no-untyped-def]
        """diskcache's random name, in one of 16 directories (`x0/00/`) instead of one of
        65,536 (`xx/yy/`): each directory takes a 4 KiB block, so a cache of small files'
        blocks took twice its files' room in directories (and more lookups on a cold read).
        The names still match _VALUE_FILE; older caches' files stay where they are."""
        hex_name = os.urandom(16).hex()
        filename = os.path.join(f"{hex_name[0]}0", "00", hex_name[4:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def fetch(self, mode, filename, value, read):  # type: ignore[no-untyped-def]
        if mode == MODE_PICKLE:
            raise CorruptData("refusing a pickled cache value")
        check_filename(filename)
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path):  # type: ignore[no-untyped-def]
        check_filename(file_path)  # relative to the cache directory, as stored
        return super().remove(file_path)
