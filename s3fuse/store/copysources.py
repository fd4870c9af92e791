"""The headers a metadata-replacing copy must send again, remembered per object version.

CopyObject with MetadataDirective REPLACE resets Content-Type and the other headers of
KEPT_HEADERS unless the request sends them again, so a `chmod` of an uploaded object used
to HEAD it first: half of its requests and a third of its CPU (`chmod -R` of 1,000 files:
1,000 HEAD + 1,000 COPY). Every answer this store reads or gets already says them (a HEAD
of `ls -l`, a PUT of ours: the type we sent), so they are kept here by (bucket, key, ETag)
and a copy of a version found here needs no HEAD when the server honours
CopySourceIfMatch (probed: upload/conditions.py), which then guards the version instead.
Bounded: the oldest versions go first; a version not here is HEADed as before.
"""
from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from typing import Any, Mapping

from ..posix import HEADER_PREFIX, foreign_metadata

#: Headers a REPLACE copy sends again: boto3 parameter -> HTTP header.
KEPT_HEADERS = {"ContentType": "Content-Type", "ContentEncoding": "Content-Encoding",
                "ContentDisposition": "Content-Disposition",
                "ContentLanguage": "Content-Language", "CacheControl": "Cache-Control"}
#: Versions remembered (~430 bytes each, measured): a `chmod -R` of this many files after
#: its `ls -l` sends no HEAD.
VERSIONS_KEPT = 4096


#: The same, by lower-case header name.
_LOWER = {param: field.lower() for param, field in KEPT_HEADERS.items()}


def kept_headers(headers: Mapping[str, str]) -> dict[str, Any]:
    """The KEPT_HEADERS among an answer's `headers`, as boto3 parameters, and under
    `Metadata` the user metadata that is not POSIX metadata (posix.foreign_metadata: a
    REPLACE copy sends it again). Their names are lower case or looked up
    case-insensitively (headbatch's, botocore's and urllib3's are). Values are their
    text (`header_text`), user metadata in a form S3 takes again (`sendable_metadata`)."""
    kept: dict[str, Any] = {param: header_text(value) for param, field in _LOWER.items()
                            if (value := headers.get(field))}
    foreign = foreign_metadata({name[_META:]: sendable_metadata(value)
                                for name, value in headers.items()
                                if name[:_META].lower() == HEADER_PREFIX})
    if foreign:
        kept["Metadata"] = foreign
    return kept


def header_text(value: str) -> str:
    """A header value as the text it holds. HTTP clients read the bytes as latin-1, and
    servers answer what they were given: raw UTF-8 from mc, s3cmd or curl. Sent back as
    read, botocore encoded that latin-1 reading as UTF-8 (`résumé` became `rÃ©sumÃ©`,
    doubled at every change)."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):  # latin-1 it was (or text already)
        return value


def sendable_metadata(value: str) -> str:
    """User metadata S3 takes: ASCII as it is, other text as an RFC 2047 encoded word,
    the form AWS's SDKs store it in. botocore refuses non-ASCII user metadata before
    sending, and a rewrite or chmod of such an object was retried forever."""
    text = header_text(value)
    if text.isascii():
        return text
    return f"=?UTF-8?B?{base64.b64encode(text.encode('utf-8')).decode('ascii')}?="


_META = len(HEADER_PREFIX)


def other_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The KEPT_HEADERS among a request's `headers` (boto3 names) besides its content
    type, the empty ones left out: what a put sends beside ContentType."""
    return {name: value for name, value in (headers or {}).items()
            if name in KEPT_HEADERS and name != "ContentType" and value}


def kept_of(args: Mapping[str, Any]) -> dict[str, Any]:
    """What `CopySources` keeps of a version written with request `args` (boto3 names):
    its KEPT_HEADERS, and under `Metadata` its user metadata that is not POSIX metadata."""
    kept = {name: value for name, value in args.items() if name in KEPT_HEADERS}
    foreign = foreign_metadata(args.get("Metadata") or {})
    if foreign:
        kept["Metadata"] = foreign
    return kept


class CopySources:
    """(bucket, key, ETag) -> the kept headers of that version; thread-safe, bounded."""

    def __init__(self, limit: int = VERSIONS_KEPT):
        self._limit = limit
        self._versions: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._versions)

    def learn(self, bucket: str, key: str, etag: str, kept: Mapping[str, Any]) -> None:
        if not etag:
            return
        with self._lock:
            self._versions[(bucket, key, etag)] = dict(kept)
            self._versions.move_to_end((bucket, key, etag))
            if len(self._versions) > self._limit:
                self._versions.popitem(last=False)

    def of(self, bucket: str, key: str, etag: str) -> dict[str, Any] | None:
        """The kept headers of that version, or None when it was not seen."""
        with self._lock:
            found = self._versions.get((bucket, key, etag))
        return None if found is None else dict(found)
