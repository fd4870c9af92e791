"""The bucket namespace: s3://bucket/prefix/ as the Namespace contract, composed of its parts.

One job: answer the contract of tree/contract.py for a bucket tree by composing the
three parts of the split (tree/bucket/__init__.py), each of which gets only what it
needs: Listings (what S3 holds, stored and kept fresh), PendingView (local changes
laid over it) and Mutations (changes, handed to write-back). The reads live here
because each one asks both of the first two: the pending view first, then the
stored listing, then S3.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import trio

from ...cache.meta import MetaStore
from ...cache.overlay import Overlay
from ...config import SourceSpec
from ...data.prefetch import SiblingPrefetcher
from ...data.reader import BlockReader
from ...errors import InvalidArgument, IsADirectory, NoAttribute, NotFound, NotSupported
from ...model import Entry, ObjectRef
from ...names import join, split
from ...posix import NO_HEADERS, Posix, storable_xattr_name
from ...store.protocol import Store
from ...upload.journal import Expected
from ...upload.localfile import LocalFile
from ...upload.uploader import UploadResult
from ...upload.writeback import WriteBack
from ...util.supervisor import Supervisor
from ..contract import AttrChanges, FileHandle, Namespace, ReadOnlyNamespace, WriteHandle
from ..sources import ObjectSource
from .dirtimes import DirTimes
from .keys import BucketKeys
from .listing import Listings
from .localsource import FollowingReader, LocalReader
from .mutations import Mutations
from .paged import PagedDir
from .pending import GONE, PendingView
from .posixheads import PosixHeads
from .top import TopDir

log = logging.getLogger(__name__)

#: The names design.md reserves: computed here (user.s3.uri, user.s3.etag), by the FUSE
#: adapter (user.s3fuse.*), or by manifest views (user.s3exchange.*): never stored, and
#: setting or removing one is accepted and changes nothing (BucketTree._computed_xattr).
#: Every other user.* name is the user's own, `user.s3.note` too.
RESERVED_XATTRS = frozenset({"user.s3.uri", "user.s3.etag", "user.s3exchange.id",
                             "user.s3exchange.meta", "user.s3fuse.cached", "user.s3fuse.pinned"})


def reserved_xattr(name: str) -> bool:
    return name in RESERVED_XATTRS


class BucketTree(Namespace):
    """Namespace over s3://bucket/prefix/ (ReadOnlyBucketTree when mounted read-only)."""

    root = ""
    inode_base = None

    def __init__(self, spec: SourceSpec, store: Store, meta: MetaStore, reader: BlockReader,
                 *, ttl: float, list_limiter: trio.CapacityLimiter,
                 siblings: SiblingPrefetcher | None = None, background: Supervisor | None = None,
                 writes: WriteBack | None = None, posix_metadata: bool = True):
        self.name = spec.name
        self.spec = spec
        self.ttl = ttl
        self.keys = BucketKeys(spec.bucket, spec.prefix)
        self.ns_id = self.keys.ns_id
        self._reader = reader
        self._siblings = siblings
        self._writes = writes
        self._started = int(time.time() * 1e9)
        background = background or Supervisor()
        self._listings = Listings(self.keys, store, meta, ttl=ttl, limiter=list_limiter,
                                  background=background,
                                  remove_probes=writes is not None and self.writable)
        self._heads = PosixHeads(self.keys, store, self._listings, enabled=posix_metadata,
                                 background=background, reader=reader)
        self.posix_lookups = posix_metadata
        overlay = writes.overlay if writes is not None else Overlay()
        self._pending = PendingView(self.keys, overlay, self._listings)
        self._top = TopDir(self.keys, store, overlay, ttl=ttl, enabled=posix_metadata,
                           limiter=list_limiter)
        self._dirs = DirTimes()
        self._mutations = Mutations(self.keys, spec.uri, self, store, reader, self._listings,
                                    self._pending, writes, limiter=list_limiter,
                                    dirs=self._dirs)
        if writes is not None:
            writes.watch(spec.bucket, self._uploaded)

    def _uploaded(self, key: str, result: UploadResult | None) -> bool:
        """The write-back layer's news of an upload that landed (`result` None: a removal);
        False: it could not be recorded in the stored listing (a full disk)."""
        if self.keys.prefix and key == self.keys.dir_prefix(""):
            self._top.landed(result)
        return self._pending.uploaded(key, result)

    # ----------------------------------------------------------- names

    def parent(self, ref: str) -> str:
        return split(ref)[0]

    def describe(self, ref: str) -> str:
        return ref

    def negative_ttl(self, parent: str, ttl: float) -> float:
        # until the listing that lacks the name goes stale: a key added meanwhile then
        # shows to `ls` and `stat` alike (a negative entry outliving that listing made
        # `ls` list a name `stat` said was not there, `ls -l` printing `?????????`)
        return self._listings.fresh_for(parent, ttl)

    def ref(self, path: str, entry: Entry) -> ObjectRef:
        return self.keys.ref(path, entry)

    # ----------------------------------------------------------- directories

    async def opendir(self, path: str) -> PagedDir:
        """The listing made fresh, then read page by page as readdir asks (paged.py)."""
        await self._pending.listing_or_local(path)
        return PagedDir(path, self._listings, self._pending, self._dirs)

    async def listdir(self, path: str) -> list[Entry]:
        """The entries of `path`, local changes included (the stored listing is read in
        a worker thread; its first subdirectories are listed ahead)."""
        await self._pending.listing_or_local(path)
        return self._dirs.shown_in(path, self._pending.merge(path,
                                                             await self._listings.entries(path)))

    async def lookup(self, path: str, name: str) -> tuple[str, Entry] | None:
        """The entry of `path/name`, its POSIX metadata looked up (HEAD) when unknown: a
        lookup must show the right type and mode (posixheads.py)."""
        child = join(path, name)
        for listed in (False, True):
            if listed:  # judged again: a relisting replaced the stored entry (a directory
                await self._pending.listing_or_local(path)  # being removed, a file it hid)
            local = self._pending.local(path, name)
            if local is not None:
                return None if local is GONE else (child, self._dirs.shown(child, local))
        entry = self._listings.entry(path, name)
        if entry is None:  # not in a listing being replaced: maybe in the new one
            await self._listings.relisted(path)
            entry = self._listings.entry(path, name)
        if entry is not None:
            entry = await self._heads.complete(path, entry)
        return None if entry is None else (child, self._dirs.shown(child, entry))

    # ----------------------------------------------------------- files

    def _root_entry(self) -> Entry:
        return Entry("", True, 0, self._started, "", time.time())

    async def top(self) -> Entry:
        return dataclasses.replace(await self.stat(""), name=self.name)

    async def top_marker(self) -> Expected:
        """The ETag of a prefix's marker (None: it has none) for a change of the top."""
        return await self._top.marker()

    async def stat(self, path: str) -> Entry:
        """The entry of `path`, revalidated with HEAD when older than the TTL (which
        refreshes its POSIX metadata too), else with that metadata looked up when unknown;
        a directory with the times its entries' changes gave it here (DirTimes)."""
        return self._dirs.shown(path, await self._stat(path))

    async def stat_for_change(self, path: str) -> Entry:
        """`stat`, with the POSIX metadata of a file or a directory's marker looked up even
        under --no-posix-metadata (one HEAD, stored; a directory is listed first if it was
        not, to know whether it has a marker): the change keeps what S3 has that it does
        not change. A prefix source's top: its marker's (TopDir)."""
        if not path:  # as `stat("")`, looked up
            return self._dirs.shown("", await self._top.entry(self._root_entry(),
                                                              for_change=True))
        entry = await self.stat(path)
        if (self.posix_lookups or entry.posix is not None
                or not entry.is_dir and not entry.etag):  # (a file not uploaded yet)
            return entry
        completed = await self._heads.complete(split(path)[0], entry, for_change=True)
        if completed is None:
            raise NotFound(path)
        return completed

    async def _stat(self, path: str) -> Entry:
        if not path:
            return await self._top.entry(self._root_entry())
        parent, name = split(path)
        local = self._pending.local(parent, name)
        if isinstance(local, Entry):
            return local
        if local is GONE:
            raise NotFound(path)
        entry = self._listings.entry(parent, name)
        if entry is None:
            found = await self.lookup(parent, name)
            if found is None:
                raise NotFound(path)
            entry = found[1]
        if entry.is_dir or time.time() - entry.checked_at < self.ttl:
            completed = await self._heads.complete(parent, entry)
            if completed is None:
                raise NotFound(path)
            return completed
        return await self._listings.revalidate(parent, entry)

    async def open(self, path: str) -> FileHandle:
        source = await self._source(path)
        if self._writes is None or (isinstance(source, LocalReader)
                                    and isinstance(source.target, LocalFile)):
            return source  # nothing to follow: read-only, or the shared local file itself
        return FollowingReader(source, self._writes, self.keys.bucket, self.keys.key(path),
                               self._reopen)

    async def _reopen(self, key: str) -> FileHandle:
        """The newest version of the file at `key` (a FollowingReader's switch)."""
        place = self.keys.place(key)
        if place is None:
            raise NotFound(key)
        return await self._source(join(*place))

    async def _source(self, path: str) -> FileHandle:
        """A handle on the newest version of the file at `path`."""
        entry = await self.stat(path)
        if entry.is_dir:
            raise IsADirectory(path)
        if self._writes is not None:
            local = self._writes.reader(self.keys.bucket, self.keys.key(path))
            if local is not None:
                return LocalReader(local, self._writes)
            if not entry.etag:  # the local version was uploaded while we looked: S3's now
                entry = await self._mutations.s3_version(self.keys.key(path),
                                                         await self.stat(path))
        if self._siblings is not None:
            parent, name = split(path)
            self._heads.reading(parent)
            self._siblings.opened((self.ns_id, parent), name, lambda after, n: [
                (e.name, None if self._heads.fetches_whole(parent, e)  # its lookup's GET does
                 else self.ref(join(parent, e.name), e))
                for e in self._listings.files_after(parent, after, n)])
        return ObjectSource(self._reader, self.ref(path, entry),
                            changed=lambda: self._changed_in_s3(path, entry.etag))

    def _changed_in_s3(self, path: str, etag: str) -> None:
        """A read of version `etag` of `path` found S3 holding another one, or none: the
        stored entry (if still that version) is dropped, so the next stat or open asks S3
        instead of opening the same gone version, ESTALE after ESTALE, until the TTL."""
        parent, name = split(path)
        stored = self._listings.entry(parent, name)
        if stored is not None and stored.etag == etag:
            log.debug("%s changed in S3: looked up again at its next use", self.keys.uri(
                self.keys.key(path)))
            self._listings.unknown(parent, name)

    async def cached(self, path: str) -> bool:
        if self._writes is not None and self._writes.has_local(self.keys.bucket, self.keys.key(path)):
            return True  # the newest bytes are on this disk
        entry = await self.stat(path)
        if not entry.etag:  # the local version was uploaded while we looked: S3's now
            entry = await self.stat(path)
        return not entry.is_dir and await self._reader.is_cached(self.ref(path, entry))

    async def xattrs(self, path: str) -> dict[str, bytes]:
        """The user's own `user.*` attributes stored with the object (s3fs's format), and
        the computed ones over them (a stored `user.s3.uri` never hides the real one)."""
        entry = await self.stat(path)
        found = {name: value for name, value in (entry.posix or NO_HEADERS).xattrs
                 if name.startswith("user.") and not reserved_xattr(name)}
        if entry.is_dir:
            found["user.s3.uri"] = self.keys.uri(self.keys.dir_prefix(path)).encode()
            return found
        found["user.s3.uri"] = self.keys.uri(self.keys.key(path)).encode()
        if entry.etag:  # none while the local version waits for its upload: not shown empty
            found["user.s3.etag"] = entry.etag.encode()
        return found

    async def setxattr(self, path: str, name: str, value: bytes, posix: Posix) -> None:
        if self._computed_xattr(path, name):
            return
        await self._mutations.set_posix(path, posix)

    async def removexattr(self, path: str, name: str, posix: Posix) -> None:
        if self._computed_xattr(path, name):
            return
        if name not in await self.xattrs(path):
            raise NoAttribute(f"{path}: no {name}")
        await self._mutations.set_posix(path, posix)

    def _computed_xattr(self, path: str, name: str) -> bool:
        """Is `name` one s3fuse computes? A change of it is then accepted and changes nothing:
        listxattr shows them (`getfattr -d`), so `cp -a` and `mv` across directories copy
        them onto the new file and `rsync -X` removes them where its source has none; a
        refusal failed every such copy (rsync: exit 23). Other user attributes are stored in
        s3fs's format; other namespaces and names that format cannot hold are refused."""
        if not name.startswith("user."):
            raise NotSupported(f"{path}: only user.* attributes are stored ({name})")
        if reserved_xattr(name):
            log.debug("%s: %s is computed by s3fuse: left as it is", path, name)
            return True
        if not storable_xattr_name(name):
            raise InvalidArgument(f"{path}: {name!r}: s3fs's format cannot hold ',' or '\"' "
                                  "in an attribute name")
        return False

    # ----------------------------------------------------------- changes (Mutations)

    async def create(self, parent: str, name: str,
                     posix: Posix) -> tuple[str, Entry, WriteHandle]:
        return await self._mutations.create(parent, name, posix)

    async def open_write(self, path: str, truncate: bool) -> WriteHandle:
        return await self._mutations.open_write(path, truncate)

    async def setattr(self, path: str, changes: AttrChanges, handle: WriteHandle | None) -> None:
        if not path and self._top.keeps and changes.posix is not None:
            self._dirs.forget(path)  # its own times now
            self._top.keep(changes.posix)
            return
        await self._mutations.setattr(path, changes, handle)

    async def unlink(self, parent: str, name: str) -> str:
        return await self._mutations.unlink(parent, name)

    async def mkdir(self, parent: str, name: str, posix: Posix) -> tuple[str, Entry]:
        return await self._mutations.mkdir(parent, name, posix)

    async def rmdir(self, parent: str, name: str) -> str:
        return await self._mutations.rmdir(parent, name)

    async def rename(self, old_parent: str, old_name: str, new_parent: str | None, new_name: str,
                     *, noreplace: bool = False, exchange: bool = False) -> tuple[str, str]:
        return await self._mutations.rename(old_parent, old_name, new_parent, new_name,
                                            noreplace=noreplace, exchange=exchange)

    async def symlink(self, parent: str, name: str, target: str,
                      posix: Posix) -> tuple[str, Entry]:
        return await self._mutations.symlink(parent, name, target, posix)

    async def mknod(self, parent: str, name: str, posix: Posix) -> tuple[str, Entry]:
        return await self._mutations.mknod(parent, name, posix)

    async def readlink(self, path: str) -> str:
        return await self._mutations.readlink(path)


class ReadOnlyBucketTree(ReadOnlyNamespace, BucketTree):
    """A bucket mounted read-only: BucketTree's reads, ReadOnlyNamespace's refusals."""
