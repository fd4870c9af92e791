"""Index shard archives and read single members, fetching only the bytes needed.

Blocking on purpose: the daemon calls this from worker threads, and every byte
comes through its RangeSource (so through its block cache), never from boto3.
"""
from __future__ import annotations

import io
import logging
import struct
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import indexed_gzip

from s3fuse.archive.compression import decompress, resolve_format
from s3fuse.archive.limits import ArchiveError, Limits
from s3fuse.archive.tar import BLOCK, Member, TarScanner

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_SPACING = 2 * MiB  # uncompressed bytes between gzip seek points (~1 MiB inflated per random read)
# An archive under 256 MiB has its seek points closer (see gzip_spacing): a random member
# read inflates from the point before it, half the spacing on average, 30x a 34 KiB
# member at DEFAULT_SPACING. Measured on 16 processes reading random members of 2.2 MiB
# .tar.gz shards: the daemon's CPU -37% at 256 KiB. 100 random members of a 68 MiB
# shard (the bench's): 0.63 s instead of 0.93 s at 1 MiB (SMALL_POINTS 128 instead of 16;
# 512 KiB: 0.60 s for twice the windows), each restored reader holding ~2 MiB of them.
MIN_SPACING = 256 << 10
SMALL_POINTS = 128  # points aimed at per archive (of incompressible data) below 256 MiB
#: SMALL_POINTS before 2026-12-04: indexes built or published with its spacing are kept.
LEGACY_SMALL_POINTS = 16
GZIP_WINDOW = 32 << 10  # the inflate window each gzip seek point keeps (zlib's)
#: zran's index export starts with: "GZIDX", version, flags, compressed size,
#: uncompressed size, spacing, window size, point count.
ZRAN_HEAD = struct.Struct("<5sBBQQIII")
HOP_WINDOW = 1 * MiB  # plain tar: bytes read at each header we jump to
READ_SIZE = 1 * MiB  # compressed bytes per sequential source read
GZIP_READBUF = 256 << 10  # compressed bytes zran asks for at a time
# zran's own read-ahead after a seek. Small: the daemon caches member bytes in
# blocks itself, so anything past the requested range is usually wasted inflation.
GZIP_READ_AHEAD = 64 << 10
# Restored readers of one gzip index: a read takes one to itself (zran's state is one
# stream position), so concurrent member reads of one shard (DataLoader workers) each
# get their own, up to GZIP_READERS, while their seek-point windows together stay under
# GZIP_READERS_BYTES (a 1 GiB shard's reader holds 16 MiB: 2 of them; a 100 MiB one's
# 1.6 MiB: all 4). Before, one reader per index and a lock: the reads of one shard
# queued behind each other, a block fetched from S3 under the lock included.
GZIP_READERS = 4
GZIP_READERS_BYTES = 32 * MiB


class RangeSource(Protocol):
    """Random access to one archive object; provided by the daemon."""

    size: int

    def read(self, offset: int, size: int) -> bytes:
        """Exactly `size` bytes at `offset`, short only at the end of the object."""
        ...


@dataclass
class ArchiveIndex:
    """What build_index learned. Every field is a plain value the daemon can store.

    `members` are (path, offset, size, mtime) tuples, offsets into the
    uncompressed tar. `gzip_index` (gzip only) is indexed_gzip's exported seek
    points, zlib-compressed. `uncompressed_size` is the tar stream's length.
    `skipped` holds the first few entries not served, `skipped_count` all of them.
    """

    format: str
    members: list[Member]
    skipped: list[tuple[str, str]]
    gzip_index: bytes | None = None
    uncompressed_size: int | None = None
    skipped_count: int = 0
    spacing: int = field(default=DEFAULT_SPACING, compare=False)  # of the gzip seek points
    _gzip_readers: _GzipReaders | None = field(default=None, init=False, repr=False, compare=False)


def gzip_spacing(compressed_size: int, points: int = SMALL_POINTS) -> int:
    """The seek-point spacing of a gzip archive of `compressed_size` bytes: a power of two
    near size / `points`, between MIN_SPACING and DEFAULT_SPACING. A function of the
    size alone, so a published index's spacing can be checked (archive/published.py);
    the points stay under `points` x the compression ratio."""
    want = max(MIN_SPACING, compressed_size // points)
    return min(DEFAULT_SPACING, 1 << (want - 1).bit_length())


def gzip_spacings(compressed_size: int) -> tuple[int, ...]:
    """Every spacing an index of this archive may have: this version's, and the one
    indexes built before it have (LEGACY_SMALL_POINTS), which still serve, if slower."""
    return (gzip_spacing(compressed_size), gzip_spacing(compressed_size, LEGACY_SMALL_POINTS))


def stored_spacing(gzip_index: bytes, compressed_size: int) -> int:
    """The spacing of the seek points in `gzip_index` (an index stored before a change
    of gzip_spacing keeps its own); gzip_spacing's when its head cannot be read."""
    try:
        head = zlib.decompressobj().decompress(gzip_index, ZRAN_HEAD.size)
        spacing = ZRAN_HEAD.unpack(head)[5] if len(head) == ZRAN_HEAD.size else 0
    except zlib.error:
        spacing = 0
    return spacing if spacing in gzip_spacings(compressed_size) else gzip_spacing(compressed_size)


def gzip_window_bytes(index: ArchiveIndex) -> int:
    """What one restored reader of `index`'s seek points holds in memory (estimated from
    the stream's size: a 32 KiB window per point)."""
    return ((index.uncompressed_size or 0) // index.spacing + 1) * GZIP_WINDOW


def gzip_readers_bytes(index: ArchiveIndex) -> int:
    """What the readers of `index` restored so far hold (one counted before any is)."""
    readers = index._gzip_readers
    return gzip_window_bytes(index) * max(1, readers.count if readers else 0)


def build_index(
    source: RangeSource, declared_compression: str | None, key: str, limits: Limits, spacing: int | None = None
) -> ArchiveIndex:
    """Index the archive behind `source`; its format is decided by magic bytes.

    Plain tar hops from header to header, reading HOP_WINDOW at each. gzip
    takes one metered pass that also records a seek point every `spacing`
    uncompressed bytes (default: gzip_spacing of the archive's size); xz and bz2 take one metered pass. Raises ArchiveError;
    when members were found before the failure, its `partial` holds them.
    """
    fmt, note = resolve_format(declared_compression, key, source.read(0, min(source.size, BLOCK)))
    if note:
        log.info("%s; reading it as %s (the bytes win)", note, fmt)
    scanner = TarScanner(limits)
    spacing = spacing or gzip_spacing(source.size)
    gzip_indexer = _GzipIndexer(source, spacing) if fmt == "gzip" else None
    size = source.size if fmt == "tar" else 0

    def index() -> ArchiveIndex:
        return ArchiveIndex(
            fmt, scanner.members, scanner.skipped, gzip_indexer.export() if gzip_indexer else None, size,
            scanner.skipped_count, spacing)

    try:
        if fmt == "tar":
            _hop(source, scanner)
        else:
            for offset, chunk in iter_decompressed(source, fmt, limits):
                scanner.feed(chunk)
                size = offset + len(chunk)
                if gzip_indexer:
                    gzip_indexer.advance(size)
            if gzip_indexer:
                gzip_indexer.advance(size, final=True)
        scanner.finish(size)
    except ArchiveError as err:
        if scanner.members:
            err.partial = index()
        raise
    log.debug("indexed %s as %s: %d members, %d skipped", key, fmt, len(scanner.members), scanner.skipped_count)
    return index()


def read_member(source: RangeSource, index: ArchiveIndex, member: Member, offset: int, size: int) -> bytes:
    """Return bytes [offset, offset + size) of `member`, clamped to its size.

    tar: one source read. gzip: inflate from the seek point before the bytes
    (the restored reader is cached on `index`). xz/bz2: the slow path,
    decompressing from the start of the stream up to the bytes; the daemon
    should rather cache iter_decompressed's output. Raises ArchiveError
    rather than return short or garbage bytes.
    """
    if offset < 0 or size < 0:
        raise ValueError(f"negative offset {offset} or size {size}")
    n = max(0, min(size, member.size - offset))
    if n == 0:
        return b""
    start = member.offset + offset
    if index.format == "tar":
        data = source.read(start, n)
    elif index.format == "gzip":
        with _gzip_readers(index).lend(source) as reader:
            data = reader.read(source, start, n)
    else:
        data = _read_decompressed(source, index.format, start, n)
    if len(data) != n:
        raise ArchiveError(f"archive ends inside member {member.path!r}")
    return data


def iter_decompressed(source: RangeSource, fmt: str, limits: Limits | None) -> Iterator[tuple[int, bytes]]:
    """Yield (uncompressed offset, chunk) over a gzip, xz or bz2 stream, caps enforced.

    Lets the daemon store an xz/bz2 stream in its cache in one pass.
    limits=None drops the caps: only for a stream already indexed under them.
    """
    offset = 0
    for chunk in decompress(_chunks(source), fmt, limits):
        yield offset, chunk
        offset += len(chunk)


def _read(source: RangeSource, offset: int, size: int) -> bytes:
    data = source.read(offset, size)
    if len(data) != size:
        raise ArchiveError(f"archive object is shorter than its size: {len(data)} of {size} bytes at {offset}")
    return data


def _chunks(source: RangeSource) -> Iterator[bytes]:
    for offset in range(0, source.size, READ_SIZE):
        yield _read(source, offset, min(READ_SIZE, source.size - offset))


def _hop(source: RangeSource, scanner: TarScanner) -> None:
    """Feed a plain tar to the scanner, reading only the windows that hold headers."""
    while not scanner.done and scanner.position < source.size:
        at = scanner.position
        scanner.feed(_read(source, at, min(HOP_WINDOW, source.size - at)), at=at)


def _read_decompressed(source: RangeSource, fmt: str, start: int, size: int) -> bytes:
    out = bytearray()
    end = start + size
    for offset, chunk in iter_decompressed(source, fmt, None):
        if offset + len(chunk) > start:
            out += chunk[max(0, start - offset) : end - offset]
            if offset + len(chunk) >= end:
                break
    return bytes(out)


class _SourceFile:
    """The binary-file face of a RangeSource, for indexed_gzip to read through.

    zran turns exceptions raised by read() into its own errors; the last one is
    kept in `error` so that the source's own failure is what propagates.
    """

    def __init__(self, source: RangeSource) -> None:
        self.source = source
        self.pos = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        left = max(0, self.source.size - self.pos)
        try:
            data = self.source.read(self.pos, left if size < 0 else min(size, left))
        except BaseException as err:
            self.error = err
            raise
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.source.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


@contextmanager
def _zran_errors(file: _SourceFile) -> Iterator[None]:
    """Re-raise the source's own exception, else turn zran's (or a bad stored index's) into ArchiveError."""
    file.error = None
    try:
        yield
    except (OSError, indexed_gzip.NotCoveredError, zlib.error) as err:
        if file.error is not None:
            raise file.error from None
        raise ArchiveError(f"corrupt gzip data: {err}") from err


def _open_gzip(file: _SourceFile, spacing: int) -> indexed_gzip.IndexedGzipFile:
    return indexed_gzip.IndexedGzipFile(
        fileobj=file, spacing=spacing, readbuf_size=GZIP_READBUF, buffer_size=GZIP_READ_AHEAD
    )


class _GzipIndexer:
    """Grows indexed_gzip's seek points in step with the metered decompression.

    zran is only asked to index bytes the metered pass has already produced,
    so a bomb is refused before zran inflates it, and the compressed bytes zran
    reads were just read by that pass (block-cache hits for the daemon).
    """

    def __init__(self, source: RangeSource, spacing: int) -> None:
        self.file = _SourceFile(source)
        with _zran_errors(self.file):
            self.gzip = _open_gzip(self.file, spacing)
        self.step = 4 * spacing  # zran re-inflates up to `spacing` per call
        self.indexed = 0

    def advance(self, offset: int, final: bool = False) -> None:
        """Let zran index up to `offset` of the uncompressed stream."""
        if final or offset - self.indexed >= self.step:
            with _zran_errors(self.file):
                self.gzip.seek(offset)
            self.indexed = offset

    def export(self) -> bytes:
        raw = io.BytesIO()
        with _zran_errors(self.file):
            self.gzip.export_index(fileobj=raw)
        return zlib.compress(raw.getvalue())


class _GzipReader:
    """indexed_gzip restored from an ArchiveIndex's seek points.

    Restoring decompresses gzip_index and holds every point's 32 KiB window, so it is
    done once per reader; a reader serves one read at a time (lent by _GzipReaders).
    """

    def __init__(self, source: RangeSource, gzip_index: bytes) -> None:
        self.file = _SourceFile(source)
        with _zran_errors(self.file):
            self.gzip = _open_gzip(self.file, DEFAULT_SPACING)
            self.gzip.import_index(fileobj=io.BytesIO(zlib.decompress(gzip_index)))

    def read(self, source: RangeSource, offset: int, size: int) -> bytes:
        self.file.source = source
        with _zran_errors(self.file):
            self.gzip.seek(offset)
            data: bytes = self.gzip.read(size)
            return data


class _GzipReaders:
    """The restored readers of one index, lent one per read: a free one, else a new one
    while under `limit`, else the first one given back."""

    def __init__(self, gzip_index: bytes, limit: int) -> None:
        self.gzip_index = gzip_index
        self.limit = limit
        self.count = 0  # restored (or being restored)
        self._free: list[_GzipReader] = []
        self._returned = threading.Condition()

    @contextmanager
    def lend(self, source: RangeSource) -> Iterator[_GzipReader]:
        with self._returned:
            while not self._free and self.count >= self.limit:
                self._returned.wait()
            reader = self._free.pop() if self._free else None
            if reader is None:
                self.count += 1
        if reader is None:
            try:  # outside the condition: restoring reads the source (S3, maybe)
                reader = _GzipReader(source, self.gzip_index)
            except BaseException:
                with self._returned:
                    self.count -= 1
                    self._returned.notify()
                raise
        try:
            yield reader
        finally:
            with self._returned:
                self._free.append(reader)
                self._returned.notify()


_readers_lock = threading.Lock()


def _gzip_readers(index: ArchiveIndex) -> _GzipReaders:
    if index.gzip_index is None:
        raise ArchiveError("gzip archive index has no seek points")
    with _readers_lock:
        if index._gzip_readers is None:
            limit = min(GZIP_READERS, max(1, GZIP_READERS_BYTES // gzip_window_bytes(index)))
            index._gzip_readers = _GzipReaders(index.gzip_index, limit)
        return index._gzip_readers
