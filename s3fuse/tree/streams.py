"""The decompressed stream of an xz/bz2 shard, read in passes that never go back.

xz and bz2 cannot seek, so member bytes come from a pass over the whole stream, whose
blocks go into the block cache as it goes by. A pass is kept open between reads: a
read at or ahead of where it stands continues it, so members read in archive order
(`tar -x`, a webdataset loader) cost one pass whatever the stream's size. A read of
bytes the pass has gone by that the cache no longer holds needs a new pass from the
start: the whole archive fetched and decompressed again. For a stream that fits in half
the cache that is rare and allowed. For a larger one it would happen on nearly every
such read (its first blocks are evicted by its last), so a new pass of it starts at
most once per RESTART_INTERVAL, and meanwhile those reads fail with ENOBUFS.
"""
from __future__ import annotations

import errno
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..archive.limits import ArchiveError, Limits
from ..archive.index import RangeSource, iter_decompressed
from ..cache.blocks import BlockCache
from ..errors import CorruptData, S3FuseError
from ..model import ObjectRef

#: Open passes kept (each holds a decompressor: xz's dictionary, 8 MiB at -6, at most
#: XZ_MEMLIMIT, and up to a block of pending bytes).
OPEN_PASSES = 4
#: A stream over half the cache starts a new pass at most this often (seconds).
RESTART_INTERVAL = 60.0
#: Streams whose last pass start is remembered.
REMEMBERED = 4096
#: Locks serializing the reads of one stream (streams share one by hash).
LOCK_STRIPES = 64

StreamKey = tuple[str, str, str]


def _mib(n: int) -> int:
    return -(-n // (1 << 20))


class StreamTooBig(S3FuseError):
    """Bytes of an over-cache xz/bz2 stream behind its pass, evicted, asked again too soon."""

    errno = errno.ENOBUFS


@dataclass
class _Pass:
    """One decompression of a stream under way: `pending` holds its bytes from `base`
    (a block boundary) on; those before went to the cache."""

    chunks: Iterator[tuple[int, bytes]]
    base: int = 0
    pending: bytearray = field(default_factory=bytearray)
    done: bool = False


class DirectSource:
    """An archive read straight from S3 in WINDOW-sized ranged GETs, past the block cache:
    for a stream over half the cache, whose compressed blocks in the cache would only
    evict its decompressed ones (and be evicted before the pass reached them)."""

    WINDOW = 8 << 20

    def __init__(self, get: Callable[[int, int], bytes], size: int):
        self.size = size
        self._get = get
        self._at = 0
        self._buf = b""

    def read(self, offset: int, size: int) -> bytes:
        if not (self._at <= offset and offset + size <= self._at + len(self._buf)):
            self._at, self._buf = offset, self._get(offset, min(self.size, offset + max(size, self.WINDOW)))
        return self._buf[offset - self._at:offset - self._at + size]


class StreamPasses:
    """Serves byte ranges of xz/bz2 decompressed streams (see the module docstring).
    All methods block: call them from a worker thread."""

    def __init__(self, blocks: BlockCache, block_size: int, limits: Limits,
                 clock: Callable[[], float] = time.monotonic):
        self.blocks = blocks
        self.block_size = block_size
        self.limits = limits
        self._clock = clock
        self._guard = threading.Lock()
        # striped: one lock per stream ever read would grow without bound
        self._locks = tuple(threading.Lock() for _ in range(LOCK_STRIPES))
        self._passes: OrderedDict[StreamKey, _Pass] = OrderedDict()
        self._started: OrderedDict[StreamKey, float] = OrderedDict()

    def fits(self, stream: ObjectRef) -> bool:
        return stream.size <= self.blocks.size_limit // 2

    def read(self, archive: ObjectRef, source: RangeSource, stream: ObjectRef, fmt: str,
             start: int, stop: int) -> bytes:
        """Bytes [start, stop) of `stream`, the decompressed `archive` read through `source`."""
        key = (stream.bucket, stream.key, stream.etag)
        with self._locks[hash(key) % LOCK_STRIPES]:
            cached = self._cached(stream, start, stop)
            if cached is not None:
                return cached
            with self._guard:
                run = self._passes.get(key)
            if run is None or start < run.base:
                run = self._restart(key, archive, source, stream, fmt)
            try:
                return self._advance(run, stream, start, stop, archive)
            except ArchiveError as exc:
                self._drop(key, run)
                raise CorruptData(f"{archive.uri}: {exc}") from None
            except BaseException:
                # S3 failed under the pass (offline, a 5xx): its generator is spent, and
                # the next read may start another without waiting for the ration
                self._drop(key, run, forget=True)
                raise

    def _drop(self, key: StreamKey, run: _Pass, forget: bool = False) -> None:
        with self._guard:
            if self._passes.get(key) is run:
                del self._passes[key]
            if forget:
                self._started.pop(key, None)

    def _cached(self, stream: ObjectRef, start: int, stop: int) -> bytes | None:
        block = self.block_size
        parts = []
        for index in range(start // block, (stop - 1) // block + 1):
            part = self.blocks.get(stream.bucket, stream.key, stream.etag, index)
            if part is None:
                return None
            parts.append(part)
        base = (start // block) * block
        return b"".join(parts)[start - base:stop - base]

    def _restart(self, key: StreamKey, archive: ObjectRef, source: RangeSource,
                 stream: ObjectRef, fmt: str) -> _Pass:
        now = self._clock()
        with self._guard:
            last = self._started.get(key)
            if not self.fits(stream) and last is not None and now - last < RESTART_INTERVAL:
                raise StreamTooBig(
                    f"{archive.uri} decompresses to {_mib(stream.size)} MiB, over half the cache "
                    f"({_mib(self.blocks.size_limit)} MiB): read its members in archive order, or "
                    f"raise --cache-size to {_mib(2 * stream.size)}M to read them in any order; "
                    f"bytes it has gone by are decompressed again at most every "
                    f"{RESTART_INTERVAL:.0f}s")
            self._started[key] = now
            self._started.move_to_end(key)
            while len(self._started) > REMEMBERED:
                self._started.popitem(last=False)
            run = self._passes[key] = _Pass(iter_decompressed(source, fmt, self.limits))
            self._passes.move_to_end(key)
            while len(self._passes) > OPEN_PASSES:
                self._passes.popitem(last=False)
        return run

    def _advance(self, run: _Pass, stream: ObjectRef, start: int, stop: int,
                 archive: ObjectRef) -> bytes:
        """Go on with `run` until it passes `stop`, storing each full block; `start` is
        at or after `run.base`."""
        block = self.block_size
        out = bytearray()

        def take(at: int, data: bytes | bytearray) -> None:
            lo, hi = max(start, at), min(stop, at + len(data))
            if lo < hi:
                out.extend(data[lo - at:hi - at])

        while run.base + len(run.pending) < stop and not run.done:
            chunk = next(run.chunks, None)
            if chunk is None:
                run.done = True
                if run.pending:
                    self._store(stream, run.base // block, bytes(run.pending))
                break
            run.pending += chunk[1]
            while len(run.pending) >= block:
                data = bytes(run.pending[:block])
                self._store(stream, run.base // block, data)
                take(run.base, data)
                del run.pending[:block]
                run.base += block
        take(run.base, run.pending)
        if len(out) != stop - start:
            raise CorruptData(f"{archive.uri}: decompressed stream ends before byte {stop}")
        return bytes(out)

    def _store(self, stream: ObjectRef, index: int, data: bytes) -> None:
        self.blocks.put(stream.bucket, stream.key, stream.etag, index, data)
