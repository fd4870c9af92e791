"""An s3exchange manifest as a read-only directory tree, backed by its SQLite index.

Entries appear at their key relative to the manifest's parent prefix (else at the
full key); a shard is a directory named as its archive whose members are indexed
on first use. Node refs are index rowids, so inodes are computed, stable across
remounts and cost no memory. The root manifest is revalidated by ETag after the
metadata TTL and re-ingested when it changed (append_parts). A build that failed, or
that the daemon died during, is retried for the same root ETag only after a backoff
(manifest/attempts.py): a hostile manifest never makes a rebuild or restart loop.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Callable

import trio

from ..config import ManifestSpec
from ..data.reader import BlockReader
from ..model import Entry, ObjectRef, new_entry
from ..errors import IsADirectory, NotADirectory, NotFound, Offline
from ..manifest.attempts import BuildGuard
from ..manifest.index import FILE, MEMBER, ROOT_ID, SHARD, ManifestIndex, Node
from ..manifest.ingest import IngestLimits, Ingestion
from ..store.s3 import S3Store
from ..util.flight import SingleFlight
from ..util.oncelog import OnceLogger
from .contract import FileHandle, ReadOnlyNamespace
from .shards import ShardService
from .sources import ObjectSource

log = logging.getLogger(__name__)


class IndexDir:
    """readdir over the index: offsets are rowids, so they are stable and pages are cheap."""

    def __init__(self, tree: "ManifestTree", node_id: int):
        self.tree = tree
        self.node_id = node_id

    async def page(self, start: int, limit: int,
                   attrs: bool = True) -> list[tuple[int, int, Entry]]:
        nodes = self.tree.index.children(self.node_id, start, limit)
        if attrs:  # else sent as names: a line without size or ETag is HEADed at its lookup
            nodes = await self.tree.resolved(nodes)
        return [(n.id, n.id, self.tree.entry(n)) for n in nodes]


class ManifestTree(ReadOnlyNamespace):
    """Namespace over one manifest (and everything it references); takes no changes."""

    indexed = True
    root = ROOT_ID

    def __init__(self, spec: ManifestSpec, store: S3Store, reader: BlockReader, index_dir: Path,
                 *, ttl: float, limiter: trio.CapacityLimiter, shards: ShardService,
                 limits: IngestLimits = IngestLimits()):
        self.name = spec.name
        self.spec = spec
        self.store = store
        self.reader = reader
        self.ttl = ttl
        self.inode_base: int | None = None  # assigned by RootTree
        self.base = spec.key.rsplit("/", 1)[0] + "/" if "/" in spec.key else ""
        digest = hashlib.sha256(f"{spec.bucket}\0{spec.key}".encode()).hexdigest()[:32]
        self.index = ManifestIndex(index_dir / f"{digest}.sqlite")
        self.builds = BuildGuard(self.index, spec.uri)
        self._limiter = limiter
        self._limits = limits
        self._shards = shards
        self._flight: SingleFlight[None] = SingleFlight()
        self._checked = 0.0
        self._mtime_ns = int(self.index.info("root_mtime_ns") or 0)
        self._missing = OnceLogger(log)  # entries whose object S3 does not have

    def close(self) -> None:
        self.index.close()

    # ------------------------------------------------------------ freshness

    async def _ready(self) -> None:
        if time.monotonic() - self._checked < self.ttl:
            return
        try:
            await self._flight.run("root", self._revalidate)
        except (Offline, NotFound) as exc:
            if self.index.info("root_etag") is None:
                if isinstance(exc, NotFound):
                    log.error("manifest %s not found: %s shows as an empty directory",
                              self.spec.uri, self.name)
                    self._checked = time.monotonic()
                    return
                raise
            if isinstance(exc, NotFound):  # asked again after the TTL, not at every request
                self._checked = time.monotonic()
                self._missing.warning(self.spec.key, "manifest %s is gone from S3: %s shows "
                                      "its last index", self.spec.uri, self.name)
                return
            log.debug("serving the cached index of %s: %s", self.spec.uri, exc)

    async def _revalidate(self) -> None:
        info = await trio.to_thread.run_sync(self.store.head, self.spec.bucket, self.spec.key,
                                             limiter=self._limiter)
        if info.etag != self.index.info("root_etag"):
            began = time.monotonic()
            ingestion = Ingestion(self.store, self.spec.bucket, self.base, self._limits)

            def build() -> int:
                return ingestion.run(self.index, self.spec.key, info.etag, info.mtime_ns)
            count = await trio.to_thread.run_sync(self.builds.run, info.etag, build,
                                                  limiter=self._limiter)
            if count is not None:
                self._mtime_ns = info.mtime_ns
                log.info("indexed manifest %s: %d entries in %.1fs", self.spec.uri, count,
                         time.monotonic() - began)
        self._checked = time.monotonic()

    # ------------------------------------------------------------ nodes

    def entry(self, node: Node) -> Entry:
        is_dir = node.is_dir
        return new_entry(node.name, is_dir, 0 if is_dir else (node.size or 0), self._mtime_ns,
                         node.etag or "", 0.0, None)

    def _node(self, ref: int) -> Node:
        node = self.index.node(ref)
        if node is None:
            raise NotFound(f"manifest node {ref}")
        return node

    async def _dir(self, ref: int) -> Node:
        await self._ready()
        node = self._node(ref)
        if not node.is_dir:
            raise NotADirectory(self.describe(ref))
        if node.kind == SHARD:
            await self._shards.ensure_indexed(self, node.id)
        elif node.shard is not None:  # a directory in a shard, which may be due again: the
            await self._shards.ensure_indexed(self, node.shard)  # kernel keeps it without
        return node  # asking for the shard's directory (paths keep their ids: index.py)

    async def lookup(self, ref: int, name: str) -> tuple[int, Entry] | None:
        await self._dir(ref)
        child = self.index.child(ref, name)
        if child is None:
            return None
        child = (await self.resolved([child]))[0]
        return child.id, self.entry(child)

    async def opendir(self, ref: int) -> IndexDir:
        await self._dir(ref)
        return IndexDir(self, ref)

    async def stat(self, ref: int) -> Entry:
        if ref == ROOT_ID:
            await self._ready()
        node = (await self.resolved([self._node(ref)]))[0]
        return self.entry(node)

    async def resolved(self, nodes: list[Node], *, opening: bool = False) -> list[Node]:
        """`nodes` with the size and ETag of files whose manifest line had none (HEAD, once,
        in parallel): the kernel must never cache a made-up size. An object S3 does not
        have fails only the open of it (`opening`: ENOENT); listed or stat'ed, its entry
        shows what the manifest says, as an entry with an ETag does (no HEAD), instead of
        failing the whole readdir (`ls` showed an empty directory for one missing object)."""
        missing = [i for i, n in enumerate(nodes) if n.kind == FILE and (n.size is None or not n.etag)]
        if not missing:
            return nodes
        out = list(nodes)
        if len(missing) == 1:  # a lookup, a stat, an open: its error as it is, not a group
            out[missing[0]] = await self._head(nodes[missing[0]], opening)
            return out

        async def fill(i: int) -> None:
            out[i] = await self._head(nodes[i], opening)
        async with trio.open_nursery() as nursery:
            for i in missing:
                nursery.start_soon(fill, i)
        return out

    def object_key(self, node: Node) -> str:
        """The S3 key of a file (or shard) node, stored or derived from its path."""
        key = self.index.key_of(node, self.base)
        assert key is not None, node
        return key

    async def _head(self, node: Node, opening: bool) -> Node:
        """Size and ETag from S3 for entries whose manifest line had none (done once)."""
        key = self.object_key(node)
        try:
            info = await trio.to_thread.run_sync(self.store.head, self.spec.bucket, key,
                                                 limiter=self._limiter)
        except Offline:
            return node
        except NotFound:
            if opening:
                raise
            self._missing.warning(key, "%s: s3://%s/%s is not in S3: listed as the manifest "
                                  "says, reading it fails (ENOENT)", self.spec.uri,
                                  self.spec.bucket, key)
            return node
        self.index.remember_file(node.id, node.key, info.size, info.etag)  # does not wait
        return node._replace(size=info.size, etag=info.etag)

    async def open(self, ref: int) -> FileHandle:
        node = self._node(ref)
        if node.is_dir:
            raise IsADirectory(self.describe(ref))
        if node.kind == MEMBER:  # its shard indexed again first, when it is due
            await self._shards.ensure_indexed(self, node.shard or 0)
            return await self._shards.open_member(self, self._node(ref))
        obj = await self._object(node)

        def missing() -> None:
            self._missing.warning(obj.key, "%s: s3://%s/%s is not in S3 any more: reading it "
                                  "fails (ENOENT)", self.spec.uri, obj.bucket, obj.key)
        return _EntrySource(self.reader, obj, missing)

    async def _object(self, node: Node) -> ObjectRef:
        """The S3 object of a file entry (size and ETag looked up once when missing)."""
        node = (await self.resolved([node], opening=True))[0]
        return ObjectRef(self.spec.bucket, self.object_key(node), node.etag or "", node.size or 0)

    async def cached(self, ref: int) -> bool:
        node = self._node(ref)
        if node.is_dir:
            return False
        if node.kind == MEMBER:
            return await self._shards.member_cached(self, node)
        try:
            return await self.reader.is_cached(await self._object(node))
        except NotFound:  # S3 does not have it: nothing of it is cached
            return False

    async def xattrs(self, ref: int) -> dict[str, bytes]:
        node = self._node(ref)
        values: dict[str, bytes] = {}
        if node.kind == MEMBER:
            shard = self._node(node.shard or 0)
            member = self.index.path_of(ref, top=shard.id)
            values["user.s3.uri"] = f"s3://{self.spec.bucket}/{shard.key}#{member}".encode()
        elif node.kind == FILE or node.key is not None:
            values["user.s3.uri"] = f"s3://{self.spec.bucket}/{self.object_key(node)}".encode()
        if node.etag:
            values["user.s3.etag"] = node.etag.encode()
        if node.entry_id is not None:
            values["user.s3exchange.id"] = node.entry_id.encode()
        if node.meta is not None:
            values["user.s3exchange.meta"] = node.meta.encode()
        return values

    def parent(self, ref: int) -> int:
        return self._node(ref).parent

    def describe(self, ref: int) -> str:
        return self.index.path_of(ref)


class _EntrySource(ObjectSource):
    """A manifest entry's object: one S3 no longer has is named in the log (once per key)
    at the read that finds it gone, as an entry the manifest gave no ETag is at its HEAD."""

    def __init__(self, reader: BlockReader, ref: ObjectRef, missing: Callable[[], None]):
        super().__init__(reader, ref)
        self._on_missing = missing

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        try:
            return await super().read(offset, size)
        except NotFound:
            self._on_missing()
            raise
