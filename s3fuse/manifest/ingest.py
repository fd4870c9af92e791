"""Ingest a manifest tree (root, parts, nested refs) into its SQLite index.

Runs in a worker thread. The manifest is streamed in chunks and parsed line by
line, so a million-entry manifest never exists in memory at once. Refs resolve
depth-first, in order, with a visited set against cycles; a missing ref, a cycle,
a bad line or an unusable path is skipped while the rest is served.

A manifest is hostile input: no entry may cost more than its own size, nor stop the
build. A path over 4096 bytes is refused before it is split, an entry the index cannot
store (a size over 2**63, text that is not UTF-8) is skipped, and the skipped lines of
one manifest are reported as one summary line, not one line each.
"""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from ..errors import NotFound
from ..store.protocol import Store
from ..names import MAX_PATH_BYTES, path_parts
from ..util.oncelog import Tally, example
from ..util.stoppoint import stop_points
from .index import IndexWriter, ManifestIndex, compact_json, hidden, relative_path
from .parse import FileItem, Item, RefItem, parse_numbered, split_lines

log = logging.getLogger(__name__)


#: What a hostile entry may make the index refuse: a number over SQLite's 64 bits
#: (OverflowError), a lone surrogate from a JSON escape (UnicodeEncodeError), a value
#: SQLite will not take. The entry is skipped; errors of the disk or the store are not.
_ENTRY_ERRORS = (OverflowError, UnicodeEncodeError, ValueError, RecursionError,
                 sqlite3.DataError, sqlite3.InterfaceError)


def _storable(*values: str | int | None) -> None:
    """Raise what SQLite would raise half way through an entry, before anything is
    written: a lone surrogate (from a JSON escape) or an integer over 64 bits."""
    for value in values:
        if isinstance(value, str):
            value.encode("utf-8")
        elif isinstance(value, int) and value >= 1 << 63:
            raise OverflowError("integer over 64 bits")


def _too_long(text: str) -> bool:
    """Over MAX_PATH_BYTES in UTF-8? Checked before anything splits or matches it."""
    return len(text) > MAX_PATH_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES


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
        if writer.conflict_count:
            log.info("manifest s3://%s/%s: %d paths are both a file and a directory, the directory "
                     "wins (first: %s)", self.bucket, root_key, writer.conflict_count,
                     ", ".join(example(p) for p in writer.conflicts))
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
        chunks = stop_points(  # an unmount stops the ingestion between two chunks
            self.store.iter_chunks(self.bucket, key, info.etag, info.size, self.limits.chunk_bytes))
        skips = Tally()
        try:
            lines = split_lines(chunks, self.limits.max_line_bytes, uri, skips)
            for number, item in parse_numbered(lines, uri, skips):
                try:
                    reason = self._add(writer, item, depth)
                except _ENTRY_ERRORS as exc:
                    reason = f"an entry the index cannot store ({type(exc).__name__})"
                if reason:
                    skips.add(f"line {number}: {reason}")
        finally:
            skips.emit(log, logging.WARNING, f"manifest {uri}", "line")

    def _add(self, writer: IndexWriter, item: Item, depth: int) -> str | None:
        """Index one item (a ref: visit it); why it was skipped, if it was."""
        if isinstance(item, RefItem):
            if _too_long(item.key):
                return f"manifest_ref key over {MAX_PATH_BYTES} bytes"
            self._visit(writer, item.key, depth + 1)
            return None
        key = item.key if isinstance(item, FileItem) else item.archive_key
        if _too_long(key):
            return f"key over {MAX_PATH_BYTES} bytes"
        path = relative_path(key, self.base)
        if hidden(path):
            return None
        parts = path_parts(path)
        if parts is None:
            return f"{example(key)} is not a valid POSIX path"
        meta = compact_json(item.meta)
        if isinstance(item, FileItem):
            _storable(item.key, item.size, item.etag, item.id, meta)
            derived = item.key == self.base + path  # its path tells it: not stored
            writer.add_file(parts, None if derived else item.key, item.size, item.etag, item.id,
                            meta)
        else:
            _storable(item.archive_key, item.format, item.compression, item.internal_manifest_path,
                      item.count, item.size, meta)
            writer.add_shard(parts, item.archive_key, item.format, item.compression,
                             item.internal_manifest_path, item.count, item.size, meta)
        return None
