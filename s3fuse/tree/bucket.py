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

from ..cache.meta import MetaStore, apply_changes
from ..cache.overlay import Overlay
from ..config import SourceSpec
from ..data.prefetch import SiblingPrefetcher
from ..data.reader import BlockReader
from ..model import Entry, ObjectRef
from ..names import is_posix_name, join, split
from ..errors import (CacheFull, FileExists, InvalidArgument, IsADirectory, NotADirectory,
                      NotEmpty, NotFound, Offline, ReadOnly, RemoteError, S3FuseError,
                      TooBigToRename)
from ..store.s3 import ListPage, ObjectInfo, S3Store
from ..upload.journal import UNKNOWN
from ..upload.localfile import LocalFile
from ..upload.uploader import UploadResult
from ..util.supervisor import LIST_AHEAD as LIST_AHEAD_TASK, Supervisor
from ..upload.writeback import WriteBack
from ..util.flight import SingleFlight
from .base import (AttrChanges, FileHandle, Namespace, ObjectSource, OnceLogger, ReadOnlyNamespace,
                   SnapshotDir, WriteHandle)
from .learned import LearnedChanges
from .localsource import LocalReader, LocalWriter

log = logging.getLogger(__name__)

GONE = object()  # a name removed locally that S3 still lists

#: A directory with more objects is not renamed key by key (EXDEV: `mv` copies it).
RENAME_DIR_LIMIT = 1000
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


class BucketTree(Namespace):
    """Namespace over s3://bucket/prefix/ (ReadOnlyBucketTree when mounted read-only)."""

    _full_logged = False  # "cache full: stored listings" is logged once per daemon

    def __init__(self, spec: SourceSpec, store: S3Store, meta: MetaStore, reader: BlockReader,
                 *, ttl: float, list_limiter: trio.CapacityLimiter,
                 siblings: SiblingPrefetcher | None = None, background: Supervisor | None = None,
                 writes: WriteBack | None = None):
        self.name = spec.name
        self.spec = spec
        self.store = store
        self.meta = meta
        self.reader = reader
        self.ttl = ttl
        self.ns_id = f"bucket\x00{spec.bucket}\x00{spec.prefix}"
        self._limiter = list_limiter
        self._siblings = siblings
        self._background = background or Supervisor()
        self._flight: SingleFlight[None] = SingleFlight()
        self._learned = LearnedChanges()
        self._hidden = OnceLogger(log)
        self._started = int(time.time() * 1e9)
        self.writes = writes
        self.overlay = writes.overlay if writes is not None else Overlay()
        if writes is not None:
            writes.watch(spec.bucket, self._uploaded)

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
        except (Offline, RemoteError) as exc:
            if listed_at is None:
                raise
            # offline, or S3 failing even after the retries (a 5xx storm): the last listing
            # is a better answer than EIO
            log.debug("serving the cached listing of %s: %s", self._dir_prefix(path), exc)
        except CacheFull as exc:  # the cache disk is full: the stored listing beats ENOSPC
            if listed_at is None:
                raise
            if not BucketTree._full_logged:
                BucketTree._full_logged = True
                log.warning("%s: serving stored listings without refreshing them", exc)
            log.debug("cache full: serving the stored listing of %s", self._dir_prefix(path))

    async def _refresh(self, path: str) -> None:
        prefix = self._dir_prefix(path)

        mark = self._learned.mark()

        def fetch() -> None:
            pages = list(self.store.list_pages(self.spec.bucket, prefix))
            entries = entries_from_pages(pages, prefix, self._hidden, time.time())
            with self.meta.writing():  # uploads that finished meanwhile are not in `pages`
                changes = self._learned.since(mark, path)
                now = time.time() if changes is not None else 0.0  # 0: stale, list again
                self.meta.replace_listing(self.ns_id, path, apply_changes(entries, changes or {}),
                                          now)

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
        await self._listing_or_local(path)
        entries = self._merge(path, self.meta.entries(self.ns_id, path))
        if self._background.active:
            subdirs = [e.name for e in entries if e.is_dir][:LIST_AHEAD]
            for name in subdirs:
                child = join(path, name)
                if not self._fresh(self.meta.listed_at(self.ns_id, child)) and not self._flight.busy(child):
                    self._background.spawn(self._list_ahead, child, kind=LIST_AHEAD_TASK)
        return entries

    async def _list_ahead(self, path: str) -> None:
        try:
            await self._ensure_listing(path)
        except S3FuseError as exc:  # the real listing will retry and report
            log.debug("listing ahead of %s failed: %s", self._dir_prefix(path), exc)

    async def lookup(self, path: str, name: str) -> tuple[str, Entry] | None:
        local = self._local(path, name)
        if local is not None:
            return None if local is GONE else (join(path, name), local)
        await self._listing_or_local(path)
        entry = self.meta.entry(self.ns_id, path, name)
        return None if entry is None else (join(path, name), entry)

    # ----------------------------------------------------------- local changes

    async def _listing_or_local(self, path: str) -> None:
        """The listing of `path`; a directory made while offline lists its local entries."""
        try:
            await self._ensure_listing(path)
        except Offline:
            change = self.overlay.get(self.spec.bucket, self._dir_prefix(path))
            if change is None or change.deleted:
                raise

    def _local(self, path: str, name: str) -> Entry | object | None:
        """The entry local changes give `path/name` (GONE when removed), or None."""
        key = self.key_of(join(path, name))
        for change_key, is_dir in ((key, False), (key + "/", True)):
            change = self.overlay.get(self.spec.bucket, change_key)
            if change is not None and not change.deleted:
                return Entry(name, is_dir, change.size, change.mtime_ns, "", time.time())
        file_change = self.overlay.get(self.spec.bucket, key)
        dir_change = self.overlay.get(self.spec.bucket, key + "/")
        if file_change is not None or dir_change is not None:
            entry = self.meta.entry(self.ns_id, path, name)
            if entry is None or (entry.is_dir and dir_change) or (not entry.is_dir and file_change):
                return GONE
        return None

    def _merge(self, path: str, entries: list[Entry]) -> list[Entry]:
        """The listing of `path` with local changes applied."""
        changes = self.overlay.children(self.spec.bucket, self._dir_prefix(path))
        if not changes:
            return entries
        merged = {e.name: e for e in entries}
        for name in {name for name in changes}:
            local = self._local(path, name)
            if local is GONE:
                merged.pop(name, None)
            elif isinstance(local, Entry):
                merged[name] = local
        return sorted(merged.values(), key=lambda e: e.name)

    def _uploaded(self, key: str, result: UploadResult | None) -> None:
        """A change reached S3: the listing store learns it (`result` None: a removal)."""
        if not key.startswith(self.spec.prefix) or key == self.spec.prefix:
            return
        parent, name = split(key[len(self.spec.prefix):].rstrip("/"))
        try:
            self._record_upload(key, parent, name, result)
        except CacheFull as exc:  # S3 has it; the listing shows it once refreshed with room
            log.warning("s3://%s/%s is uploaded but not recorded in the stored listing: %s",
                        self.spec.bucket, key, exc)

    def _record_upload(self, key: str, parent: str, name: str,
                       result: UploadResult | None) -> None:
        if result is None:
            self._learned.record(parent, name, None,
                                 lambda: self.meta.remove_entry(self.ns_id, parent, name))
        elif result.conflict_key is not None:  # the key kept its S3 version: look again
            self.meta.expire_listing(self.ns_id, parent)
            self.meta.remove_entry(self.ns_id, parent, name)
        else:
            # the uploaded version's size: the overlay already shows a newer local change
            # when the file was opened or written again meanwhile (an entry stored with its
            # size showed this version cut short once that change was dropped, e.g. at a crash)
            change = self.overlay.get(self.spec.bucket, key)
            size = result.size if result.size is not None else change.size if change else 0
            self.meta.know_dir(self.ns_id, parent)
            if key.endswith("/"):
                self.meta.know_dir(self.ns_id, join(parent, name))
            entry = Entry(name, key.endswith("/"), size, time.time_ns(), result.etag, 0.0)
            self._learned.record(parent, name, entry,
                                 lambda: self.meta.update_entry(self.ns_id, parent, entry))

    # ----------------------------------------------------------- stat / open

    def _root_entry(self) -> Entry:
        return Entry("", True, 0, self._started, "", time.time())

    async def stat(self, path: str) -> Entry:
        """The entry of `path`, revalidated with HEAD when older than the TTL."""
        if not path:
            return self._root_entry()
        parent, name = split(path)
        local = self._local(parent, name)
        if isinstance(local, Entry):
            return local
        if local is GONE:
            raise NotFound(path)
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
        except (Offline, RemoteError) as exc:  # as for listings: the last entry, not EIO
            log.debug("serving the cached entry of %s: %s", key, exc)
            return entry
        except NotFound:
            self.meta.remove_entry(self.ns_id, parent, entry.name)
            raise
        fresh = Entry(entry.name, False, info.size, info.mtime_ns, info.etag, time.time())
        self.meta.update_entry(self.ns_id, parent, fresh)
        return fresh

    def ref(self, path: str, entry: Entry) -> ObjectRef:
        return ObjectRef(self.spec.bucket, self.key_of(path), entry.etag, entry.size)

    async def open(self, path: str) -> FileHandle:
        entry = await self.stat(path)
        if entry.is_dir:
            raise IsADirectory(path)
        if self.writes is not None:
            local = self.writes.reader(self.spec.bucket, self.key_of(path))
            if local is not None:
                return LocalReader(local, self.writes)
            if not entry.etag:  # the local version was uploaded while we looked: S3's now
                entry = await self.stat(path)
        if self._siblings is not None:
            parent, name = split(path)
            self._siblings.opened((self.ns_id, parent), name, lambda after, n: [
                (e.name, self.ref(join(parent, e.name), e))
                for e in self.meta.files_after(self.ns_id, parent, after, n)])
        return ObjectSource(self.reader, self.ref(path, entry))

    async def cached(self, path: str) -> bool:
        if self.writes is not None and self.writes.has_local(self.spec.bucket, self.key_of(path)):
            return True  # the newest bytes are on this disk
        entry = await self.stat(path)
        if not entry.etag:  # the local version was uploaded while we looked: S3's now
            entry = await self.stat(path)
        return not entry.is_dir and await self.reader.is_cached(self.ref(path, entry))

    async def xattrs(self, path: str) -> dict[str, bytes]:
        entry = await self.stat(path)
        if entry.is_dir:
            return {"user.s3.uri": f"s3://{self.spec.bucket}/{self._dir_prefix(path)}".encode()}
        return {"user.s3.uri": f"s3://{self.spec.bucket}/{self.key_of(path)}".encode(),
                "user.s3.etag": entry.etag.encode()}

    # ----------------------------------------------------------- writes

    def _writer(self) -> WriteBack:
        if self.writes is None:
            raise ReadOnly(f"{self.spec.uri}: no write-back to take changes")
        return self.writes

    def _check_name(self, path: str) -> None:
        if not is_posix_name(split(path)[1]):
            raise InvalidArgument(f"{path!r} cannot be an S3 key here")

    async def create(self, parent: str, name: str) -> tuple[str, Entry, WriteHandle]:
        """A new empty file (uploaded on close even if nothing is written)."""
        writes = self._writer()
        path = join(parent, name)
        self._check_name(path)
        local = await writes.open(self.spec.bucket, self.key_of(path), truncate=True, expected=None)
        return path, self._local_entry(path, local), LocalWriter(local, writes)

    def _local_entry(self, path: str, local: LocalFile) -> Entry:
        return Entry(split(path)[1], False, local.size, local.change.mtime_ns, "", time.time())

    async def open_write(self, path: str, truncate: bool) -> WriteHandle:
        """A handle for writing: the current bytes (unless truncated) in a staging file."""
        writes = self._writer()
        entry = await self.stat(path)
        if entry.is_dir:
            raise IsADirectory(path)
        key = self.key_of(path)
        if writes.has_local(self.spec.bucket, key):
            local = await writes.open(self.spec.bucket, key, truncate=truncate, expected=UNKNOWN)
        else:
            source = ObjectSource(self.reader, self.ref(path, entry))
            local = await writes.open(self.spec.bucket, key, truncate=truncate,
                                      expected=entry.etag or UNKNOWN, size=entry.size,
                                      read=source.read)
        return LocalWriter(local, writes)

    async def setattr(self, path: str, changes: AttrChanges, handle: WriteHandle | None) -> None:
        self.refuse_owner_and_mode(path, changes)
        self._writer()
        if changes.size is not None:
            await (handle.truncate(changes.size) if handle is not None
                   else self.truncate(path, changes.size))
        if changes.mtime_ns is not None:
            await self.set_mtime(path, changes.mtime_ns)

    async def truncate(self, path: str, size: int) -> Entry:
        """truncate(2) without an open handle: a new version of the given size."""
        handle = await self.open_write(path, truncate=size == 0)
        try:
            await handle.truncate(size)
        finally:
            await handle.close()
        return await self.stat(path)

    async def unlink(self, parent: str, name: str) -> str:
        writes = self._writer()
        path = join(parent, name)
        if (await self.stat(path)).is_dir:
            raise IsADirectory(path)
        await writes.remove(self.spec.bucket, self.key_of(path))
        return path

    async def mkdir(self, parent: str, name: str) -> tuple[str, Entry]:
        writes = self._writer()
        path = join(parent, name)
        self._check_name(path)
        if await self.lookup(parent, name) is not None:
            raise FileExists(path)
        await writes.make_dir(self.spec.bucket, self._dir_prefix(path))
        return path, Entry(name, True, 0, time.time_ns(), "", time.time())

    async def rmdir(self, parent: str, name: str) -> str:
        writes = self._writer()
        path = join(parent, name)
        if not (await self.stat(path)).is_dir:
            raise NotADirectory(path)
        if await self.listdir(path):
            raise NotEmpty(path)
        await writes.remove(self.spec.bucket, self._dir_prefix(path))
        return path

    async def rename(self, old_parent: str, old_name: str, new_parent: str | None, new_name: str,
                     *, noreplace: bool = False, exchange: bool = False) -> tuple[str, str]:
        """rename(2) within this tree: files by server-side copy (or their local bytes) and
        delete; directories key by key up to RENAME_DIR_LIMIT objects (beyond: EXDEV, and
        `mv` copies). Not atomic: a failure part-way leaves the source in place."""
        self._writer()
        if new_parent is None:
            raise TooBigToRename("rename between sources: copy and delete instead")
        old, new = join(old_parent, old_name), join(new_parent, new_name)
        self._check_name(new)
        if exchange:
            raise InvalidArgument("RENAME_EXCHANGE is not supported on S3")
        source = await self.stat(old)
        if old == new:
            return old, new
        target = await self._stat_or_none(new)
        if target is not None:
            if noreplace:
                raise FileExists(new)
            if source.is_dir and not target.is_dir:
                raise NotADirectory(new)
            if not source.is_dir and target.is_dir:
                raise IsADirectory(new)
            if target.is_dir and await self.listdir(new):
                raise NotEmpty(new)
        if source.is_dir:
            if new == old or new.startswith(old + "/"):
                raise InvalidArgument(f"cannot move {old!r} into itself")
            await self._rename_dir(old, new)
        else:
            await self._rename_file(self.key_of(old), self.key_of(new), source)
        for path in (old_parent, new_parent):
            self.meta.expire_listing(self.ns_id, path)
        return old, new

    async def _stat_or_none(self, path: str) -> Entry | None:
        try:
            return await self.stat(path)
        except NotFound:
            return None

    async def _rename_file(self, old_key: str, new_key: str, entry: Entry) -> None:
        writes = self._writer()
        bucket = self.spec.bucket
        if writes.has_local(bucket, old_key) and await writes.move_local(bucket, old_key, new_key):
            return
        if not entry.etag:  # the local version was uploaded meanwhile: copy what S3 has
            info = await trio.to_thread.run_sync(self.store.head, bucket, old_key,
                                                 limiter=self._limiter)
            entry = Entry(entry.name, False, info.size, info.mtime_ns, info.etag)
        await writes.forget(bucket, new_key)  # an overwritten local version must not land later
        await trio.to_thread.run_sync(self.store.copy_object, bucket, old_key, new_key, entry.etag,
                                      limiter=self._limiter)
        parent, name = split(new_key[len(self.spec.prefix):])
        self.meta.update_entry(self.ns_id, parent, Entry(name, False, entry.size, time.time_ns(),
                                                         entry.etag, 0.0))  # HEAD at next stat
        await writes.remove(bucket, old_key)

    async def _rename_dir(self, old: str, new: str) -> None:
        writes = self._writer()
        bucket = self.spec.bucket
        old_prefix, new_prefix = self._dir_prefix(old), self._dir_prefix(new)

        def list_below() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            for page in self.store.list_pages(bucket, old_prefix, delimiter=""):
                found += page.objects
                if len(found) > RENAME_DIR_LIMIT:
                    break
            return found

        remote = await trio.to_thread.run_sync(list_below, limiter=self._limiter)
        local_keys = [k for k in self.overlay.keys_under(bucket, old_prefix)
                      if not (c := self.overlay.get(bucket, k)) or not c.deleted]
        if len(remote) + len(local_keys) > RENAME_DIR_LIMIT:
            raise TooBigToRename(f"{old}: more than {RENAME_DIR_LIMIT} objects to rename one by one")
        await writes.make_dir(bucket, new_prefix)
        markers = {old_prefix}  # removed last, once everything below was moved
        moved: set[str] = set()
        for key in local_keys:
            target = new_prefix + key[len(old_prefix):]
            if key.endswith("/"):
                await writes.make_dir(bucket, target)
                markers.add(key)
            elif writes.has_local(bucket, key):
                await writes.move_local(bucket, key, target)
            moved.add(key)
        for obj in remote:
            if obj.key in moved or obj.key == old_prefix or self._locally_removed(obj.key):
                continue
            target = new_prefix + obj.key[len(old_prefix):]
            if obj.key.endswith("/"):
                await writes.make_dir(bucket, target)
                markers.add(obj.key)
            else:
                await self._rename_file(obj.key, target, Entry("", False, obj.size, obj.mtime_ns,
                                                               obj.etag))
        for key in sorted(markers, reverse=True):
            await writes.remove(bucket, key)

    def _locally_removed(self, key: str) -> bool:
        change = self.overlay.get(self.spec.bucket, key)
        return change is not None and change.deleted

    async def set_mtime(self, path: str, mtime_ns: int) -> None:
        """utimens: a file with local changes shows `mtime_ns` until uploaded; S3 then
        shows its LastModified (S3 cannot store another time; see docs/writing.md)."""
        self._writer()
        key = self.key_of(path)
        for change_key in (key, key + "/"):
            change = self.overlay.get(self.spec.bucket, change_key)
            if change is not None and not change.deleted:
                change.mtime_ns = mtime_ns


class ReadOnlyBucketTree(ReadOnlyNamespace, BucketTree):
    """A bucket mounted read-only: BucketTree's reads, ReadOnlyNamespace's refusals."""
