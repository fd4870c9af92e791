"""Which compression an archive really uses, and metered streaming decompression.

Declared formats (a manifest field, a key suffix) are only hints: magic bytes
decide. Decompressed sizes written in headers are never trusted: output is
counted as it streams, so a decompression bomb is refused once it has produced
Limits.ratio_grace_bytes (256 MiB), never later than max_total_bytes.
"""
from __future__ import annotations

import bz2
import logging
import lzma
import zlib
from typing import Callable, Iterable, Iterator, Literal, Protocol

from s3fuse.archive.limits import ArchiveError, Limits
from s3fuse.archive.tar import BLOCK, ZERO_BLOCK, valid_checksum

log = logging.getLogger(__name__)

Format = Literal["tar", "gzip", "xz", "bz2", "unknown"]
#: The bytes every stream of a compressed format starts with (bz2's then names a level).
MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "bz2": b"BZh"}

FEED_SIZE = 64 << 10  # compressed bytes per decompress call: the ratio's granularity
OUT_CHUNK = 1 << 20  # most output per decompress call, so memory stays bounded
XZ_MEMLIMIT = 256 << 20  # an xz header may ask for a dictionary of GiBs

# Declared compression names and key suffixes, to the format they announce.
_ALIASES = {
    "none": "tar", "identity": "tar", "tar": "tar",
    "gzip": "gzip", "gz": "gzip", "tgz": "gzip",
    "xz": "xz", "txz": "xz",
    "bz2": "bz2", "bzip2": "bz2", "tbz": "bz2", "tbz2": "bz2",
}


def sniff(head: bytes) -> Format:
    """Name the format from an object's first bytes (512 suffice).

    A valid tar header checksum wins over compression magic, since a tar whose
    first name starts with "BZh1" is still a tar; compressed data practically
    never passes that checksum.
    """
    block = head[:BLOCK]
    if len(block) == BLOCK and (block == ZERO_BLOCK or valid_checksum(block)):
        return "tar"
    if head.startswith(MAGIC["gzip"]):
        return "gzip"
    if head.startswith(MAGIC["xz"]):
        return "xz"
    if head.startswith(MAGIC["bz2"]) and len(head) > 3 and head[3] in b"123456789":
        return "bz2"
    if head[257:262] == b"ustar":
        return "tar"
    return "unknown"


def resolve_format(declared_compression: str | None, key: str, head: bytes) -> tuple[str, str | None]:
    """Return (format to use, note), the note saying how the declaration was wrong.

    The declaration is the manifest's compression field, else the key's
    suffix. Raises ArchiveError when the bytes are no format we read.
    """
    if declared_compression:
        declared: str | None = _ALIASES.get(declared_compression.lower(), declared_compression)
    else:
        declared = _ALIASES.get(key.rsplit(".", 1)[-1].lower())
    actual = sniff(head)
    if actual == "unknown":
        raise ArchiveError(f"{key}: not a tar, tar.gz, tar.xz or tar.bz2 archive (declared {declared})")
    note = None if declared in (None, actual) else f"{key}: declared {declared} but the bytes are {actual}"
    return actual, note


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


class _Gunzip:
    """zlib's gzip decoder behind the lzma/bz2 decompressor interface."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=31)
        self._tail = b""
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._z.decompress(self._tail + data, max_length)
        self._tail = self._z.unconsumed_tail
        self.needs_input = not self._tail and len(out) < max_length
        return out


_DECOMPRESSORS: dict[str, Callable[[], _Decompressor]] = {
    "gzip": _Gunzip,
    "xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT),
    "bz2": bz2.BZ2Decompressor,
}
_DECODE_ERRORS = (zlib.error, lzma.LZMAError, OSError, EOFError)


def decompress(chunks: Iterable[bytes], fmt: str, limits: Limits | None) -> Iterator[bytes]:
    """Yield the decompressed stream of `chunks`, the compressed bytes in order.

    Concatenated streams (multi-member gzip, multi-stream xz/bz2) are followed, and
    zero bytes padding them are skipped. Bytes after a stream that cannot start another
    (an appended signature, non-zero tape filler) end the output, as gzip(1) and bzip2(1)
    ignore "trailing garbage": before, they made the whole archive corrupt.
    Raises ArchiveError on corrupt or truncated data, and when output passes
    max_total_bytes or, past its first ratio_grace_bytes, max_ratio times the input consumed.
    limits=None skips the caps: only for a stream already indexed under them.
    """
    new = _DECOMPRESSORS[fmt]
    decoder = new()
    consumed = produced = 0
    for chunk in chunks:
        for start in range(0, len(chunk), FEED_SIZE):
            data = chunk[start : start + FEED_SIZE]
            consumed += len(data)
            while True:
                if decoder.eof:
                    # Zero padding after a stream is skipped, as gzip(1) and tarfile do: no
                    # stream starts with a zero byte.
                    data = (decoder.unused_data + data).lstrip(b"\0")
                    if not data:
                        break
                    if not _may_start_stream(fmt, data):
                        log.info("%s stream ends before compressed offset %d: the bytes after "
                                 "it are ignored (trailing garbage)", fmt, consumed)
                        return
                    decoder = new()
                elif not data and decoder.needs_input:
                    break
                try:
                    out = decoder.decompress(data, OUT_CHUNK)
                except _DECODE_ERRORS as err:
                    raise ArchiveError(f"corrupt {fmt} data before compressed offset {consumed}: {err}") from None
                data = b""
                if out:
                    produced += len(out)
                    if limits is not None:
                        _check(fmt, limits, consumed, produced)
                    yield out
    if not decoder.eof:
        raise ArchiveError(f"truncated {fmt} stream ({consumed} compressed bytes)")


def _may_start_stream(fmt: str, data: bytes) -> bool:
    """Can `data` (or, when shorter than the magic, what follows it) begin a `fmt` stream?"""
    magic = MAGIC[fmt]
    return magic.startswith(data[:len(magic)])


def _check(fmt: str, limits: Limits, consumed: int, produced: int) -> None:
    if produced > limits.max_total_bytes:
        raise ArchiveError(f"{fmt} stream decompresses to over {limits.max_total_bytes} bytes (max_total_bytes)")
    if produced > limits.ratio_grace_bytes and produced > limits.max_ratio * consumed:
        raise ArchiveError(
            f"{fmt} stream expands over {limits.max_ratio:g}x (max_ratio): {produced} bytes "
            f"from {consumed}, refused as a likely decompression bomb"
        )
