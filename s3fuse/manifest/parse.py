"""s3exchange manifest lines -> typed entries, exactly as s3exchange 0.1.1 reads them.

`kind` is required: `file` needs `key`, `shard` needs `archive_key`, `manifest_ref`
needs `key`. Unknown extra fields are kept; optional fields may be null. Shard
defaults: missing `format` -> tar, missing `internal_manifest_path` ->
`__manifest__.jsonl`, missing `compression` -> gzip, explicit null -> none.
A bad line is skipped and counted; the rest is served. The bad lines of one
manifest make one summary line (their count, the first few numbers and reasons):
a hostile manifest of a million bad lines must not write a million log lines.
A line whose fields hold a lone surrogate (a `\\ud800` escape) is bad too: no UTF-8 store
can keep it.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Union

from ..util.oncelog import Tally

log = logging.getLogger(__name__)

DEFAULT_INTERNAL_MANIFEST = "__manifest__.jsonl"
_MISSING = object()


@dataclass(frozen=True, slots=True)
class FileItem:
    key: str
    id: str | None
    meta: Any
    content_type: str | None
    size: int | None
    etag: str | None


@dataclass(frozen=True, slots=True)
class ShardItem:
    archive_key: str
    format: str
    compression: str | None
    internal_manifest_path: str
    count: int | None
    size: int | None
    meta: Any


@dataclass(frozen=True, slots=True)
class RefItem:
    key: str


Item = Union[FileItem, ShardItem, RefItem]


class BadLine(ValueError):
    pass


def _str(obj: dict[str, Any], field: str, required: bool = False) -> str | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise BadLine(f"missing {field!r}")
        return None
    if not isinstance(value, str):
        raise BadLine(f"{field!r} is not a string")
    if required and not value:
        raise BadLine(f"{field!r} is empty")
    return value


def _int(obj: dict[str, Any], field: str) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadLine(f"{field!r} is not a non-negative integer")
    return value


def parse_item(obj: Any, escaped: bool = True) -> Item:
    """The item of a parsed line. `escaped` False: the line was ASCII without a `\\u`
    escape, so no decoding can have made a lone surrogate (json.loads decodes bytes with
    surrogatepass), and none is looked for: most lines, at a fifth of their parse cost."""
    item = _item(obj)
    if escaped and any(_lone_surrogate(getattr(item, name)) for name in item.__slots__):
        raise BadLine("a field is not valid Unicode (a lone surrogate)")
    return item


def _lone_surrogate(value: Any) -> bool:
    """Does `value` (a parsed JSON value) hold a string that UTF-8 cannot encode?"""
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def _item(obj: Any) -> Item:
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object")
    kind = obj.get("kind")
    if kind == "file":
        etag = _str(obj, "etag")
        return FileItem(_str(obj, "key", True), _id(obj), obj.get("meta"), _str(obj, "content_type"),
                        _int(obj, "size_bytes"), etag.strip('"') if etag else None)
    if kind == "shard":
        compression = obj.get("compression", _MISSING)
        if compression is _MISSING:
            compression = "gzip"
        elif compression is not None and not isinstance(compression, str):
            raise BadLine("'compression' is not a string")
        return ShardItem(_str(obj, "archive_key", True), _str(obj, "format") or "tar", compression,
                         _str(obj, "internal_manifest_path") or DEFAULT_INTERNAL_MANIFEST,
                         _int(obj, "count"), _int(obj, "size_bytes"), obj.get("meta"))
    if kind == "manifest_ref":
        return RefItem(_str(obj, "key", True))
    raise BadLine(f"unknown kind {kind!r}" if kind is not None else "missing 'kind'")


def _id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    return None if value is None else str(value)


@contextmanager
def _tallied(skips: Tally | None, source: str) -> Iterator[Tally]:
    """The caller's tally, or one of our own that is logged when the lines end."""
    if skips is not None:
        yield skips
        return
    own = Tally()
    try:
        yield own
    finally:
        own.emit(log, logging.WARNING, source, "line")


def parse_lines(lines: Iterable[bytes], source: str, skips: Tally | None = None) -> Iterator[Item]:
    """Items of a manifest, skipping malformed lines: counted in `skips` by number (else
    logged as one summary line at the end)."""
    for _number, item in parse_numbered(lines, source, skips):
        yield item


def parse_numbered(lines: Iterable[bytes], source: str,
                   skips: Tally | None = None) -> Iterator[tuple[int, Item]]:
    """(line number, item) of a manifest, as parse_lines: a caller that skips an item
    later can still say which line it was."""
    with _tallied(skips, source) as tally:
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                yield number, parse_item(json.loads(line), b"\\u" in line or not line.isascii())
            except (BadLine, ValueError, UnicodeDecodeError, RecursionError) as exc:
                tally.add(f"line {number}: {_reason(exc)}")


def _reason(exc: Exception) -> str:
    if isinstance(exc, BadLine):
        return str(exc)
    return "not valid JSON"


def split_lines(chunks: Iterable[bytes], max_line: int, source: str,
                skips: Tally | None = None) -> Iterator[bytes]:
    """Lines of a streamed object; a line longer than `max_line` is dropped (counted)."""
    with _tallied(skips, source) as tally:
        yield from _split(chunks, max_line, tally)


def _split(chunks: Iterable[bytes], max_line: int, skips: Tally) -> Iterator[bytes]:
    pending = bytearray()
    skipping = False
    number = 0
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not skipping:
                    pending += chunk[start:]
                    if len(pending) > max_line:
                        skipping = True
                        pending.clear()
                break
            number += 1
            if skipping or len(pending) + end - start > max_line:
                skips.add(f"line {number}: longer than {max_line} bytes")
                skipping = False
                yield b""  # keeps the line numbers of what follows right
            else:
                pending += chunk[start:end]
                yield bytes(pending)
            pending.clear()
            start = end + 1
    if skipping:
        skips.add(f"line {number + 1}: longer than {max_line} bytes")
    elif pending:
        yield bytes(pending)
