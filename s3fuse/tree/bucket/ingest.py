"""One directory's ListObjectsV2 pages turned into its entries, in bounded memory.

One job of the bucket namespace (see tree/bucket/__init__.py): a listing is stored only
once its last page is in (a later page may hide a name: a prefix of the same name wins),
so every key is held until then. As Entry objects a key cost ~600 bytes at the peak
(a relisting of 1,000,000 keys: 637 MiB of RSS). Here each page's files are packed into
one string (name, size, mtime, ETag, NUL-separated: NUL is in no POSIX name nor ETag)
kept in a SpillList, which moves them to an unnamed file in the cache directory past
its budget; entries are made again one at a time as they are stored.

S3 lists keys in UTF-8 byte order, which is the order of their names, so the packed
files come out sorted; a store that lists out of order is noticed and sorted in memory
(as before). Prefixes (directories) are few and come in the order of `name/`, not of
`name`: their names are kept in memory and sorted at the end, then merged in.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from pathlib import Path

from ...cache.meta import version
from ...model import Entry
from ...names import is_posix_name, is_probe_name
from ...store.protocol import ListPage, ObjectInfo
from ...util.oncelog import OnceLogger
from ...util.spill import SPILL_BUDGET, SpillList

_SEP = "\0"
_FIELDS = 4  # per packed file: name, size, mtime_ns, etag


def _name(entry: Entry) -> str:
    return entry.name


class Ingest:
    """One directory's listing, built page by page as ListObjectsV2 answers; a context
    manager (its spill file is closed on exit). Blocking: use it in a worker thread.

    Prefixes become directories, keys become files; the directory's own marker (`prefix`
    itself) is not an entry but its version is kept (`marker`). A key that is also a
    prefix is hidden (the directory wins), and so is any name that cannot be a POSIX
    path component. The conditional-request probe's scratch keys are no entries either:
    they are set aside in `probes` (one left behind is removed, listing.py).
    """

    def __init__(self, prefix: str, hidden: OnceLogger, now: float,
                 spill_dir: Path | None = None, spill_budget: int = SPILL_BUDGET) -> None:
        self._prefix, self._hidden, self._now = prefix, hidden, now
        self._dirs: list[str] = []
        self._files = SpillList(spill_dir, spill_budget)
        self._last = ""  # the last file name packed
        self._ordered = True  # every file name so far greater than the one before
        #: The version of the directory's own marker object, '' when it has none (then it
        #: stores no metadata: no HEAD needed to know).
        self.marker = ""
        self.probes: list[ObjectInfo] = []  # scratch keys of conditional-request probes

    def add(self, page: ListPage) -> None:
        prefix, hidden = self._prefix, self._hidden
        for common in page.prefixes:
            name = common[len(prefix):-1]
            if is_posix_name(name):
                self._dirs.append(name)
            else:
                hidden.info(common, "hiding s3 prefix %r: not a valid POSIX name", common)
        fields: list[str] = []
        last = self._last
        for obj in page.objects:
            name = obj.key[len(prefix):]
            if not name:
                self.marker = version(obj.etag, obj.mtime_ns)
            elif is_probe_name(name):
                self.probes.append(obj)
            elif is_posix_name(name):
                if name <= last:
                    self._ordered = False
                last = name
                fields += (name, str(obj.size), str(obj.mtime_ns), obj.etag)
            else:
                hidden.info(obj.key, "hiding s3 key %r: not a valid POSIX name", obj.key)
        self._last = last
        if fields:
            self._files.append(_SEP.join(fields))

    def entries(self) -> Iterator[Entry]:
        """Every entry, sorted by name (the directory wins a name clash), made as they
        are taken: iterate once, within the `with` block."""
        now = self._now
        dirs = sorted(set(self._dirs))
        files = self._unpacked()
        if not self._ordered:  # a store listing out of key order: sorted here, in memory
            files = iter(sorted({e.name: e for e in files}.values(), key=_name))
        return heapq.merge((Entry(name, True, 0, 0, "", now) for name in dirs),
                           self._not_hidden(files, set(dirs)), key=_name)

    def _unpacked(self) -> Iterator[Entry]:
        now = self._now
        for piece in self._files:
            fields = piece.split(_SEP)
            for at in range(0, len(fields), _FIELDS):
                yield Entry(fields[at], False, int(fields[at + 1]), int(fields[at + 2]),
                            fields[at + 3], now)

    def _not_hidden(self, files: Iterator[Entry], dirs: set[str]) -> Iterator[Entry]:
        for entry in files:
            if entry.name in dirs:
                key = self._prefix + entry.name
                self._hidden.info(key, "hiding s3 key %r: a directory of the same name wins", key)
            else:
                yield entry

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def entries_from_pages(pages: Iterable[ListPage], prefix: str, hidden: OnceLogger,
                       now: float) -> list[Entry]:
    """The entries of one directory's ListObjectsV2 pages (Ingest), in memory."""
    with Ingest(prefix, hidden, now) as ingest:
        for page in pages:
            ingest.add(page)
        return list(ingest.entries())
