"""Ingest a manifest tree (root, parts, nested refs) into its SQLite index.

Runs in a worker thread. The manifest is streamed in chunks and parsed line by
line, so a million-entry manifest never exists in memory at once. Refs resolve
depth-first, in order, with a visited set against cycles; a missing ref, a cycle,
a bad line or an unusable path is logged and skipped while the rest is served.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import NotFound
from ..store.protocol import Store
from ..names import path_parts
from .index import IndexWriter, ManifestIndex, compact_json, hidden, relative_path
from .parse import FileItem, RefItem, ShardItem, parse_lines, split_lines

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestLimits:
    max_manifest_bytes: int = 2 << 30
    max_line_bytes: int = 16 << 20
    max_ref_depth: int = 64
    chunk_bytes: int = 8 << 20


class Ingestion:
    def __init__(self, store: Store, bucket: str, base: str, limits: IngestLimits):
        self.store = store
        self.bucket = bucket
        self.base = base
        self.limits = limits
        self._visited: set[str] = set()

    def run(self, index: ManifestIndex, root_key: str, root_etag: str, root_mtime_ns: int) -> int:
        """Rebuild `index` from the manifest at `root_key`; returns the number of entries."""
        writer = index.writer()
        try:
            self._visit(writer, root_key, 0)
            writer.commit(root_etag=root_etag, root_mtime_ns=str(root_mtime_ns))
        except BaseException:
            writer.abort()
            raise
        for path in writer.conflicts[:100]:
            log.info("manifest s3://%s/%s: %r is both a file and a directory: the directory wins",
                     self.bucket, root_key, path)
        return writer.entries

    def _visit(self, writer: IndexWriter, key: str, depth: int) -> None:
        uri = f"s3://{self.bucket}/{key}"
        if key in self._visited:
            log.warning("manifest ref cycle: %s already read, skipped", uri)
            return
        if depth > self.limits.max_ref_depth:
            log.warning("manifest refs nested deeper than %d at %s: skipped", self.limits.max_ref_depth, uri)
            return
        self._visited.add(key)
        try:
            info = self.store.head(self.bucket, key)
        except NotFound:
            if depth == 0:
                raise
            log.warning("manifest ref %s is missing: skipped", uri)
            return
        if info.size > self.limits.max_manifest_bytes:
            log.error("manifest %s is %d bytes, over the %d byte cap: refused", uri, info.size,
                      self.limits.max_manifest_bytes)
            return
        chunks = self.store.iter_chunks(self.bucket, key, info.etag, info.size, self.limits.chunk_bytes)
        for item in parse_lines(split_lines(chunks, self.limits.max_line_bytes, uri), uri):
            if isinstance(item, RefItem):
                self._visit(writer, item.key, depth + 1)
            elif isinstance(item, FileItem):
                self._add_file(writer, item, uri)
            elif isinstance(item, ShardItem):
                self._add_shard(writer, item, uri)

    def _parts(self, key: str, uri: str) -> list[str] | None:
        path = relative_path(key, self.base)
        if hidden(path):
            return None
        parts = path_parts(path)
        if parts is None:
            log.warning("%s: entry %r is not a valid POSIX path: skipped", uri, key)
        return parts

    def _add_file(self, writer: IndexWriter, item: FileItem, uri: str) -> None:
        parts = self._parts(item.key, uri)
        if parts:
            writer.add_file(parts, item.key, item.size, item.etag, item.id, compact_json(item.meta))

    def _add_shard(self, writer: IndexWriter, item: ShardItem, uri: str) -> None:
        parts = self._parts(item.archive_key, uri)
        if parts:
            writer.add_shard(parts, item.archive_key, item.format, item.compression,
                             item.internal_manifest_path, item.count, item.size, compact_json(item.meta))
