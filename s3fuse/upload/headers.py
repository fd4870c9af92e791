"""The headers a new version of an object is sent with, besides its POSIX metadata.

A new file gets a content type guessed from its name. A new version of an object (a
file rewritten through the mount) keeps what the version it replaces held, as s3fs
does: a user's `Content-Type: text/html; charset=utf-8` or `Cache-Control` set with
`aws s3 cp`, a website's `Content-Disposition`, other tools' user metadata. Only what
describes the old bytes goes (rclone's `md5chksum`: `rclone check` would report the new
bytes as corrupt), and a content type that says nothing (S3's default) gives way to the
guess. The old version's headers were usually seen already (a lookup's HEAD, our own
upload: store/copysources.py); otherwise one HEAD asks for them.
"""
from __future__ import annotations

import logging
import mimetypes
from typing import Any

from ..errors import AccessDenied, CredentialsExpired
from ..posix import with_foreign
from ..store.protocol import Store

log = logging.getLogger(__name__)

#: Content types of `dir/` markers, as s3fs writes them.
DIRECTORY_TYPE = "application/x-directory"
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                   "xz": "application/x-xz", "br": "application/x-brotli"}
#: Other tools' user metadata that describes the bytes: stale once they change.
CONTENT_DIGESTS = frozenset({"md5chksum"})
#: Content types that say nothing (S3's default when none is sent, and ours for a name
#: of no known type): a new version guesses from its name instead.
UNTYPED = frozenset({"binary/octet-stream", "application/octet-stream", ""})

#: put_object's and create_multipart_upload's keyword arguments (metadata, headers).
Extra = dict[str, dict[str, str]]


def content_type(key: str) -> str:
    """From the name; compressed files are their compression (not the inner type), a
    `dir/` marker is a directory."""
    if key.endswith("/"):
        return DIRECTORY_TYPE
    guessed, encoding = mimetypes.guess_type(key, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding, "application/octet-stream")
    return guessed or "application/octet-stream"


def extra(metadata: dict[str, str] | None, headers: dict[str, str] | None = None) -> Extra:
    """The keyword arguments of a put that sends `metadata` and `headers` (none empty)."""
    return {name: value for name, value in (("metadata", metadata), ("headers", headers))
            if value}


def carried(store: Store, bucket: str, key: str, expected: str,
            metadata: dict[str, str]) -> tuple[str | None, Extra]:
    """The content type (None: guess it) and put arguments of a new version of `key`
    that replaces its version `expected` and stores the POSIX `metadata`: what that
    version holds, less CONTENT_DIGESTS, under `metadata`. Blocking (a HEAD, at most)."""
    try:
        old = store.headers_of(bucket, key, expected)
    except CredentialsExpired:
        raise
    except AccessDenied as exc:  # credentials that may write but not read it
        log.warning("s3://%s/%s: the headers of the version it replaces cannot be read (%s): "
                 "its new version is sent without them", bucket, key, exc)
        old = None
    if not old:
        return None, extra(metadata)
    old = dict(old)
    foreign = {name: value for name, value in (old.pop("Metadata", None) or {}).items()
               if name.lower() not in CONTENT_DIGESTS}
    ctype = old.pop("ContentType", None)
    headers: dict[str, Any] = {name: value for name, value in old.items() if value}
    return (None if (ctype or "").split(";")[0].strip().lower() in UNTYPED else ctype,
            extra(with_foreign(metadata, foreign), headers))
