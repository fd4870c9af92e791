"""Shard archives inside manifest views: indexed on first use, members served by range.

Indexing runs once per archive ETag in a worker thread, reading the archive
through the block cache: plain tar hops from header to header; tar.gz is
decompressed once to build seek points; xz/bz2 are streamed once. Members then
become rows of the manifest index. Reading a member is a ranged GET of just its
bytes (tar), a decompression from the nearest seek point (gzip) or a read of the
decompressed stream, in passes that fill the block cache (xz/bz2: tree/streams.py).
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from ..archive.index import (ArchiveIndex, RangeSource, build_index, gzip_readers_bytes,
                             read_member, stored_spacing)
from ..archive.limits import ArchiveError, Limits
from ..archive.tar import BLOCK, Member, heads_member
from ..data.reader import BlockReader, ReadState
from ..model import ObjectRef
from ..errors import CorruptData, NotFound, StaleObject
from ..manifest.index import Node, compact_json
from ..store.s3 import S3Store
from ..util.flight import SingleFlight
from ..util.oncelog import example
from .contract import FileHandle
from .sharedindex import SharedIndex
from .sources import ObjectSource, SliceSource
from .streams import DirectSource, StreamPasses

if TYPE_CHECKING:
    from .manifest import ManifestTree

log = logging.getLogger(__name__)

INTERNAL_MANIFEST_CAP = 64 << 20
OPEN_GZIP_INDEXES = 16
#: Indexed shards whose row (without its seek points) is kept for the metadata TTL: every
#: member lookup and open asks for it, and reading the row with its seek-point blob (MiBs)
#: on the trio thread cost milliseconds each time.
SHARD_ROWS = 1024
#: Members of published indexes whose tar header was checked (see ShardService._headed).
HEADED_MEMBERS = 4096
#: A restored gzip reader holds a 32 KiB window per seek point (one per 2 MiB of the
#: tar, closer in archives under 256 MiB: archive/index.py gzip_spacing): 16 MiB for a
#: 1 GiB shard, 1 GiB at max_total_bytes. The open readers
#: together (an index may have several: archive/index.py GZIP_READERS) are kept under
#: this (the index in use always stays).
OPEN_GZIP_WINDOW_BYTES = 256 << 20


class ReaderSource:
    """Archive bytes for the (blocking) archive library, through the block cache.

    One source serves one run of reads (an index pass from the start, a member inflated
    from its seek point): its read state starts where the first read does, so the reader
    drops only the blocks this run has passed. A state that began at 0 had the first
    sequential read of a run in mid-archive drop every block before it from memory:
    random member reads of a shard then loaded each 8 MiB block from the disk cache
    again and again."""

    def __init__(self, reader: BlockReader, ref: ObjectRef):
        self.size = ref.size
        self._reader = reader
        self._ref = ref
        self._state: ReadState | None = None

    def read(self, offset: int, size: int) -> bytes:
        if self._state is None:
            self._state = ReadState(next_offset=offset, run_start=offset,
                                    dropped_to=offset // self._reader.block_size)
        return bytes(trio.from_thread.run(self._reader.read, self._ref, offset, size, self._state))


def internal_entries(data: bytes) -> dict[str, tuple[str | None, str | None]]:
    """member_path -> (id, compact meta) from a shard's `__manifest__.jsonl`. A line that
    cannot be parsed (bad JSON, nesting deep enough to exhaust the recursion limit) or
    stored (a lone surrogate: SQLite keeps UTF-8 only) is skipped, never the whole shard."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for line in data.splitlines():
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(obj, dict):
            continue
        path = obj.get("member_path")
        if not isinstance(path, str):
            key = obj.get("key")
            path = key.split("#", 1)[1] if isinstance(key, str) and "#" in key else None
        if path:
            entry_id = obj.get("id")
            try:
                entry = (None if entry_id is None else str(entry_id), compact_json(obj.get("meta")))
                "\0".join(filter(None, (path, *entry))).encode()
            except (UnicodeEncodeError, RecursionError):
                continue
            found[path] = entry
    return found


def report_skipped(uri: str, index: ArchiveIndex, shown: int = 5) -> None:
    """One line for the members of an archive that are not shown: their count and the
    first few (names cut and escaped). One line per member let a hostile archive of
    100k long names flood the log."""
    if not index.skipped_count:
        return
    first = ", ".join(f"{example(name)} ({reason})" for name, reason in index.skipped[:shown])
    more = ", ..." if index.skipped_count > shown else ""
    log.warning("shard %s: %d members not shown (first: %s%s)", uri, index.skipped_count, first, more)


class ShardService:
    def __init__(self, store: S3Store, reader: BlockReader, *, ttl: float,
                 limits: Limits = Limits(), concurrency: int = 2,
                 shared: SharedIndex | None = None):
        self.store = store
        self.shared = shared
        self.reader = reader
        self.ttl = ttl
        self.limits = limits
        self._limiter = trio.CapacityLimiter(concurrency)
        self._reads = trio.CapacityLimiter(4)  # seek points read back: apart from indexing
        self._flight: SingleFlight[None] = SingleFlight()
        self._gzip: OrderedDict[tuple[str, str], ArchiveIndex] = OrderedDict()  # restored seek points
        self._rows: OrderedDict[tuple[Any, int], tuple[dict[str, Any], float]] = OrderedDict()
        self._distrusted: set[ObjectRef] = set()  # archives whose published index proved wrong
        #: members of published indexes checked, by where they were checked: a handle
        #: opened on a wrong index keeps its offsets after the right one is known
        self._headed_members: set[tuple[ObjectRef, int]] = set()

    @functools.cached_property
    def _streams(self) -> StreamPasses:
        """xz/bz2 passes, made on first use (the reader may come later in tests)."""
        return StreamPasses(self.reader.blocks, self.reader.block_size, self.limits)

    # ------------------------------------------------------------ indexing

    def _shard(self, tree: "ManifestTree", node_id: int) -> dict[str, Any] | None:
        """The shard row of `node_id` without `gzip_index`; an indexed one cached for the TTL."""
        key = (tree.index.path, node_id)
        hit = self._rows.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self.ttl:
            self._rows.move_to_end(key)
            return hit[0]
        row = tree.index.shard(node_id)
        if row is None:
            self._rows.pop(key, None)
            return None
        row = {k: v for k, v in row.items() if k != "gzip_index"}
        if row["state"] == "indexed":
            row["shared"] = row["etag"] is not None and tree.index.shared_etag(node_id) == row["etag"]
            self._rows[key] = (row, now)
            self._rows.move_to_end(key)
            while len(self._rows) > SHARD_ROWS:
                self._rows.popitem(last=False)
        else:
            self._rows.pop(key, None)
        return row

    async def ensure_indexed(self, tree: "ManifestTree", shard_id: int) -> None:
        """Index shard `shard_id` (its node's id) unless it is indexed, or failed within
        the TTL. Cheap when it is: the row is kept in memory for the TTL."""
        shard = self._shard(tree, shard_id)
        if shard is None or shard["state"] == "indexed":
            return
        if shard["state"] == "failed" and time.time() - shard["checked_at"] < self.ttl:
            return
        await self._flight.run((tree.index.path, shard_id), self._index, tree, shard_id, shard)

    async def _index(self, tree: "ManifestTree", shard_id: int, shard: dict[str, Any]) -> None:
        bucket, key = tree.spec.bucket, shard["archive_key"]
        uri = f"s3://{bucket}/{key}"
        try:
            info = await trio.to_thread.run_sync(self.store.head, bucket, key, limiter=self._limiter)
        except NotFound:
            log.warning("shard archive %s is missing: its directory is empty", uri)
            tree.index.fail_shard(shard_id, "missing", time.time())  # does not wait
            return
        archive = ObjectRef(bucket, key, info.etag, info.size)
        source = ReaderSource(self.reader, archive)
        began = time.monotonic()
        index = None
        if self.shared is not None and archive not in self._distrusted:
            index = await trio.to_thread.run_sync(self.shared.fetch, tree.spec, archive, self.limits,
                                                  limiter=self._limiter)
        shared = index is not None
        if index is None:
            try:
                index = await trio.to_thread.run_sync(self._build, source, shard, key,
                                                      limiter=self._limiter)
            except (ArchiveError, CorruptData) as exc:
                log.warning("shard archive %s is unusable (%s): its directory is empty", uri, exc)
                tree.index.fail_shard(shard_id, str(exc), time.time())
                return
            if self.shared is not None:
                self.shared.publish_later(tree.spec, archive, index, self.limits)
        report_skipped(uri, index)
        internal = shard["internal"]
        described = await self._internal_manifest(source, index, internal, uri)
        rows = [(m.path, m.offset, m.size, *described.get(m.path, (None, None)))
                for m in index.members if m.path != internal]
        count = await trio.to_thread.run_sync(
            tree.index.store_members, shard_id, rows, info.etag, index.format, info.size,
            index.uncompressed_size, index.gzip_index, time.time(), shared, limiter=self._limiter)
        self._drop_index(tree, shard_id, key)
        log.info("indexed shard %s (%s): %d members in %.1fs", uri, index.format, count,
                 time.monotonic() - began)

    def _build(self, source: ReaderSource, shard: dict[str, Any], key: str) -> ArchiveIndex:
        return build_index(source, shard["compression"], key, self.limits)

    async def _internal_manifest(self, source: ReaderSource, index: ArchiveIndex, internal: str,
                                 uri: str) -> dict[str, tuple[str | None, str | None]]:
        member = next((m for m in index.members if m.path == internal), None)
        if member is None:
            return {}
        if member.size > INTERNAL_MANIFEST_CAP:
            log.warning("shard %s: internal manifest over %d bytes ignored", uri, INTERNAL_MANIFEST_CAP)
            return {}
        try:
            data = await trio.to_thread.run_sync(read_member, source, index, member, 0, member.size,
                                                 limiter=self._limiter)
        except ArchiveError as exc:
            log.warning("shard %s: internal manifest unreadable (%s)", uri, exc)
            return {}
        return internal_entries(data)

    # ------------------------------------------------------------ reading

    def _indexed(self, tree: "ManifestTree", node: Node) -> dict[str, Any]:
        """The row of the indexed shard that holds member `node`."""
        shard = self._shard(tree, node.shard or 0)
        if shard is None or shard["state"] != "indexed":
            raise NotFound(tree.describe(node.id))
        return shard

    def member_ref(self, tree: "ManifestTree", node: Node) -> ObjectRef:
        """The virtual object a member's bytes are cached as ("archive#member")."""
        shard = self._indexed(tree, node)
        path = tree.index.path_of(node.id, top=node.shard or 0)
        return ObjectRef(tree.spec.bucket, f"{shard['archive_key']}#{path}", shard["etag"],
                         node.size or 0)

    async def open_member(self, tree: "ManifestTree", node: Node) -> FileHandle:
        shard = self._indexed(tree, node)
        bucket, key, etag = tree.spec.bucket, shard["archive_key"], shard["etag"]
        virtual = self.member_ref(tree, node)
        member = Member(virtual.key[len(key) + 1:], node.offset or 0, node.size or 0, 0)
        archive = ObjectRef(bucket, key, etag, shard["asize"])
        fmt = shard["actual"]
        if fmt == "tar":
            def span(start: int, stop: int) -> bytes:
                return self.store.get(bucket, key, etag, start, stop)
        elif fmt == "gzip":
            index = await self._gzip_index(tree, node.shard or 0, shard)
            whole = Member("", 0, shard["usize"] or 0, 0)

            def span(start: int, stop: int) -> bytes:
                return self._checked(read_member, ReaderSource(self.reader, archive), index, whole,
                                     start, stop - start)
        else:
            stream = ObjectRef(bucket, f"{key}#", etag, shard["usize"] or 0)

            def span(start: int, stop: int) -> bytes:
                return self._streams.read(archive, self._stream_source(archive, stream), stream,
                                          fmt, start, stop)

        def loader(start: int, stop: int) -> bytes:
            try:
                return indexed_loader(start, stop)
            except StaleObject:
                self._changed(tree, node.shard or 0, archive)
                raise

        def indexed_loader(start: int, stop: int) -> bytes:
            if not shard["shared"]:
                return span(member.offset + start, member.offset + stop)
            try:  # members from elsewhere: no block of one is used before its tar header
                # (read-ahead too, any offset)
                if (virtual, member.offset) in self._headed_members:
                    return span(member.offset + start, member.offset + stop)
                if start == 0:  # the header with the bytes asked for: one read (a GET)
                    data = span(member.offset - BLOCK, member.offset + stop)
                    if self._headed(virtual, member, data[:BLOCK]):
                        return data[BLOCK:]
                elif self._headed(virtual, member, span(member.offset - BLOCK, member.offset)):
                    return span(member.offset + start, member.offset + stop)
            except CorruptData:
                pass
            self._distrust(tree, node.shard or 0, archive, virtual)
        if fmt == "tar" and not shard["shared"] and await self._from_archive(archive, virtual,
                                                                            member):
            return SliceSource(self.reader, virtual, loader, archive, member.offset)
        return ObjectSource(self.reader, virtual, loader)

    async def _from_archive(self, archive: ObjectRef, virtual: ObjectRef, member: Member) -> bool:
        """Read a plain tar's member from the archive's cached blocks? Yes when they are
        in memory (indexing just fetched them), or on disk unless the member's own copy
        is (exactly its bytes, where the archive's may be a whole block to read)."""
        if self.reader.in_memory(archive, member.offset, member.size):
            return True

        def check() -> bool:
            return (not self.reader.on_disk(virtual, 0, member.size)
                    and self.reader.on_disk(archive, member.offset, member.size))
        return await trio.to_thread.run_sync(check, limiter=self._limiter)

    async def member_cached(self, tree: "ManifestTree", node: Node) -> bool:
        """Is member `node` readable offline: its own copy, or a plain tar's archive
        blocks under it, in the disk cache?"""
        virtual = self.member_ref(tree, node)
        if await self.reader.is_cached(virtual):
            return True
        shard = self._indexed(tree, node)
        if shard["actual"] != "tar" or shard["shared"]:
            return False
        archive = ObjectRef(tree.spec.bucket, shard["archive_key"], shard["etag"], shard["asize"])
        return await trio.to_thread.run_sync(self.reader.on_disk, archive, node.offset or 0,
                                             node.size or 0, limiter=self._limiter)

    def _headed(self, virtual: ObjectRef, member: Member, header: bytes) -> bool:
        """Is `member` (of an index published elsewhere) where `header`, the tar block
        before it, says? Checked once per member version and offset, before any of its
        blocks is used: a block read ahead or first read past the start counts too."""
        if not heads_member(header, member.path, member.size):
            return False
        if len(self._headed_members) >= HEADED_MEMBERS:
            self._headed_members.clear()
        self._headed_members.add((virtual, member.offset))
        return True

    def _distrust(self, tree: "ManifestTree", shard_id: int, archive: ObjectRef,
                  member: ObjectRef) -> NoReturn:
        """A member of a published index is not where its tar header is (or its seek points
        do not inflate): index the archive here (at the next lookup) and publish that
        instead. Raises CorruptData (EIO)."""
        if archive not in self._distrusted:  # once: a read and its read-ahead both find it,
            # and handles opened on the wrong index keep its offsets: each of their reads
            # threw away the index built here since, and the archive was indexed again
            log.warning("s3://%s/%s: the shared index is wrong about it (no matching tar "
                        "header there): indexing the archive locally", member.bucket, member.key)
            tree.index.forget_shard(shard_id).result()  # a worker thread's: it may wait
            trio.from_thread.run_sync(self._forget, tree, shard_id, archive)
        raise CorruptData(f"s3://{member.bucket}/{member.key}: shared index is wrong")

    def _changed(self, tree: "ManifestTree", shard_id: int, archive: ObjectRef) -> None:
        """A member read found the archive changed in S3 (its ETag is not the indexed one):
        the read fails (ESTALE, as for any object changed under an open handle) and the
        shard is indexed again at its next lookup. Before, its index stayed, keyed by the
        old ETag, and every read of it failed, after the TTL and remounts too. (A worker
        thread's, as the loaders are.)"""
        log.warning("shard archive s3://%s/%s changed in S3: indexing it again at its next "
                    "lookup", archive.bucket, archive.key)
        tree.index.forget_shard(shard_id).result()
        trio.from_thread.run_sync(self._drop_index, tree, shard_id, archive.key)

    def _drop_index(self, tree: "ManifestTree", shard_id: int, key: str) -> None:
        """Forget what is held in memory of a shard's index (its row, its seek points)."""
        self._rows.pop((tree.index.path, shard_id), None)
        self._gzip.pop((tree.index.path.name, key), None)

    def _forget(self, tree: "ManifestTree", shard_id: int, archive: ObjectRef) -> None:
        self._distrusted.add(archive)
        self._drop_index(tree, shard_id, archive.key)

    def _stream_source(self, archive: ObjectRef, stream: ObjectRef) -> RangeSource:
        """Where a pass over `stream` reads its archive: through the block cache, unless
        the stream is over half of it (see tree/streams.py)."""
        if self._streams.fits(stream):
            return ReaderSource(self.reader, archive)
        return DirectSource(lambda start, stop: self.store.get(archive.bucket, archive.key,
                                                               archive.etag, start, stop),
                            archive.size)

    async def _gzip_index(self, tree: "ManifestTree", node_id: int,
                          shard: dict[str, Any]) -> ArchiveIndex:
        cache_key = (tree.index.path.name, shard["archive_key"])
        index = self._gzip.get(cache_key)
        if index is None:  # with its seek points (MiBs), this once, in a thread
            full = await trio.to_thread.run_sync(tree.index.shard, node_id, limiter=self._reads)
            if full is None or full["etag"] != shard["etag"]:
                self._rows.pop((tree.index.path, node_id), None)
                raise StaleObject(f"{tree.describe(node_id)}: shard changed")
            index = self._gzip[cache_key] = ArchiveIndex(
                format="gzip", members=[], skipped=[], gzip_index=full["gzip_index"],
                uncompressed_size=full["usize"],
                spacing=stored_spacing(full["gzip_index"], shard["asize"]))
        self._gzip.move_to_end(cache_key)
        while len(self._gzip) > 1 and (
                len(self._gzip) > OPEN_GZIP_INDEXES
                or sum(map(gzip_readers_bytes, self._gzip.values())) > OPEN_GZIP_WINDOW_BYTES):
            self._gzip.popitem(last=False)
        return index

    @staticmethod
    def _checked(fn: Any, *args: Any) -> bytes:
        try:
            return fn(*args)
        except ArchiveError as exc:
            raise CorruptData(str(exc)) from None
