"""Mutations: every change the kernel can ask of a bucket tree, handed to write-back.

One job of the bucket namespace (see tree/bucket/__init__.py for the split): create
and open for writing, setattr (truncate; mode, owner, times and user xattrs as one
complete `Posix`), unlink, mkdir, rmdir, rename, symlink, mknod and readlink. Each
checks what the tree shows (through `Reads`, the namespace's own reads), then hands
the change to the write-back layer, which stages, journals and uploads it (metadata as
s3fs's headers, riding along a pending upload or as a server-side copy); a rename also
copies server-side what has no local bytes. After a change the stored listings are
told what moved (`Listings.expire`, `Listings.remember`), the pending view shows the
rest until S3 has it, and the parent directories show new mtime/ctime (DirTimes).

Removals and replacements are conditional on what the user saw (the ETag of the entry
stat'ed here, see docs/writing.md): a removal is journalled with it, a rename's source
removal with the ETag of the version copied, and a rename onto an existing key replaces
it only if it still holds the version seen (a HEAD check before a server-side copy,
ESTALE otherwise; the condition of the upload for local bytes).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import stat
import time
from typing import Protocol

import trio

from ...data.reader import BlockReader
from ...errors import (CacheFull, FileExists, InvalidArgument, IsADirectory, MetadataTooLarge,
                       NameTooLong, NotADirectory, NotEmpty, NotFound, NotPermitted, Offline,
                       ReadOnly, S3FuseError, StaleObject, TooBigToRename)
from ...model import Entry
from ...names import (MAX_KEY_BYTES, MAX_PATH_BYTES, is_posix_name, is_probe_name, join, split,
                      too_long)
from ...posix import NO_HEADERS, Posix, fits, from_headers, stored_mtime, to_headers
from ...store.protocol import ObjectInfo, Store
from ...upload.journal import UNKNOWN, Expected
from ...upload.localfile import LocalFile
from ...upload.writeback import WriteBack
from ..contract import AttrChanges, FileHandle, WriteHandle
from ..sources import ObjectSource
from .dirtimes import DirTimes
from .keys import BucketKeys
from .listing import Listings
from .localsource import LocalWriter
from .pending import PendingView

log = logging.getLogger(__name__)

#: A directory with more objects is not renamed key by key (EXDEV: `mv` copies it).
RENAME_DIR_LIMIT = 1000
#: What mknod may make: a zero-byte object with that type in its mode (the mount is nodev,
#: so a device node is a name with a type and an rdev, never opened).
SPECIAL_TYPES = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFREG)
#: Stored entries of a directory looked at, after the one removed and from the start, to
#: tell that it still has some before reading its whole listing (_keep_if_emptied).
EMPTY_PROBE = 8
#: The ETag of an object with an empty body (its MD5; not under SSE-KMS, which then asks).
EMPTY_ETAG = hashlib.md5(b"").hexdigest()


class Reads(Protocol):
    """What mutations ask of the tree before changing it: the namespace's reads."""

    async def stat(self, path: str) -> Entry: ...

    async def stat_for_change(self, path: str) -> Entry: ...

    async def lookup(self, path: str, name: str) -> tuple[str, Entry] | None: ...

    async def listdir(self, path: str) -> list[Entry]: ...

    async def open(self, path: str) -> FileHandle: ...


class Mutations:
    """The changes of one bucket tree (ReadOnly without a write-back layer)."""

    def __init__(self, keys: BucketKeys, uri: str, reads: Reads, store: Store,
                 reader: BlockReader, listings: Listings, pending: PendingView,
                 writes: WriteBack | None, *, limiter: trio.CapacityLimiter,
                 dirs: DirTimes | None = None):
        self._keys = keys
        self._dirs = dirs or DirTimes()
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

    def _check_name(self, path: str, marker: bool = False) -> None:
        """`path` can be a key (`marker`: a directory's `path/`) of this tree."""
        parent, name = split(path)
        if not parent and self._listings.bucket_missing:  # as the listing of it is ENOENT
            raise NotFound(f"{self._uri}: no such bucket")
        if too_long(name):
            raise NameTooLong(f"{path!r}: a name is at most 255 bytes")
        self._check_key(self._keys.dir_prefix(path) if marker else self._keys.key(path))
        if not is_posix_name(name):
            raise InvalidArgument(f"{path!r} cannot be an S3 key here")
        if is_probe_name(name):  # listings hide such keys: a file of that name would vanish
            raise InvalidArgument(f"{path!r}: the name is reserved for s3fuse's scratch keys")

    # ----------------------------------------------------------- files

    async def create(self, parent: str, name: str,
                     posix: Posix) -> tuple[str, Entry, WriteHandle]:
        """A new empty file with metadata `posix` (uploaded on close even if nothing is
        written; the metadata rides along that upload)."""
        writes = self._writer()
        path = join(parent, name)
        self._check_name(path)
        local = await writes.open(self._keys.bucket, self._keys.key(path), truncate=True,
                                  expected=None, posix=posix)
        self._dirs.changed(parent)
        return path, self._local_entry(path, local, posix), LocalWriter(local, writes)

    def _local_entry(self, path: str, local: LocalFile, posix: Posix) -> Entry:
        return Entry(split(path)[1], False, local.size, stored_mtime(posix, local.change.mtime_ns),
                     "", time.time(), posix=posix)

    async def open_write(self, path: str, truncate: bool) -> WriteHandle:
        """A handle for writing: the current bytes (unless truncated) in a staging file."""
        writes = self._writer()
        entry = await self._reads.stat_for_change(path)
        if entry.is_dir:
            raise IsADirectory(path)
        bucket, key = self._keys.bucket, self._keys.key(path)
        # the metadata of the version opened: the new version keeps it (new mtime, ctime)
        if writes.has_local(bucket, key):
            local = await writes.open(bucket, key, truncate=truncate, expected=UNKNOWN,
                                      posix=entry.posix)
        else:
            entry = await self.s3_version(key, entry)
            source = ObjectSource(self._reader, self._keys.ref(path, entry))
            local = await writes.open(bucket, key, truncate=truncate,
                                      expected=seen(entry), size=entry.size,
                                      read=source.read, posix=entry.posix,
                                      mtime_ns=stored_mtime(entry.posix or NO_HEADERS,
                                                            entry.mtime_ns))
        return LocalWriter(local, writes)

    async def s3_version(self, key: str, entry: Entry) -> Entry:
        """`entry` of a file whose bytes S3 has, with the ETag and size of the version there
        (HEAD) when it shows none: the local version was uploaded while we looked, or a
        metadata change shows no version. Block-cache reads are keyed by the ETag: bytes
        read under none would be served again for whatever version came next."""
        if entry.etag:
            return entry
        info = await trio.to_thread.run_sync(self._store.head, self._keys.bucket, key,
                                             limiter=self._limiter)
        return Entry(entry.name, False, info.size, info.mtime_ns, info.etag,
                     entry.checked_at, entry.posix)

    async def setattr(self, path: str, changes: AttrChanges, handle: WriteHandle | None) -> None:
        """The size (a new version), then the complete new metadata, if any."""
        self._writer()
        if changes.size is not None:
            await (handle.truncate(changes.size) if handle is not None
                   else self.truncate(path, changes.size))
        if changes.posix is not None:
            await self.set_posix(path, changes.posix)

    async def truncate(self, path: str, size: int) -> Entry:
        """truncate(2) without an open handle: a new version of the given size."""
        handle = await self.open_write(path, truncate=size == 0)
        try:
            await handle.truncate(size)
        finally:
            await handle.close()
        return await self._reads.stat(path)

    async def set_posix(self, path: str, posix: Posix) -> None:
        """chmod, chown, utimens, xattr changes: `posix` becomes the stored metadata of
        `path` (a file's object or a directory's `dir/` marker, made if missing)."""
        writes = self._writer()
        entry = await self._reads.stat(path)
        if entry.is_dir and not self._keys.dir_prefix(path):
            raise NotPermitted(f"{self._uri}: the top of a bucket has no object to keep "
                               "its mode, owner or times (mount a prefix to have one)")
        if not fits(posix):  # logged once by the FUSE boundary (a WARNING, with this text)
            raise MetadataTooLarge(f"{self._show(path)}: not changed: its POSIX metadata (user "
                                   "xattrs above all) would exceed S3's 2 KiB per object")
        key = self._keys.dir_prefix(path) if entry.is_dir else self._keys.key(path)
        expected = seen(entry)
        if entry.is_dir:
            self._dirs.forget(path)  # its own times now
            # a directory's entry has no ETag: its marker's, or None when it has none
            # (keys only, as `aws s3 cp` leaves them): then a marker is made with the
            # metadata. Copied onto a missing marker, the change was dropped at upload.
            expected = (None if self._listings.marker_absent(path)
                        else self._listings.marker_etag(path) or UNKNOWN)
            if not path and expected is UNKNOWN:  # a prefix's top: no listing names its marker
                expected = await self._reads.top_marker()
        await writes.set_posix(self._keys.bucket, key, posix, expected=expected,
                               size=entry.size, is_dir=entry.is_dir)

    def _show(self, path: str) -> str:
        return self._keys.uri(self._keys.key(path))

    async def unlink(self, parent: str, name: str) -> str:
        """Remove a file, symlink or special file (anything but a directory)."""
        writes = self._writer()
        path = join(parent, name)
        bucket, key = self._keys.bucket, self._keys.key(path)
        # looked at once a change of it being sent has ended: the removal is of the version
        # it made (a `chmod` just before gives a multipart object a new ETag), not refused
        async with writes.settled(bucket, key):
            entry = await self._reads.stat(path)
            if entry.is_dir:
                raise IsADirectory(path)
            await writes.remove(bucket, key, seen(entry))
        self._dirs.changed(parent)
        await self._keep_if_emptied(parent, name)
        return path

    async def _keep_if_emptied(self, path: str, gone: str) -> None:
        """Directory `path` just lost its entry `gone`. S3 has no directories: one shown
        only because keys start with its prefix (no marker `dir/`, as `aws s3 cp` and boto3
        leave them) vanished with its last key at its next listing (the TTL, a remount),
        where a local disk keeps it until `rmdir`, and writes into it then failed with
        ENOENT. So a directory known to have no marker gets one once nothing is left in it
        (no headers: it shows what the bare prefix showed). Cheap while it has entries:
        the stored ones next to `gone` and at the start are looked at before all of them."""
        if not path or not self._listings.marker_absent(path):
            return  # the top of the tree, a directory with a marker, or one not known
        if self._listings.hidden_file(*split(path)) is not None:
            # a file of that name shows once the directory is gone; and SeaweedFS keeps
            # `d` and `d/` as one entry: the marker's PUT destroyed the file
            return
        for after in (gone, ""):
            entries, _ = self._listings.window(path, after, EMPTY_PROBE)
            if self._pending.merge(path, entries):
                return
        if await self._reads.listdir(path):
            return
        log.debug("%s: its last entry went: keeping it with a marker", self._keys.uri(path))
        try:
            await self._writer().make_dir(self._keys.bucket, self._keys.dir_prefix(path))
        except S3FuseError as exc:  # the removal itself is done: it must not fail for this
            log.warning("%s: emptied, and shown until its next listing only: %s",
                        self._keys.uri(self._keys.dir_prefix(path)), exc)

    # ----------------------------------------------------------- special files

    async def symlink(self, parent: str, name: str, target: str,
                      posix: Posix) -> tuple[str, Entry]:
        """A symbolic link as s3fs stores one: its target is the object's body."""
        body = os.fsencode(target)
        if not body or len(body) >= MAX_PATH_BYTES:
            raise NameTooLong(f"{join(parent, name)}: a link target is 1 to 4095 bytes")
        return await self._special(parent, name, body, posix)

    async def mknod(self, parent: str, name: str, posix: Posix) -> tuple[str, Entry]:
        """A fifo, socket, device node or empty file: a zero-byte object of that type."""
        if stat.S_IFMT(posix.mode or 0) not in SPECIAL_TYPES:
            raise InvalidArgument(f"{join(parent, name)}: mknod makes fifos, sockets, "
                                  "devices and files only")
        return await self._special(parent, name, b"", posix)

    async def _special(self, parent: str, name: str, body: bytes,
                       posix: Posix) -> tuple[str, Entry]:
        writes = self._writer()
        path = join(parent, name)
        self._check_name(path)
        if await self._reads.lookup(parent, name) is not None:
            raise FileExists(path)
        await writes.create_special(self._keys.bucket, self._keys.key(path), body, posix,
                                    expected=None)
        self._dirs.changed(parent)
        return path, Entry(name, False, len(body), stored_mtime(posix, time.time_ns()), "",
                           time.time(), posix=posix)

    async def readlink(self, path: str) -> str:
        """A symlink's target: its body (local bytes while pending, else S3's through the
        block cache, like any read)."""
        entry = await self._reads.stat(path)
        if entry.is_dir or entry.posix is None or not entry.posix.is_symlink:
            raise InvalidArgument(f"{path}: not a symbolic link")
        if not 0 < entry.size < MAX_PATH_BYTES:
            raise NameTooLong(f"{self._show(path)}: a link target of {entry.size} bytes")
        handle = await self._reads.open(path)
        try:
            body = b""
            while len(body) < handle.size:
                chunk = bytes(await handle.read(len(body), handle.size - len(body)))
                if not chunk:
                    break
                body += chunk
        finally:
            await handle.close()
        return os.fsdecode(body)

    # ----------------------------------------------------------- directories

    async def mkdir(self, parent: str, name: str, posix: Posix) -> tuple[str, Entry]:
        """A directory: a `dir/` marker carrying its metadata."""
        writes = self._writer()
        path = join(parent, name)
        self._check_name(path, marker=True)
        if await self._reads.lookup(parent, name) is not None:
            raise FileExists(path)
        await writes.make_dir(self._keys.bucket, self._keys.dir_prefix(path), posix)
        self._dirs.changed(parent)
        return path, Entry(name, True, 0, stored_mtime(posix, time.time_ns()), "", time.time(),
                           posix=posix)

    @staticmethod
    def _check_key(key: str) -> None:
        """S3 refuses keys over MAX_KEY_BYTES: refused at once (ENAMETOOLONG), not by an
        upload that would fail for good after the file was written."""
        if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
            raise NameTooLong(f"{key!r}: an S3 key is at most {MAX_KEY_BYTES} bytes")

    async def rmdir(self, parent: str, name: str) -> str:
        writes = self._writer()
        path = join(parent, name)
        entry = await self._reads.stat(path)
        if not entry.is_dir:
            raise NotADirectory(path)
        if await self._reads.listdir(path) or self._listings.holds_unnamed(path):
            raise NotEmpty(path)
        # the marker's ETag: learned from our own upload of it, else from the listing of the
        # directory itself (the one just checked for emptiness: what the user saw)
        expected = entry.etag or self._listings.marker_etag(path) or UNKNOWN
        await self._refuse_marker_bytes(path, expected)
        await writes.remove(self._keys.bucket, self._keys.dir_prefix(path), expected)
        self._dirs.changed(parent)
        self._dirs.forget(path)
        self._listings.uncover(path)
        await self._keep_if_emptied(parent, name)
        return path

    async def _refuse_marker_bytes(self, path: str, etag: Expected) -> None:
        """NotEmpty when directory `path`'s marker object holds bytes (S3 lets a `dir/` key
        have a body; the tree shows none): removing it would lose them. Asked (a HEAD)
        only of a marker whose ETag is not the empty body's."""
        if not isinstance(etag, str) or etag.startswith(EMPTY_ETAG):  # SeaweedFS: `...-0`
            return
        marker = self._keys.dir_prefix(path)
        info = await self._head(marker)
        if info is not None and info.size:
            log.warning("%s holds %d bytes: the directory is not removed (remove the object "
                        "with another tool if they are not needed)", self._keys.uri(marker),
                        info.size)
            raise NotEmpty(f"{path}: its marker object holds {info.size} bytes")

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
        if too_long(old_name):
            raise NameTooLong(f"{old!r}: a name is at most 255 bytes")
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
            if target.is_dir and (await self._reads.listdir(new)
                                  or self._listings.holds_unnamed(new)):
                raise NotEmpty(new)
        if source.is_dir:
            if new == old or new.startswith(old + "/"):
                raise InvalidArgument(f"cannot move {old!r} into itself")
            await self._rename_dir(old, new, source.posix)
            self._dirs.forget(old)
            self._listings.uncover(old)
            relist = True
        else:
            relist = await self._rename_file(self._keys.key(old), self._keys.key(new), source,
                                             None if target is None else seen(target))
        if relist:
            for path in (old_parent, new_parent):
                self._listings.expire(path)
        self._dirs.changed(old_parent, new_parent)
        if old_parent != new_parent:
            await self._keep_if_emptied(old_parent, old_name)
        return old, new

    async def _stat_or_none(self, path: str) -> Entry | None:
        try:
            return await self._reads.stat(path)
        except NotFound:
            return None

    async def _rename_file(self, old_key: str, new_key: str, entry: Entry,
                           target: Expected = UNKNOWN) -> bool:
        """Move one file; `target`: what the user saw at `new_key` (its ETag, None for
        nothing, UNKNOWN: not looked at, or local changes). True when S3 changed (a copy
        and a removal): the stored listings are then listed again; False when the newest
        bytes were local and moved to the new key's pending upload: the pending view shows
        both names until their uploads land and teach the listings (relisting the
        directory at every rename made `rsync -a` of N new files send N ListObjectsV2 of
        a growing directory, N^2/1000 pages)."""
        writes = self._writer()
        bucket = self._keys.bucket
        if (writes.has_local(bucket, old_key)
                and await writes.move_local(bucket, old_key, new_key, target)):
            return False
        # A change of the source being sent (the copy of a `chmod` just before) ends first,
        # and a queued one waits: it rides on this copy, and the removal replaces it. Else
        # the copy went from the version before it, and the removal of that version was
        # refused once the change had given the object a new ETag (a multipart object's
        # does): the source came back beside the new name, or the rename failed ESTALE.
        async with writes.settled(bucket, old_key) as changed:
            if changed:  # S3's version now (its ETag), the metadata as the user set it
                entry = dataclasses.replace(entry, etag="")
            return await self._copy_file(old_key, new_key, entry, target)

    async def _copy_file(self, old_key: str, new_key: str, entry: Entry,
                         target: Expected) -> bool:
        """The server-side copy of a rename and the removal of its source."""
        writes = self._writer()
        bucket = self._keys.bucket
        entry = await self.s3_version(old_key, entry)  # uploaded meanwhile: copy what S3 has
        if isinstance(target, str):
            await self._check_target(new_key, target)
        # the copy cannot be taken back (it may replace a file): on a full cache disk the
        # removal of the source could not be journalled after it, and S3 kept both names
        await writes.room_for_change()
        await writes.forget(bucket, new_key)  # an overwritten local version must not land later
        # The metadata moves with the object: a pending change of it (not sent yet) rides on
        # this copy, and stored metadata gets the new ctime (a rename changes the node).
        # An object known to have no headers gets its LastModified as its mtime: the copy's
        # own LastModified would have shown as a new mtime (make, rsync: a changed file).
        # One whose headers are unknown (never looked up: a directory's rename) keeps what
        # S3 has.
        posix = writes.posix(bucket, old_key) or entry.posix
        if posix == NO_HEADERS:
            posix = NO_HEADERS.replace(mtime_ns=entry.mtime_ns)
        if posix is not None:
            posix = posix.replace(ctime_ns=time.time_ns())
        copy = functools.partial(self._store.copy_object, size=entry.size,
                                 metadata=None if posix is None else to_headers(posix))
        etag = await trio.to_thread.run_sync(copy, bucket, old_key, new_key, entry.etag,
                                             limiter=self._limiter)
        parent, name = split(new_key[len(self._keys.prefix):])
        shown = posix.mtime_ns if posix is not None and posix.mtime_ns is not None else None
        # known as copied (its ETag, and the metadata it was given): no HEAD at the next stat;
        # a copy that kept unknown headers is looked at again (a marker copied with its
        # body, by a directory's rename, is no file: its directory is listed again)
        if not new_key.endswith("/"):
            self._remember_copy(new_key, parent, Entry(
                name, False, entry.size, shown or time.time_ns(), etag or entry.etag,
                time.time() if etag and posix is not None else 0.0, posix))
        writes.move_followers(bucket, old_key, new_key)  # read handles go with the file
        await writes.remove(bucket, old_key, seen(entry))  # only the version copied
        return True

    def _remember_copy(self, key: str, parent: str, entry: Entry) -> None:
        """Store the entry of a copy made; when the disk refuses it, the move goes on (the
        copy is in S3: the source is removed, and the listings are expired and read again)
        instead of failing with both names in S3 and the new one not shown."""
        try:
            self._listings.remember(parent, entry)
        except CacheFull as exc:
            log.warning("%s copied but not stored in the listings (%s): listed again",
                        self._keys.uri(key), exc)

    async def _check_target(self, key: str, etag: str) -> None:
        """A rename replaces `key` only if it still holds the version the user saw (HEAD:
        CopyObject's own If-Match is not offered by every server nor by boto3's copy)."""
        info = await self._head(key)
        if info is not None and info.etag != etag:  # (gone meanwhile: nothing newer to lose)
            log.warning("%s changed in S3 since it was looked at: not replaced by a rename",
                        self._keys.uri(key))
            raise StaleObject(f"{self._keys.uri(key)}: changed in S3, not replaced")

    async def _rename_dir(self, old: str, new: str, posix: Posix | None) -> None:
        """Every key below `old` moved below `new`; the markers keep their metadata
        (`posix`: the top one's; those below: pending, else a HEAD of the marker).

        What is pending below `old` is read before the first await, with the metadata
        of each pending marker: an upload landing meanwhile clears its overlay, and a
        marker read after that showed no metadata, so the directory moved back and forth
        lost its owner (pjdfstest rename/09.t, 1 run in 4)."""
        writes = self._writer()
        bucket = self._keys.bucket
        old_prefix, new_prefix = self._keys.dir_prefix(old), self._keys.dir_prefix(new)
        local = self._local_below(old_prefix)

        def list_below() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            for page in self._store.list_pages(bucket, old_prefix, delimiter=""):
                found += page.objects
                if len(found) > RENAME_DIR_LIMIT:
                    break
            return found

        try:
            remote = await trio.to_thread.run_sync(list_below, limiter=self._limiter)
        except Offline:
            if not self._pending.made_here(old_prefix):
                raise
            remote = []  # made here and never uploaded: what is below it is local too
        local.update(self._local_below(old_prefix))  # made while listing (newest wins)
        if len(remote) + len(local) > RENAME_DIR_LIMIT:
            raise TooBigToRename(f"{old}: more than {RENAME_DIR_LIMIT} objects to rename one by one")
        moving = [*local, *(obj.key for obj in remote)]
        for key in moving:  # nothing moved when one is too long
            self._check_key(new_prefix + key[len(old_prefix):])
        # Killed part-way, S3 holds both trees half-moved: their stored listings go stale
        # before the first copy (meta.sqlite), so the next mount lists them again instead
        # of showing the old tree whole and the new one not at all until the TTL.
        for path in {split(old)[0], split(new)[0], old,
                     *(join(old, key[len(old_prefix):]).rpartition("/")[0] for key in moving)}:
            self._listings.expire(path)
        # the new markers are queued once the copies below them are done: SeaweedFS loses a
        # marker stored while an object below it is (upload/journal.py, _STARTABLE), and
        # these copies run here, not through the queue
        made: dict[str, Posix | None] = {new_prefix: posix}
        markers = {old_prefix}  # removed last, once everything below was moved
        listed = {obj.key: obj for obj in remote}
        seen_markers = {key: obj.etag for key, obj in listed.items() if key.endswith("/")}
        for key, marker_posix in local.items():
            if self._pending.removed(key):  # removed since it was read: nothing to move
                continue
            target = new_prefix + key[len(old_prefix):]
            if key.endswith("/"):
                made[target] = marker_posix
                markers.add(key)
            else:  # local bytes move; new metadata of S3's bytes (or bytes uploaded
                # meanwhile) go by a copy, of the version listed, else of the one a HEAD finds
                obj = listed.get(key)
                await self._rename_file(key, target, Entry(
                    "", False, obj.size if obj else 0, obj.mtime_ns if obj else 0,
                    obj.etag if obj else ""))
        for obj in remote:
            if obj.key in local or self._pending.removed(obj.key):
                continue
            if obj.key.endswith("/") and obj.size:  # a marker with a body: copied, kept whole
                made.pop(new_prefix + obj.key[len(old_prefix):], None)
                markers.discard(obj.key)
                await self._rename_file(obj.key, new_prefix + obj.key[len(old_prefix):],
                                        Entry("", False, obj.size, obj.mtime_ns, obj.etag))
                continue
            if obj.key == old_prefix:
                continue
            if is_probe_name(obj.key.rpartition("/")[2]):  # a probe's scratch key: not moved
                await writes.remove(bucket, obj.key, obj.etag)
                continue
            target = new_prefix + obj.key[len(old_prefix):]
            if obj.key.endswith("/"):
                made[target] = await self._marker_posix(obj.key)
                markers.add(obj.key)
            else:
                await self._rename_file(obj.key, target, Entry("", False, obj.size, obj.mtime_ns,
                                                               obj.etag))
        for target in sorted(made):  # a directory's before those below it
            await writes.make_dir(bucket, target, made[target])
        for key in sorted(markers, reverse=True):
            await writes.remove(bucket, key, seen_markers.get(key) or UNKNOWN)

    def _local_below(self, prefix: str) -> dict[str, Posix | None]:
        """The keys written or made locally below directory `prefix` (not the marker
        `prefix` itself: the caller moves it), each marker with its pending metadata."""
        writes = self._writer()
        return {key: writes.posix(self._keys.bucket, key) if key.endswith("/") else None
                for key in self._pending.live_keys_under(prefix) if key != prefix}

    async def _marker_posix(self, marker: str) -> Posix | None:
        """The metadata a directory marker in S3 stores (a HEAD; None: gone meanwhile)."""
        info = await self._head(marker)
        return None if info is None else from_headers(info.metadata or {}, is_dir=True)

    async def _head(self, key: str) -> ObjectInfo | None:
        """A HEAD of `key` in this tree's bucket, in a thread; None when it is gone."""
        try:
            return await trio.to_thread.run_sync(self._store.head, self._keys.bucket, key,
                                                 limiter=self._limiter)
        except NotFound:
            return None


def seen(entry: Entry) -> Expected:
    """The condition a change of what `entry` shows must meet: its ETag (UNKNOWN for an
    entry of local changes or a directory without a marker: the journal chains them)."""
    return entry.etag or UNKNOWN
