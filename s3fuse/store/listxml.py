"""ListObjectsV2 pages read by one regular expression learned from their own shape.

ElementTree took ~4.5 ms for a page of 1,000 keys, and building boto3's dict per key
as much again: a third of the daemon's CPU in an `ls` of a 100,000-key directory. A
server writes every `Contents` element of a page the same way (the same fields in the
same order), so the first one is turned into a pattern (its markup literal, each text
run a group) that one `findall` applies to the whole page in C, ~0.5 ms. Whatever does
not fit (an element written differently, a DOCTYPE, CDATA, comments, an entity other
than XML's five or a character reference, a count that does not add up) raises
ValueError, and the caller parses the page with ElementTree: always right, only slower.
"""
from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass

log = logging.getLogger(__name__)

_ROOT = re.compile(r"\s*(?:<\?xml[^>?]*\?>\s*)?<ListBucketResult(?:\s+xmlns=\"[^\"<>]*\")?\s*>")
_MARKUP = re.compile(r"(<[^>]*>)")
_PREFIXES = re.compile(r"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>")
_TRUNCATED = re.compile(r"<IsTruncated>([^<]*)</IsTruncated>")
_TOKEN = re.compile(r"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_URL_ENCODED = re.compile(r"<EncodingType>\s*url\s*</EncodingType>")
_ENTITY = re.compile(r"&(?:#x([0-9a-fA-F]+)|#([0-9]+)|(lt|gt|amp|quot|apos));")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
#: The fields of an object read from a page, in the order of FastPage.objects' tuples.
FIELDS = ("Key", "Size", "LastModified", "ETag")
#: Shapes of `Contents` elements whose patterns are kept (a server writes one or two).
SHAPES = 16
_shapes: dict[str, tuple[re.Pattern[str], tuple[int, ...]]] = {}


@dataclass(slots=True)
class FastPage:
    """One page: prefixes, and objects as (key, size, last_modified, etag) text (entities
    replaced, keys url-decoded when the server encoded them; '' for a missing field,
    '0' for a missing or empty Size, as boto3 gives them)."""

    prefixes: list[str]
    objects: list[tuple[str, str, str, str]]
    truncated: bool
    token: str | None


def _entity(match: re.Match[str]) -> str:
    hexa, dec, name = match.groups()
    if name:
        return _NAMED[name]
    return chr(int(hexa, 16) if hexa else int(dec))


def unescape(text: str) -> str:
    """XML text with its entities and character references replaced (ValueError on any
    other `&`, which an XML parser would reject too)."""
    if "&" not in text:
        return text
    quoted = text.replace("&#34;", '"').replace("&quot;", '"')  # an ETag's quotes
    if "&" not in quoted:
        return quoted
    if "&" in _ENTITY.sub("", text):
        raise ValueError(f"an entity the fast listing parser does not know in {text[:80]!r}")
    return _ENTITY.sub(_entity, text)


def _shape(element: str) -> tuple[re.Pattern[str], tuple[int, ...]]:
    """The pattern matching elements written as `element` is, and the group of each of
    FIELDS in it (0: absent)."""
    found = _shapes.get(element)
    if found is not None:
        return found
    parts = _MARKUP.split(element)  # text, tag, text, tag, ..., text
    pattern, groups, where = [], 0, {}
    for i, part in enumerate(parts):
        if i % 2:
            pattern.append(re.escape(part))
        elif 0 < i < len(parts) - 1:
            groups += 1
            pattern.append("([^<]*)")
            tag = parts[i - 1]
            if tag[1:-1] in FIELDS and parts[i + 1] == f"</{tag[1:]}":
                where[tag[1:-1]] = groups
    if "Key" not in where:
        raise ValueError("a Contents element without a Key")
    if len(_shapes) >= SHAPES:
        _shapes.clear()
    found = _shapes[element] = (re.compile("".join(pattern)),
                                tuple(where.get(f, 0) for f in FIELDS))
    return found


def parse(body: bytes) -> FastPage:
    """A ListBucketResult page (ValueError when it is not of a shape read here)."""
    text = body.decode("utf-8")
    root = _ROOT.match(text)
    if root is None or "<!" in text or text.find("<?", root.end()) >= 0 or "\r" in text:
        raise ValueError("not a plain ListBucketResult")
    objects: list[tuple[str, str, str, str]] = []
    count = text.count("<Contents")
    if count:
        start = text.find("<Contents>")
        end = text.find("</Contents>", start)
        if start < 0 or end < 0:
            raise ValueError("a Contents element not read here")
        pattern, where = _shape(text[start:end + len("</Contents>")])
        rows = pattern.findall(text, start)
        if len(rows) != count:
            raise ValueError("Contents elements of another shape")
        if pattern.groups == 1:  # findall gives strings, not tuples
            rows = [(r,) for r in rows]
        k, s, m, e = (i - 1 for i in where)
        objects = [(r[k], (r[s] or "0") if s >= 0 else "0", r[m] if m >= 0 else "",
                    r[e] if e >= 0 else "") for r in rows]
        if "&" in text:  # most often only in ETags (their quotes): the others checked once
            objects = [(unescape(k) if "&" in k else k, s, m,
                        unescape(e) if "&" in e else e) for k, s, m, e in objects]
            if any("&" in s or "&" in m for _, s, m, _ in objects):
                raise ValueError("an entity in a Size or LastModified")
    prefixes = [unescape(p) for p in _PREFIXES.findall(text)]
    if text.count("<CommonPrefixes") != len(prefixes):
        raise ValueError("CommonPrefixes elements not read here")
    truncated = _TRUNCATED.findall(text)
    token = _TOKEN.findall(text)
    if len(truncated) > 1 or len(token) > 1:
        raise ValueError("more than one IsTruncated or NextContinuationToken")
    if _URL_ENCODED.search(text):
        def decode(value: str) -> str:  # bytes that are not UTF-8 stay visible (as surrogates)
            return urllib.parse.unquote_plus(value, errors="surrogateescape")
        prefixes = [decode(p) for p in prefixes]  # the few there are
        objects = [(decode(key) if "%" in key or "+" in key else key, size, mtime, etag)
                   for key, size, mtime, etag in objects]
    return FastPage(prefixes, objects,
                    bool(truncated) and truncated[0].strip().lower() == "true",
                    unescape(token[0]) if token else None)
