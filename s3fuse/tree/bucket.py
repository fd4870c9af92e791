"""A bucket (or prefix) as a directory tree: ListObjectsV2 with delimiter, TTL, persisted.

Each directory is listed once per TTL, whole and paginated, into the metadata
store; lookups, stats and readdir are then answered from there (negative lookups
included), so `find` costs one listing per directory. Listings and stats that
cannot be refreshed because S3 is unreachable are served as last seen.
"""
from __future__ import annotations

import logging
import time

import trio

from ..cache.meta import Entry, MetaStore
from ..config import SourceSpec
from ..data.prefetch import SiblingPrefetcher
from ..data.reader import BlockReader, ObjectRef
from ..errors import IsADirectory, NotFound, Offline, S3FuseError
from ..store.s3 import ListPage, S3Store
from ..util.background import Background
from ..util.flight import SingleFlight
from .base import FileSource, ObjectSource, OnceLogger, SnapshotDir, is_posix_name, join, split

log = logging.getLogger(__name__)

#: Subdirectories of a listed directory whose listings are fetched ahead.
LIST_AHEAD = 16


def entries_from_pages(pages: list[ListPage], prefix: str, hidden: OnceLogger,
                       now: float) -> list[Entry]:
    """Turn ListObjectsV2 pages of one directory into its entries.

    Prefixes become directories, keys become files; the directory's own marker
    (`prefix` itself) is not an entry. A key that is also a prefix is hidden (the
    directory wins), and so is any name that cannot be a POSIX path component.
    """
    dirs: dict[str, Entry] = {}
    files: dict[str, Entry] = {}
    for page in pages:
        for common in page.prefixes:
            name = common[len(prefix):-1]
            if is_posix_name(name):
                dirs[name] = Entry(name, True, 0, 0, "", now)
            else:
                hidden.info(common, "hiding s3 prefix %r: not a valid POSIX name", common)
        for obj in page.objects:
            name = obj.key[len(prefix):]
            if not name:
                continue  # the directory marker itself
            if is_posix_name(name):
                files[name] = Entry(name, False, obj.size, obj.mtime_ns, obj.etag, now)
            else:
                hidden.info(obj.key, "hiding s3 key %r: not a valid POSIX name", obj.key)
    for name in files.keys() & dirs.keys():
        hidden.info(prefix + name, "hiding s3 key %r: a directory of the same name wins", prefix + name)
        del files[name]
    return sorted([*dirs.values(), *files.values()], key=lambda e: e.name)


class BucketTree:
    """Namespace over s3://bucket/prefix/ ."""

    def __init__(self, spec: SourceSpec, store: S3Store, meta: MetaStore, reader: BlockReader,
                 *, ttl: float, writable: bool = False, list_limiter: trio.CapacityLimiter,
                 siblings: SiblingPrefetcher | None = None, background: Background | None = None):
        self.name = spec.name
        self.spec = spec
        self.store = store
        self.meta = meta
        self.reader = reader
        self.ttl = ttl
        self.writable = writable
        self.ns_id = f"bucket\x00{spec.bucket}\x00{spec.prefix}"
        self._limiter = list_limiter
        self._siblings = siblings
        self._background = background or Background()
        self._flight: SingleFlight[None] = SingleFlight()
        self._hidden = OnceLogger(log)
        self._started = int(time.time() * 1e9)

    # ----------------------------------------------------------- listing

    def key_of(self, path: str) -> str:
        return self.spec.prefix + path

    def _dir_prefix(self, path: str) -> str:
        return self.spec.prefix + (path + "/" if path else "")

    def _fresh(self, listed_at: float | None) -> bool:
        return listed_at is not None and time.time() - listed_at < self.ttl

    async def _ensure_listing(self, path: str) -> None:
        listed_at = self.meta.listed_at(self.ns_id, path)
        if self._fresh(listed_at):
            return
        try:
            await self._flight.run(path, self._refresh, path)
        except Offline:
            if listed_at is None:
                raise
            log.debug("offline: serving the cached listing of %s", self._dir_prefix(path))

    async def _refresh(self, path: str) -> None:
        prefix = self._dir_prefix(path)

        def fetch() -> None:
            pages = list(self.store.list_pages(self.spec.bucket, prefix))
            entries = entries_from_pages(pages, prefix, self._hidden, time.time())
            self.meta.replace_listing(self.ns_id, path, entries)

        await trio.to_thread.run_sync(fetch, limiter=self._limiter)

    root = ""
    inode_base = None

    def parent(self, ref: str) -> str:
        return split(ref)[0]

    def describe(self, ref: str) -> str:
        return ref

    async def opendir(self, path: str) -> SnapshotDir:
        return SnapshotDir([(join(path, e.name), e) for e in await self.listdir(path)])

    async def listdir(self, path: str) -> list[Entry]:
        """The entries of `path`; also lists its first subdirectories ahead, in parallel.

        Tree walks (`find`, `ls -R`, `du`) list a directory and then descend into each
        subdirectory; fetching those listings ahead turns a walk's sequential round
        trips into parallel ones, still one listing per directory.
        """
        await self._ensure_listing(path)
        entries = self.meta.entries(self.ns_id, path)
        if self._background.active:
            subdirs = [e.name for e in entries if e.is_dir][:LIST_AHEAD]
            for name in subdirs:
                child = join(path, name)
                if not self._fresh(self.meta.listed_at(self.ns_id, child)) and not self._flight.busy(child):
                    self._background.spawn(self._list_ahead, child)
        return entries

    async def _list_ahead(self, path: str) -> None:
        try:
            await self._ensure_listing(path)
        except S3FuseError as exc:  # the real listing will retry and report
            log.debug("listing ahead of %s failed: %s", self._dir_prefix(path), exc)

    async def lookup(self, path: str, name: str) -> tuple[str, Entry] | None:
        await self._ensure_listing(path)
        entry = self.meta.entry(self.ns_id, path, name)
        return None if entry is None else (join(path, name), entry)

    # ----------------------------------------------------------- stat / open

    def _root_entry(self) -> Entry:
        return Entry("", True, 0, self._started, "", time.time())

    async def stat(self, path: str) -> Entry:
        """The entry of `path`, revalidated with HEAD when older than the TTL."""
        if not path:
            return self._root_entry()
        parent, name = split(path)
        entry = self.meta.entry(self.ns_id, parent, name)
        if entry is None:
            found = await self.lookup(parent, name)
            if found is None:
                raise NotFound(path)
            entry = found[1]
        if entry.is_dir or time.time() - entry.checked_at < self.ttl:
            return entry
        return await self._revalidate(parent, entry)

    async def _revalidate(self, parent: str, entry: Entry) -> Entry:
        key = self.key_of(join(parent, entry.name))
        try:
            info = await trio.to_thread.run_sync(self.store.head, self.spec.bucket, key,
                                                 limiter=self._limiter)
        except Offline:
            return entry
        except NotFound:
            self.meta.remove_entry(self.ns_id, parent, entry.name)
            raise
        fresh = Entry(entry.name, False, info.size, info.mtime_ns, info.etag, time.time())
        self.meta.update_entry(self.ns_id, parent, fresh)
        return fresh

    def ref(self, path: str, entry: Entry) -> ObjectRef:
        return ObjectRef(self.spec.bucket, self.key_of(path), entry.etag, entry.size)

    async def open(self, path: str) -> FileSource:
        entry = await self.stat(path)
        if entry.is_dir:
            raise IsADirectory(path)
        if self._siblings is not None:
            parent, name = split(path)
            self._siblings.opened((self.ns_id, parent), name, lambda after, n: [
                (e.name, self.ref(join(parent, e.name), e))
                for e in self.meta.files_after(self.ns_id, parent, after, n)])
        return ObjectSource(self.reader, self.ref(path, entry))

    async def xattrs(self, path: str, entry: Entry) -> dict[str, bytes]:
        if entry.is_dir:
            return {"user.s3.uri": f"s3://{self.spec.bucket}/{self._dir_prefix(path)}".encode()}
        return {"user.s3.uri": f"s3://{self.spec.bucket}/{self.key_of(path)}".encode(),
                "user.s3.etag": entry.etag.encode()}
