"""Mutations: every change the kernel can ask of a bucket tree, handed to write-back.

One job of the bucket namespace (see tree/bucket/__init__.py for the split): create
and open for writing, setattr (truncate, mtime), unlink, mkdir, rmdir and rename of
files and directories. Each checks what the tree shows (through `Reads`, the
namespace's own reads), then hands the change to the write-back layer, which stages,
journals and uploads it; a rename also copies server-side what has no local bytes.
After a change the stored listings are told what moved (`Listings.expire`,
`Listings.remember`) and the pending view shows the rest until S3 has it.

Removals and replacements are conditional on what the user saw (the ETag of the entry
stat'ed here, see docs/writing.md): a removal is journalled with it, a rename's source
removal with the ETag of the version copied, and a rename onto an existing key replaces
it only if it still holds the version seen (a HEAD check before a server-side copy,
ESTALE otherwise; the condition of the upload for local bytes).
"""
from __future__ import annotations

import logging
import time
from typing import Protocol

import trio

from ...data.reader import BlockReader
from ...errors import (FileExists, InvalidArgument, IsADirectory, NotADirectory, NotEmpty,
                       NotFound, ReadOnly, StaleObject, TooBigToRename)
from ...model import Entry
from ...names import is_posix_name, join, split
from ...store.protocol import ObjectInfo, Store
from ...upload.journal import UNKNOWN, Expected
from ...upload.localfile import LocalFile
from ...upload.writeback import WriteBack
from ..contract import AttrChanges, WriteHandle
from ..sources import ObjectSource
from .keys import BucketKeys
from .listing import Listings
from .localsource import LocalWriter
from .pending import PendingView

log = logging.getLogger(__name__)

#: A directory with more objects is not renamed key by key (EXDEV: `mv` copies it).
RENAME_DIR_LIMIT = 1000


class Reads(Protocol):
    """What mutations ask of the tree before changing it: the namespace's reads."""

    async def stat(self, path: str) -> Entry: ...

    async def lookup(self, path: str, name: str) -> tuple[str, Entry] | None: ...

    async def listdir(self, path: str) -> list[Entry]: ...


class Mutations:
    """The changes of one bucket tree (ReadOnly without a write-back layer)."""

    def __init__(self, keys: BucketKeys, uri: str, reads: Reads, store: Store,
                 reader: BlockReader, listings: Listings, pending: PendingView,
                 writes: WriteBack | None, *, limiter: trio.CapacityLimiter):
        self._keys = keys
        self._uri = uri
        self._reads = reads
        self._store = store
        self._reader = reader
        self._listings = listings
        self._pending = pending
        self._writes = writes
        self._limiter = limiter

    def _writer(self) -> WriteBack:
        if self._writes is None:
            raise ReadOnly(f"{self._uri}: no write-back to take changes")
        return self._writes

    def _check_name(self, path: str) -> None:
        if not is_posix_name(split(path)[1]):
            raise InvalidArgument(f"{path!r} cannot be an S3 key here")

    # ----------------------------------------------------------- files

    async def create(self, parent: str, name: str) -> tuple[str, Entry, WriteHandle]:
        """A new empty file (uploaded on close even if nothing is written)."""
        writes = self._writer()
        path = join(parent, name)
        self._check_name(path)
        local = await writes.open(self._keys.bucket, self._keys.key(path), truncate=True,
                                  expected=None)
        return path, self._local_entry(path, local), LocalWriter(local, writes)

    def _local_entry(self, path: str, local: LocalFile) -> Entry:
        return Entry(split(path)[1], False, local.size, local.change.mtime_ns, "", time.time())

    async def open_write(self, path: str, truncate: bool) -> WriteHandle:
        """A handle for writing: the current bytes (unless truncated) in a staging file."""
        writes = self._writer()
        entry = await self._reads.stat(path)
        if entry.is_dir:
            raise IsADirectory(path)
        bucket, key = self._keys.bucket, self._keys.key(path)
        if writes.has_local(bucket, key):
            local = await writes.open(bucket, key, truncate=truncate, expected=UNKNOWN)
        else:
            source = ObjectSource(self._reader, self._keys.ref(path, entry))
            local = await writes.open(bucket, key, truncate=truncate,
                                      expected=seen(entry), size=entry.size,
                                      read=source.read)
        return LocalWriter(local, writes)

    async def setattr(self, path: str, changes: AttrChanges, handle: WriteHandle | None) -> None:
        """Size and mtime (owner and mode were refused by the namespace)."""
        self._writer()
        if changes.size is not None:
            await (handle.truncate(changes.size) if handle is not None
                   else self.truncate(path, changes.size))
        if changes.mtime_ns is not None:
            self.set_mtime(path, changes.mtime_ns)

    async def truncate(self, path: str, size: int) -> Entry:
        """truncate(2) without an open handle: a new version of the given size."""
        handle = await self.open_write(path, truncate=size == 0)
        try:
            await handle.truncate(size)
        finally:
            await handle.close()
        return await self._reads.stat(path)

    def set_mtime(self, path: str, mtime_ns: int) -> None:
        """utimens: a file with local changes shows `mtime_ns` until uploaded; S3 then
        shows its LastModified (S3 cannot store another time; see docs/writing.md)."""
        self._writer()
        self._pending.touch(path, mtime_ns)

    async def unlink(self, parent: str, name: str) -> str:
        writes = self._writer()
        path = join(parent, name)
        entry = await self._reads.stat(path)
        if entry.is_dir:
            raise IsADirectory(path)
        await writes.remove(self._keys.bucket, self._keys.key(path), seen(entry))
        return path

    # ----------------------------------------------------------- directories

    async def mkdir(self, parent: str, name: str) -> tuple[str, Entry]:
        writes = self._writer()
        path = join(parent, name)
        self._check_name(path)
        if await self._reads.lookup(parent, name) is not None:
            raise FileExists(path)
        await writes.make_dir(self._keys.bucket, self._keys.dir_prefix(path))
        return path, Entry(name, True, 0, time.time_ns(), "", time.time())

    async def rmdir(self, parent: str, name: str) -> str:
        writes = self._writer()
        path = join(parent, name)
        entry = await self._reads.stat(path)
        if not entry.is_dir:
            raise NotADirectory(path)
        if await self._reads.listdir(path):
            raise NotEmpty(path)
        await writes.remove(self._keys.bucket, self._keys.dir_prefix(path), seen(entry))
        return path

    # ----------------------------------------------------------- rename

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
        source = await self._reads.stat(old)
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
            if target.is_dir and await self._reads.listdir(new):
                raise NotEmpty(new)
        if source.is_dir:
            if new == old or new.startswith(old + "/"):
                raise InvalidArgument(f"cannot move {old!r} into itself")
            await self._rename_dir(old, new)
        else:
            await self._rename_file(self._keys.key(old), self._keys.key(new), source,
                                    None if target is None else seen(target))
        for path in (old_parent, new_parent):
            self._listings.expire(path)
        return old, new

    async def _stat_or_none(self, path: str) -> Entry | None:
        try:
            return await self._reads.stat(path)
        except NotFound:
            return None

    async def _rename_file(self, old_key: str, new_key: str, entry: Entry,
                           target: Expected = UNKNOWN) -> None:
        """Move one file; `target`: what the user saw at `new_key` (its ETag, None for
        nothing, UNKNOWN: not looked at, or local changes)."""
        writes = self._writer()
        bucket = self._keys.bucket
        if (writes.has_local(bucket, old_key)
                and await writes.move_local(bucket, old_key, new_key, target)):
            return
        if not entry.etag:  # the local version was uploaded meanwhile: copy what S3 has
            info = await trio.to_thread.run_sync(self._store.head, bucket, old_key,
                                                 limiter=self._limiter)
            entry = Entry(entry.name, False, info.size, info.mtime_ns, info.etag)
        if isinstance(target, str):
            await self._check_target(bucket, new_key, target)
        await writes.forget(bucket, new_key)  # an overwritten local version must not land later
        await trio.to_thread.run_sync(self._store.copy_object, bucket, old_key, new_key, entry.etag,
                                      limiter=self._limiter)
        parent, name = split(new_key[len(self._keys.prefix):])
        self._listings.remember(parent, Entry(name, False, entry.size, time.time_ns(),
                                              entry.etag, 0.0))  # HEAD at next stat
        await writes.remove(bucket, old_key, seen(entry))  # only the version copied

    async def _check_target(self, bucket: str, key: str, etag: str) -> None:
        """A rename replaces `key` only if it still holds the version the user saw (HEAD:
        CopyObject's own If-Match is not offered by every server nor by boto3's copy)."""
        try:
            info = await trio.to_thread.run_sync(self._store.head, bucket, key,
                                                 limiter=self._limiter)
        except NotFound:  # removed meanwhile: nothing newer to lose
            return
        if info.etag != etag:
            log.warning("%s changed in S3 since it was looked at: not replaced by a rename",
                        self._keys.uri(key))
            raise StaleObject(f"{self._keys.uri(key)}: changed in S3, not replaced")

    async def _rename_dir(self, old: str, new: str) -> None:
        writes = self._writer()
        bucket = self._keys.bucket
        old_prefix, new_prefix = self._keys.dir_prefix(old), self._keys.dir_prefix(new)

        def list_below() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            for page in self._store.list_pages(bucket, old_prefix, delimiter=""):
                found += page.objects
                if len(found) > RENAME_DIR_LIMIT:
                    break
            return found

        remote = await trio.to_thread.run_sync(list_below, limiter=self._limiter)
        local_keys = self._pending.live_keys_under(old_prefix)
        if len(remote) + len(local_keys) > RENAME_DIR_LIMIT:
            raise TooBigToRename(f"{old}: more than {RENAME_DIR_LIMIT} objects to rename one by one")
        await writes.make_dir(bucket, new_prefix)
        markers = {old_prefix}  # removed last, once everything below was moved
        seen_markers = {obj.key: obj.etag for obj in remote if obj.key.endswith("/")}
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
            if obj.key in moved or obj.key == old_prefix or self._pending.removed(obj.key):
                continue
            target = new_prefix + obj.key[len(old_prefix):]
            if obj.key.endswith("/"):
                await writes.make_dir(bucket, target)
                markers.add(obj.key)
            else:
                await self._rename_file(obj.key, target, Entry("", False, obj.size, obj.mtime_ns,
                                                               obj.etag))
        for key in sorted(markers, reverse=True):
            await writes.remove(bucket, key, seen_markers.get(key) or UNKNOWN)


def seen(entry: Entry) -> Expected:
    """The condition a change of what `entry` shows must meet: its ETag (UNKNOWN for an
    entry of local changes or a directory without a marker: the journal chains them)."""
    return entry.etag or UNKNOWN
