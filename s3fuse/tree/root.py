"""The top level: configured sources under their names, or every listable bucket.

Namespaces get a small index, stable for the life of the mount, which the inode
table uses to address (namespace, path) pairs. The mount's top directory is a
namespace too (MountRoot): its refs are those indexes, it takes no changes, and
its own attributes are the control plane, which needs to know who asks (the caller's
uid, from the FUSE request): `control_get`/`control_set` carry it.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

import trio

from ..cache.meta import MetaStore
from ..config import SourceSpec
from ..errors import IsADirectory, NoAttribute, NotPermitted, Offline, S3FuseError
from ..model import Entry, Ref
from ..posix import Posix
from ..store.protocol import Store
from ..util.flight import SingleFlight
from .contract import FileHandle, Namespace, ReadOnlyNamespace, no_pins, static_base
from .sources import SnapshotDir

log = logging.getLogger(__name__)

ROOT_NS = "root"
#: Write bits the mount root never shows: the root takes no entries (EPERM) and only its
#: owner may set control attributes, so write permission for group and others would only
#: invite them to try. The owner's bit stays, also on a read-only mount: the kernel checks
#: it before the owner's `s3fuse pin` (a read-only mount is the usual one to pin).
ROOT_HIDDEN_BITS = 0o022


class RootTree:
    """Composes namespaces under the top-level names."""

    def __init__(self, namespaces: list[Namespace], *, store: Store, meta: MetaStore, ttl: float,
                 bucket_factory: Callable[[SourceSpec], Namespace] | None = None):
        self._namespaces: list[Namespace] = []
        self._index: dict[str, int] = {}
        self._pin_covers: Callable[[str], bool] = no_pins
        for ns in namespaces:
            self._add(ns)
        self._store = store
        self._meta = meta
        self._ttl = ttl
        self._bucket_factory = bucket_factory  # set: auto mode, every listable bucket
        self._flight: SingleFlight[None] = SingleFlight()

    def use_pins(self, covers: Callable[[str], bool]) -> None:
        """Every namespace (and every bucket found later) answers `pinned` with `covers`."""
        self._pin_covers = covers
        for ns in self._namespaces:
            ns.pin_covers = covers

    @property
    def auto(self) -> bool:
        return self._bucket_factory is not None

    def get(self, index: int) -> Namespace:
        return self._namespaces[index]

    async def entries(self) -> list[Entry]:
        if self.auto:
            return await self._refresh_buckets()
        now = time.time()
        return [Entry(ns.name, True, 0, 0, "", now) for ns in sorted(self._namespaces, key=lambda n: n.name)]

    def index_of(self, name: str) -> int | None:
        return self._index.get(name)

    async def find(self, name: str) -> int | None:
        """The index of the namespace called `name`, or None."""
        if self.auto:
            await self._ensure_buckets()
            entry = self._meta.entry(ROOT_NS, "", name)  # a point query: lookups stay cheap
            if entry is None:
                return None
            self._register([entry])
        return self._index.get(name)

    async def _refresh_buckets(self) -> list[Entry]:
        """The current bucket list (TTL-cached, persisted); registers new buckets."""
        await self._ensure_buckets()
        # thousands of buckets are a bulk read: off the loop
        entries = await trio.to_thread.run_sync(self._meta.entries, ROOT_NS, "")
        self._register(entries)
        return entries

    async def _ensure_buckets(self) -> None:
        """List the buckets again when the stored list is older than the TTL (offline:
        the stored list, if any)."""
        listed_at = self._meta.listed_at(ROOT_NS, "")
        if listed_at is None or time.time() - listed_at >= self._ttl:
            try:
                await self._flight.run("", self._list_buckets)
            except Offline:
                if listed_at is None:
                    raise

    def _register(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.name not in self._index:
                self._add(self._bucket_factory(SourceSpec(entry.name, entry.name, "")))  # type: ignore[misc]

    async def _list_buckets(self) -> None:
        def fetch() -> None:
            now = time.time()
            names = self._store.list_buckets()
            self._meta.replace_listing(ROOT_NS, "", [Entry(n, True, 0, 0, "", now) for n in names], now)
        await trio.to_thread.run_sync(fetch)

    def _add(self, ns: Namespace) -> None:
        index = len(self._namespaces)
        if ns.indexed:  # it numbers its own inodes from this base
            ns.inode_base = static_base(index)
        ns.pin_covers = self._pin_covers
        self._index[ns.name] = index
        self._namespaces.append(ns)


class ControlPlane(Protocol):
    """What the root's attributes expose (status, pid, pins, ...); implemented in control.py."""

    def names(self) -> list[str]: ...

    def readable(self, name: str) -> bool: ...

    async def get(self, name: str, caller: int | None) -> bytes: ...

    async def set(self, name: str, value: bytes, caller: int | None) -> None: ...


class MountRoot(ReadOnlyNamespace):
    """The mount's top directory: one entry per source, whose refs are the sources' indexes
    (the FUSE adapter shows each as that namespace's top). Changes are refused with EPERM
    (write inside a source); its attributes are the control plane's."""

    name = ""
    root: Ref = ""
    #: Shows the owner's write bit (less ROOT_HIDDEN_BITS): the owner must be able to set
    #: the control attributes (pin, unpin), also on a read-only mount.
    writable = True

    def __init__(self, tree: RootTree, control: ControlPlane | None = None):
        self.tree = tree
        self.control = control

    def refusal(self, what: str) -> S3FuseError:
        return NotPermitted("the mount root shows the sources: write inside one of them")

    async def lookup(self, ref: Ref, name: str) -> tuple[Ref, Entry] | None:
        index = await self.tree.find(name)
        return None if index is None else (index, await self.tree.get(index).top())

    async def opendir(self, ref: Ref) -> SnapshotDir:
        entries = await self.tree.entries()  # registers buckets found since
        return SnapshotDir([(index, await self.tree.get(index).top()) for e in entries
                            if (index := self.tree.index_of(e.name)) is not None])

    async def stat(self, ref: Ref) -> Entry:
        return Entry("", True)

    async def open(self, ref: Ref) -> FileHandle:
        raise IsADirectory("/")

    def parent(self, ref: Ref) -> Ref:
        return ""

    def describe(self, ref: Ref) -> str:
        return ""

    async def cached(self, ref: Ref) -> bool:
        return False

    def pinned(self, ref: Ref) -> bool:
        return False

    async def xattrs(self, ref: Ref) -> dict[str, bytes]:
        return {}

    async def getxattr(self, ref: Ref, name: str) -> bytes:
        return await self.control_get(name, None)  # nobody known asks: a reader's view

    async def listxattr(self, ref: Ref) -> list[str]:
        """None: the control attributes are read and set by name (`s3fuse status`, `pin`).
        Listed, every tool that copies attributes took them for the directory's own:
        `cp -a` of the mount copied the status JSON onto its copy, and `rsync -aX` by
        another user failed (exit 23) on those only the owner may read."""
        return []

    async def setxattr(self, ref: Ref, name: str, value: bytes, posix: Posix) -> None:
        await self.control_set(name, value, None)  # nobody known asks: refused

    async def control_get(self, name: str, caller: int | None) -> bytes:
        """Control attribute `name` as the user `caller` (a uid) may see it."""
        if self.control is None or not self.control.readable(name):
            raise NoAttribute(name)
        return await self.control.get(name, caller)

    async def control_set(self, name: str, value: bytes, caller: int | None) -> None:
        """Set control attribute `name` on behalf of the user `caller` (a uid)."""
        if self.control is None or name not in self.control.names():
            raise self.refusal(name)
        await self.control.set(name, value, caller)
