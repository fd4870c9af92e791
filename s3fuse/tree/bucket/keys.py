"""Where a bucket tree's paths live in S3: path <-> key, and the listing store's id.

One job: the mapping every part of the bucket namespace shares (listings, the view of
pending uploads, mutations), so none of them needs the source spec or another part to
turn a relative path ("" is the tree's top, "a/b" a file or directory below it) into
the S3 key of a file, the prefix of a directory, or the id its listings are stored under.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ...model import Entry, ObjectRef
from ...names import split

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BucketKeys:
    """s3://bucket/prefix/ as a tree of relative paths."""

    bucket: str
    prefix: str  # "" or ends with "/"

    @property
    def ns_id(self) -> str:
        """The id of this tree's listings in the metadata store."""
        return f"bucket\x00{self.bucket}\x00{self.prefix}"

    def key(self, path: str) -> str:
        """The key of the file at `path`."""
        return self.prefix + path

    def dir_prefix(self, path: str) -> str:
        """The prefix of the directory at `path` (its marker's key)."""
        return self.prefix + (path + "/" if path else "")

    def place(self, key: str) -> tuple[str, str] | None:
        """(parent path, name) of a key or marker in this tree; None outside it (or its top)."""
        if not key.startswith(self.prefix) or key == self.prefix:
            return None
        return split(key[len(self.prefix):].rstrip("/"))

    def ref(self, path: str, entry: Entry) -> ObjectRef:
        """The version of the file at `path` that `entry` describes."""
        return ObjectRef(self.bucket, self.key(path), entry.etag, entry.size)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
