"""The S3 boundary as a contract: what every layer above may ask of a store.

Users type against `Store`, never against a concrete class, so the botocore store
(store/s3.py) and the in-memory fake (store/memory.py) are interchangeable: the fake
gives the write-back engine, the upload queue, the namespaces and the FUSE adapter
fast tests, and a contract test (tests/test_store_contract.py) runs the same checks on
both so that the fake cannot drift from S3.

Every method blocks (callers run them in worker threads) and raises only errors.py
errors: NotFound (404), AccessDenied (403), StaleObject (412: a condition failed, or
the object is not the version asked for), Offline (S3 unreachable; the link then fails
fast), RemoteError (anything else, after the retries of store/retry.py). Errors S3
answered carry its error code and HTTP status (`S3FuseError.code`, `.status`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Protocol, Sequence

from ..errors import RemoteError, S3FuseError
from ..util.filerange import PartBody
from .link import Link


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime_ns: int
    etag: str
    #: User metadata (boto3 `Metadata`: names without `x-amz-meta-`, lower case) when the
    #: request returns it (HEAD); None from a listing, which does not.
    metadata: Mapping[str, str] | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class ListPage:
    prefixes: list[str]
    objects: list[ObjectInfo]


def clean_etag(etag: str | None) -> str:
    """An ETag without the quotes S3 puts around it."""
    return (etag or "").strip('"')


def required_etag(etag: str | None, what: str) -> str:
    """The ETag of a 200 answer that must carry one (an object's HEAD or GET, a write's
    answer). None or empty: RemoteError, retried like a 5xx. A captive portal or a proxy
    on a plain-HTTP link answers anything with `200 OK` and a page of its own: taken at
    its word, a PUT's bytes counted as uploaded (and were dropped), a GET's page was
    cached as the object's bytes, a HEAD made a conflict name look taken."""
    cleaned = clean_etag(etag)
    if not cleaned:
        raise RemoteError(f"{what}: a 200 answer without an ETag, not one from S3 (a captive "
                          "portal or a proxy in the way?)")
    return cleaned


#: What head_many gives its caller: answers as they arrive.
HeadsAnswered = Callable[[list[tuple[str, "ObjectInfo | S3FuseError"]]], None]


def head_one_by_one(store: "Store", bucket: str, keys: Sequence[str],
                    answered: HeadsAnswered) -> None:
    """head_many by head(): each key's answer as soon as it has one."""
    for key in keys:
        result: ObjectInfo | S3FuseError
        try:
            result = store.head(bucket, key)
        except S3FuseError as exc:
            result = exc
        answered([(key, result)])


class Store(Protocol):
    """Blocking access to S3 for one mount (see the module docstring for the errors)."""

    #: Online/offline state: requests fail fast while offline, `probe` brings it back.
    link: Link

    def probe(self) -> bool:
        """One cheap request that ignores the link state: can S3 be reached at all?"""
        ...

    def check_link(self) -> bool:
        """While online: does S3 still answer (even 403)? Silence within the first-byte
        deadline takes the link offline (False); an answer changes nothing."""
        ...

    def request_counts(self) -> dict[str, int]:
        """Requests sent per S3 operation since start (shown by `s3fuse status`)."""
        ...

    # ------------------------------------------------------------ reads

    def list_buckets(self) -> list[str]: ...

    def list_pages(self, bucket: str, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        """ListObjectsV2 with `delimiter` ('' for every key below), one ListPage per response."""
        ...

    def head(self, bucket: str, key: str) -> ObjectInfo: ...

    def head_many(self, bucket: str, keys: Sequence[str], answered: HeadsAnswered) -> None:
        """HEAD every key at once (`ls -l` of a cold directory); `answered` gets (key,
        ObjectInfo or the S3FuseError head() would raise) as the answers arrive, in groups,
        from worker threads (possibly several at once). Every key gets one answer."""
        ...

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the version `etag` (If-Match): never short, never another
        version (StaleObject)."""
        ...

    def get_whole(self, bucket: str, key: str, etag: str, limit: int) -> tuple[ObjectInfo, bytes]:
        """A whole small object (version `etag`, If-Match) with what a HEAD would say of
        it (size, ETag, dates, user metadata): one request where a lookup of its metadata
        and a read of its bytes would take two. More than `limit` bytes: RemoteError."""
        ...

    def iter_chunks(self, bucket: str, key: str, etag: str, size: int, chunk: int) -> Iterator[bytes]:
        """One version of an object in ranged chunks: big objects in bounded memory."""
        ...

    # ------------------------------------------------------------ writes

    def put_object(self, bucket: str, key: str, body: bytes | BinaryIO, *,
                   content_type: str | None = None, if_match: str | None = None,
                   if_none_match: str | None = None,
                   metadata: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> str:
        """One PutObject (with the configured SSE); returns the new ETag. `if_match` (an
        ETag) / `if_none_match` ("*") make it conditional: StaleObject on 412. `metadata`:
        user metadata (names without `x-amz-meta-`; posix.to_headers). `headers`: others
        of copysources.KEPT_HEADERS by their boto3 names (CacheControl, ...)."""
        ...

    def create_multipart_upload(self, bucket: str, key: str, *,
                                content_type: str | None = None,
                                metadata: Mapping[str, str] | None = None,
                                headers: Mapping[str, str] | None = None) -> str:
        """Start a multipart upload (its object gets `metadata` and `headers`, as
        put_object's); returns its UploadId."""
        ...

    def headers_of(self, bucket: str, key: str, etag: str) -> dict[str, Any] | None:
        """What a new version of `key` keeps of its version `etag`: copysources.KEPT_HEADERS
        by their boto3 names (ContentType, CacheControl, ...) and, under `Metadata`, the user
        metadata that is not POSIX metadata. Remembered when seen, else a HEAD; None when S3
        holds another version or none (the upload's condition then decides)."""
        ...

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int,
                    body: PartBody) -> str:
        """Upload one part (numbered from 1; in memory or a range of a file); returns its
        ETag."""
        ...

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                  part_etags: list[str], *, if_match: str | None = None,
                                  if_none_match: str | None = None) -> str:
        """Assemble parts 1..n (ETags in order); conditional like put_object."""
        ...

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort a multipart upload; one already gone (or its bucket) is fine."""
        ...

    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> list[tuple[str, str]]:
        """(key, UploadId) of every unfinished multipart upload under `prefix`."""
        ...

    def copy_object(self, bucket: str, source_key: str, key: str, etag: str, *,
                    metadata: Mapping[str, str] | None = None,
                    content_type: str | None = None, size: int = 0,
                    trust_condition: bool = False) -> str:
        """Server-side copy of the version `etag` of `source_key` (CopySourceIfMatch):
        StaleObject if the source changed; returns the new ETag. Without `metadata` the
        copy keeps the source's user metadata and content type; with it (also onto
        itself: a metadata change) they are replaced (MetadataDirective REPLACE, the
        content type kept when `content_type` is None). A `size` over the single-copy
        limit (5 GiB) is copied in parts (UploadPartCopy), with the same condition.
        `trust_condition`: the server is known to honour CopySourceIfMatch and `size` is
        the source's, so a store may skip a check of its own (a HEAD)."""
        ...

    def delete_object(self, bucket: str, key: str, *, if_match: str | None = None) -> None:
        """DeleteObject; a key already gone is fine. With `if_match` (an ETag) only that
        version is deleted: StaleObject when the key holds another one."""
        ...
