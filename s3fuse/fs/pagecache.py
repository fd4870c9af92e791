"""Page-cache coherence across S3 versions: what the kernel may cache and what it is told.

The kernel keeps one page cache per inode, shared by every handle, and clamps reads
to the size it was last told. S3 objects change under open handles, so for each
inode this module remembers the version last opened (keep_cache), the version whose
pages open handles read (PagedVersion) and the version whose size the kernel holds
(told). From those it decides how a read handle uses the page cache, and which
size and mtime a lookup or getattr may show, so no reader ever gets a blend of two
versions or one cut short (docs/architecture.md, "Inodes and kernel caching").
It knows inodes and entries only: no FUSE, no S3.
"""
from __future__ import annotations


import logging
from dataclasses import dataclass, replace

from ..model import Entry
from ..util.shrink import RemovalCounter

log = logging.getLogger(__name__)

KEEP_CACHE_MEMORY = 100_000  # inodes whose last-opened version we remember
#: In the told table: the kernel's size is what this mount's own writes gave it (no hash()
#: is -1: CPython reserves it for errors).
LOCAL = -1


def told_memory_for(max_inodes: int) -> int:
    """How many inodes' last-told versions a mount remembers: as many as the kernel may
    hold bucket inodes (--max-inodes; 0 is no cap), at most KEEP_CACHE_MEMORY.

    A bucket's are forgotten with their inodes; a manifest's are not (its inodes cost the
    daemon nothing, and the kernel keeps a 1,000,000-entry `find`'s), so this bound is what
    their table costs: ~110 B an entry (a dict slot, the inode number, the hash), 11 MiB at
    100,000. Past it the oldest half goes; an inode whose told version is forgotten is taken
    to hold the one its open finds (what `told` guards against is a version changing within
    the attribute timeout)."""
    return min(max_inodes or KEEP_CACHE_MEMORY, KEEP_CACHE_MEMORY)


@dataclass(slots=True)
class PagedVersion:
    """The S3 version whose pages the kernel may cache for an inode, while read handles
    on it are open."""

    etag: str
    size: int
    mtime_ns: int
    handles: int = 0
    #: This mount wrote the file since: its read handles follow the new bytes
    #: (tree/bucket/localsource.py) and the kernel is told the truth.
    local: bool = False


@dataclass(frozen=True, slots=True)
class Opened:
    """How one handle uses the page cache; given back at release."""

    direct_io: bool = False   # bypasses the page cache (another version's pages are there)
    keep_cache: bool = False  # the cached pages are this version's: keep them
    paged: bool = False       # counted in the inode's PagedVersion
    writer: bool = False
    cached_reader: bool = False  # a read handle through the page cache
    #: The kernel may hold another version's size (see PageCache.told): the opener drops
    #: the kernel's attributes before it answers, so a read past that size asks again.
    refresh_attrs: bool = False


def _remember(table: dict[int, int], ino: int, version: str, memory: int) -> None:
    """Record `version` for `ino` as the newest entry of `table`; past `memory` entries
    the older half is dropped at once (dropping one at a time from the front of a dict
    is quadratic: its iteration skips every hole left before). Versions are kept as
    their hashes in a plain dict (insertion-ordered): an int where an ETag string took
    83 bytes and an OrderedDict node 105 more, and readdirplus tells the kernel of every
    entry of a listing. Two versions of one inode with equal 64-bit hashes would pass
    for one: negligible."""
    table.pop(ino, None)
    table[ino] = hash(version)
    if len(table) > memory:
        kept = list(table.items())[len(table) // 2:]
        table.clear()
        table.update(kept)


class PageCache:
    def __init__(self, memory: int = KEEP_CACHE_MEMORY, told_memory: int = KEEP_CACHE_MEMORY):
        self._memory = memory
        self._told_memory = told_memory
        self._versions: dict[int, int] = {}  # ino -> hash of the version last opened
        self._paged: dict[int, PagedVersion] = {}  # ino -> version of its open cached handles
        self._told: dict[int, int] = {}  # ino -> hash of the version whose size the kernel has
        self._moved: dict[int, int] = {}  # inos told a new version since their last open
        self._writers: dict[int, int] = {}  # ino -> handles open for writing
        self._readers: dict[int, int] = {}  # ino -> read handles through the page cache
        self._removals = RemovalCounter()

    def shown(self, ino: int, entry: Entry) -> Entry:
        """The entry of file `ino` the kernel may be given. While handles of an older version
        read through the page cache, its size and mtime (a smaller new size would cut their
        reads short, a new mtime would drop their pages); the true one once they are closed,
        or while a writer has the file open (its appends need the true size)."""
        paged = self._paged.get(ino)
        if (paged is not None and not paged.local and entry.etag and entry.etag != paged.etag
                and not self._writers.get(ino)):
            return replace(entry, size=paged.size, mtime_ns=paged.mtime_ns,
                                       etag=paged.etag)
        return entry

    def outdated(self, ino: int, entry: Entry) -> bool:
        """Do handles of another S3 version than `entry`'s read `ino` through its page
        cache (a change made elsewhere since they opened; `shown` keeps their size)?"""
        paged = self._paged.get(ino)
        return (paged is not None and paged.handles > 0 and not paged.local
                and bool(entry.etag) and entry.etag != paged.etag and not self._writers.get(ino))

    def told(self, ino: int, entry: Entry) -> None:
        """The kernel was given `entry` (a shown one) for `ino`: a lookup, getattr or
        readdirplus reply.

        Given is not applied: the kernel drops a reply's attributes when another reply
        for the inode was applied after the request was sent (`attr_version` in
        `fuse_change_attributes`). Two replies racing across a version change can leave
        the older size in the kernel while this table records the newer one, and a read
        through the page cache is then cut at the older size. So an inode told a new
        version is `_moved` until its next open, which has the kernel ask again."""
        if not entry.etag:  # this mount's version (not uploaded yet): its size is ours
            if self._told.get(ino) is not None:
                self._told[ino] = LOCAL
        elif self._told.get(ino) != hash(entry.etag):
            if ino in self._told:
                _remember(self._moved, ino, entry.etag, self._told_memory)
            _remember(self._told, ino, entry.etag, self._told_memory)

    def open_read(self, ino: int, entry: Entry, size: int, version: str) -> Opened:
        """A read handle of `version` (`size` bytes) on the file whose entry is `entry`."""
        paged = self._paged.get(ino)
        told = self._told.get(ino, hash(entry.etag))
        if ((paged is not None and not paged.local and entry.etag != paged.etag)
                or size != entry.size
                or (entry.etag and told != hash(entry.etag) and told != LOCAL)):
            # Another version's pages are in the inode's page cache, or the kernel holds
            # another version's size (told by a lookup racing this open, or the entry
            # changed while opening): this handle bypasses the page cache, and direct
            # reads are not clamped to the kernel's size.
            return Opened(direct_io=True)
        if entry.etag:
            if paged is None:
                paged = self._paged[ino] = PagedVersion(entry.etag, entry.size, entry.mtime_ns)
            # opened beside a writer of this mount: it follows that writer's bytes too
            paged.local = paged.local or ino in self._writers
            paged.handles += 1
        self._readers[ino] = self._readers.get(ino, 0) + 1
        keep = self._versions.get(ino) == hash(version)
        _remember(self._versions, ino, version, self._memory)
        # The kernel's size is the one this mount's writes gave it (LOCAL), most likely
        # the version that landed since: it is asked again, not bypassed, since a
        # direct_io handle cannot be mapped shared (numpy.memmap of a file this mount
        # had just uploaded failed with ENODEV).
        unsure = self._moved.pop(ino, None) is not None or (told == LOCAL and bool(entry.etag))
        return Opened(keep_cache=keep, paged=bool(entry.etag), cached_reader=True,
                      refresh_attrs=unsure)

    def read_cached(self, ino: int) -> bool:
        """Do read handles of `ino` read through the page cache? Then a write past it (a
        direct handle's) must drop the kernel's pages and size: they are the readers'."""
        return ino in self._readers

    def forget(self, ino: int) -> None:
        """The kernel let go of `ino` (and its pages: no handle was open): nothing to
        remember of it, since the table never hands the number out again. Its entries
        otherwise stayed until KEEP_CACHE_MEMORY pushed them out: ~110 bytes each, 11 MiB
        after `ls -l` of 100,000 files whatever the kernel still held."""
        self._versions.pop(ino, None)
        self._moved.pop(ino, None)
        if self._told.pop(ino, None) is not None and self._removals.removed_one(len(self._told)):
            self._versions, self._told = dict(self._versions), dict(self._told)  # util/shrink.py

    def open_write(self, ino: int, direct: bool = False) -> Opened:
        """A handle that writes: the cached pages are no version's any more (the next read
        handle drops them). `direct`: it writes past the page cache (a write-only handle,
        fs/setid.py): the kernel then neither copies its bytes into pages nor asks for
        `security.capability` before every write call (it does so for writes through the
        page cache on a file system without FUSE_HANDLE_KILLPRIV_V2, which pyfuse3 cannot
        ask for): a 64 MiB `cp` closed in 0.8x the time."""
        self._writers[ino] = self._writers.get(ino, 0) + 1
        self.wrote_here(ino)
        return Opened(writer=True, direct_io=direct)

    def wrote_here(self, ino: int) -> None:
        """This mount changes the file's bytes (a writer's open, a truncate by path): its
        readers read what it writes from now on (their handles follow the local file), so
        no older version is kept for them and the kernel is told the true size (an
        O_APPEND writer's offset); the cached pages are no version's any more."""
        self._versions.pop(ino, None)
        if ino in self._told:  # the kernel's size follows these writes from now on
            self._told[ino] = LOCAL
        paged = self._paged.get(ino)
        if paged is not None:
            paged.local = True

    def release(self, ino: int, opened: Opened) -> None:
        if opened.paged:
            paged = self._paged.get(ino)
            if paged is not None:
                paged.handles -= 1
                if paged.handles <= 0:
                    del self._paged[ino]
        if opened.cached_reader:
            _count_down(self._readers, ino)
        if opened.writer:
            _count_down(self._writers, ino)


def _count_down(counts: dict[int, int], ino: int) -> None:
    left = counts.get(ino, 0) - 1
    if left > 0:
        counts[ino] = left
    else:
        counts.pop(ino, None)
