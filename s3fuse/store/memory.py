"""An in-memory S3 with fault injection: the fake `Store` (store/protocol.py) for fast tests.

It keeps S3's semantics, not just its shape, so that code tested against it behaves the
same against S3 (tests/test_store_contract.py runs one set of checks on both): MD5
ETags (multipart: MD5 of the part MD5s, "-N"), If-Match / If-None-Match on writes and
deletes and CopySourceIfMatch (StaleObject, 412; If-Match on a missing key: NotFound
NoSuchKey, as AWS answers), ranged GETs of one version, multipart uploads (parts of at
least `min_part_size` but the last), ListObjectsV2 with delimiter and pagination in
UTF-8 byte order, 404 -> NotFound, and its own Link (offline: fail fast until `probe`).

Faults are what a caller sees after the store's own retries: `fail(operation, times,
error, prefix)` makes the next calls of an operation ("PutObject", "*" for any) on keys
under a prefix fail with a transient (503 SlowDown), permanent (403 AccessDenied) or
offline error, or any error a factory makes; `latency` delays every call;
`reachable = False` takes S3 away until it is set back (the probe then succeeds);
`replace` is another client's write, made whatever the link says;
`conditions` = "ignore" answers like servers that ignore conditional headers,
"refuse" like servers that answer them 501 NotImplemented.

Thread-safe: callers use it from worker threads, as they would the real store.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, Literal, Mapping, Sequence

from ..util.filerange import PartBody, body_bytes
from ..errors import AccessDenied, NotFound, Offline, RemoteError, S3FuseError, StaleObject
from .copysources import kept_of, other_headers
from .link import Link
from .protocol import HeadsAnswered, ListPage, ObjectInfo, clean_etag, head_one_by_one
from .retry import tagged

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
Conditions = Literal["honour", "ignore", "refuse"]
ErrorFactory = Callable[[str], S3FuseError]

#: The errors `fail` injects by name, as S3Store raises them.
ERRORS: dict[str, ErrorFactory] = {
    "transient": lambda what: tagged(RemoteError(f"{what}: S3 error SlowDown"), "SlowDown", 503),
    "permanent": lambda what: tagged(AccessDenied(f"{what}: access denied (AccessDenied)"),
                                     "AccessDenied", 403),
    "offline": lambda what: Offline(f"{what}: S3 unreachable (injected)"),
}


def _md5(data: bytes) -> hashlib._Hash:
    return hashlib.md5(data, usedforsecurity=False)  # S3's ETag, not security


def _order(key: str) -> bytes:
    """S3 lists keys in UTF-8 byte order."""
    return key.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class _Object:
    data: bytes
    etag: str
    mtime_ns: int
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # CacheControl, ... (boto3 names)


@dataclass(slots=True)
class _Upload:
    key: str
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)


@dataclass(slots=True)
class _Fault:
    operation: str
    times: int
    error: ErrorFactory
    prefix: str


class MemoryStore:
    """S3 in a dict (see the module docstring)."""

    def __init__(self, *, link: Link | None = None, page_size: int = 1000,
                 min_part_size: int = MIN_PART_SIZE, conditions: Conditions = "honour"):
        self.link = link or Link()
        self.page_size = page_size
        self.min_part_size = min_part_size
        self.conditions: Conditions = conditions
        self.latency = 0.0         # seconds every request takes
        self.link_checks = 0       # check_link calls (store/liveness.py's watch)
        self.reachable = True      # False: every request (and the probe) finds S3 unreachable
        self._buckets: dict[str, dict[str, _Object]] = {}
        self._uploads: dict[str, dict[str, _Upload]] = {}  # bucket -> UploadId -> upload
        self._faults: list[_Fault] = []
        self._counts: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # ------------------------------------------------------------ test controls

    def create_bucket(self, bucket: str) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, {})
            self._uploads.setdefault(bucket, {})

    def delete_bucket(self, bucket: str) -> None:
        """The bucket and everything in it disappear (as when someone else deletes it)."""
        with self._lock:
            self._buckets.pop(bucket, None)
            self._uploads.pop(bucket, None)

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every key of the bucket and its bytes (for assertions)."""
        with self._lock:
            return {key: obj.data for key, obj in self._buckets[bucket].items()}

    def replace(self, bucket: str, key: str, data: bytes, etag: str | None = None,
                metadata: Mapping[str, str] | None = None) -> str:
        """Another client writes `key` (whatever the link and faults say; `etag`: the one
        a server gives it other than the MD5); returns its ETag."""
        with self._lock:
            return self._store(bucket, key, data, etag or _md5(data).hexdigest(), None, metadata)

    def fail(self, operation: str, times: int = 1, error: str | ErrorFactory = "transient",
             prefix: str = "") -> None:
        """The next `times` calls of `operation` ("*": any) on keys under `prefix` fail."""
        factory = ERRORS[error] if isinstance(error, str) else error
        with self._lock:
            self._faults.append(_Fault(operation, times, factory, prefix))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # ------------------------------------------------------------ the request path

    def _begin(self, operation: str, bucket: str, key: str = "") -> str:
        """Count the request and apply the link, latency and faults; returns its name."""
        what = f"{operation} s3://{bucket}/{key}"
        self.link.check(what)
        with self._lock:
            self._counts[operation] += 1
            fault = self._take_fault(operation, key)
        if self.latency:
            time.sleep(self.latency)
        error = Offline(f"{what}: S3 unreachable") if not self.reachable else None
        if error is None and fault is not None:
            error = fault.error(what)
        if error is not None:
            if isinstance(error, Offline):
                self.link.failed(str(error))
            raise error
        return what

    def _take_fault(self, operation: str, key: str) -> _Fault | None:
        for fault in self._faults:
            if fault.operation in (operation, "*") and key.startswith(fault.prefix):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _bucket(self, bucket: str, what: str) -> dict[str, _Object]:
        try:
            return self._buckets[bucket]
        except KeyError:
            raise tagged(NotFound(f"{what}: not found (NoSuchBucket)"), "NoSuchBucket", 404) from None

    def _object(self, bucket: str, key: str, what: str) -> _Object:
        try:
            return self._bucket(bucket, what)[key]
        except KeyError:
            raise tagged(NotFound(f"{what}: not found (NoSuchKey)"), "NoSuchKey", 404) from None

    def _upload(self, bucket: str, upload_id: str, what: str) -> _Upload:
        self._bucket(bucket, what)
        try:
            return self._uploads[bucket][upload_id]
        except KeyError:
            raise tagged(NotFound(f"{what}: not found (NoSuchUpload)"), "NoSuchUpload", 404) from None

    def _check(self, what: str, current: _Object | None, if_match: str | None,
               if_none_match: str | None) -> None:
        """The conditional headers of a write, answered as `conditions` says."""
        if (if_match is None and if_none_match is None) or self.conditions == "ignore":
            return
        if self.conditions == "refuse":
            raise tagged(RemoteError(f"{what}: S3 error NotImplemented"), "NotImplemented", 501)
        if if_match is not None:
            if current is None:
                raise tagged(NotFound(f"{what}: not found (NoSuchKey)"), "NoSuchKey", 404)
            if current.etag != clean_etag(if_match):
                raise self._stale(what)
        if if_none_match == "*" and current is not None:
            raise self._stale(what)

    @staticmethod
    def _stale(what: str) -> S3FuseError:
        return tagged(StaleObject(f"{what}: object changed in S3"), "PreconditionFailed", 412)

    def _store(self, bucket: str, key: str, data: bytes, etag: str, content_type: str | None,
               metadata: Mapping[str, str] | None = None,
               headers: Mapping[str, str] | None = None) -> str:
        self._buckets[bucket][key] = _Object(data, etag, time.time_ns() // 10**9 * 10**9,
                                             content_type or "binary/octet-stream",
                                             {k.lower(): v for k, v in (metadata or {}).items()},
                                             other_headers(headers))
        return etag

    def headers_of(self, bucket: str, key: str, etag: str) -> dict[str, Any] | None:
        """As remembered by S3Store (no request counted): a HEAD's answer, when the object
        still holds version `etag`."""
        with self._lock:
            obj = self._buckets.get(bucket, {}).get(key)
        if obj is None or obj.etag != clean_etag(etag):
            return None
        return kept_of({"ContentType": obj.content_type, **obj.headers, "Metadata": obj.metadata})

    def headers(self, bucket: str, key: str) -> dict[str, str]:
        """Tests: the object's KEPT_HEADERS other than its content type, by boto3 name."""
        with self._lock:
            return dict(self._buckets[bucket][key].headers)

    def _done(self) -> None:
        self.link.succeeded()

    # ------------------------------------------------------------ Store: state

    def probe(self) -> bool:
        if not self.reachable:
            return False
        self.link.succeeded()
        return True

    def check_link(self) -> bool:
        self.link_checks += 1
        if not self.reachable:
            self.link.failed("S3 unreachable")
        return self.reachable

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    # ------------------------------------------------------------ Store: reads

    def list_buckets(self) -> list[str]:
        self._begin("ListBuckets", "")
        with self._lock:
            names = sorted(self._buckets)
        self._done()
        return names

    def list_pages(self, bucket: str, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        marker: bytes | None = None
        while True:
            what = self._begin("ListObjectsV2", bucket, prefix)
            with self._lock:
                entries = self._entries(self._bucket(bucket, what), prefix, delimiter)
            after = [e for e in entries if marker is None or _order(e[0]) > marker]
            page, more = after[:self.page_size], len(after) > self.page_size
            self._done()
            yield ListPage([name for name, obj in page if obj is None],
                           [ObjectInfo(name, len(obj.data), obj.mtime_ns, obj.etag)
                            for name, obj in page if obj is not None])
            if not more:
                return
            marker = _order(page[-1][0])

    @staticmethod
    def _entries(objects: dict[str, _Object], prefix: str, delimiter: str
                 ) -> list[tuple[str, _Object | None]]:
        """(key, object) and (common prefix, None) below `prefix`, in S3's order."""
        entries: list[tuple[str, _Object | None]] = []
        for key in sorted((k for k in objects if k.startswith(prefix)), key=_order):
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                if not entries or entries[-1][0] != common:
                    entries.append((common, None))
            else:
                entries.append((key, objects[key]))
        return entries

    def head(self, bucket: str, key: str) -> ObjectInfo:
        what = self._begin("HeadObject", bucket, key)
        with self._lock:
            obj = self._object(bucket, key, what)
        self._done()
        return ObjectInfo(key, len(obj.data), obj.mtime_ns, obj.etag, dict(obj.metadata),
                          obj.content_type)

    def head_many(self, bucket: str, keys: Sequence[str], answered: HeadsAnswered) -> None:
        """head() of each key; with a `latency`, all in flight together (as S3Store's
        pipelined HEADs are), answered as each lands."""
        if not self.latency or len(keys) < 2:
            head_one_by_one(self, bucket, keys, answered)
            return
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            for key in keys:
                pool.submit(head_one_by_one, self, bucket, [key], answered)

    def get_whole(self, bucket: str, key: str, etag: str, limit: int) -> tuple[ObjectInfo, bytes]:
        what = self._begin("GetObject", bucket, key)
        with self._lock:
            obj = self._object(bucket, key, what)
        if etag and obj.etag != etag:
            raise self._stale(what)
        if len(obj.data) > limit:
            raise RemoteError(f"{what}: more than {limit} bytes")
        self._done()
        return (ObjectInfo(key, len(obj.data), obj.mtime_ns, obj.etag, dict(obj.metadata),
                           obj.content_type), obj.data)

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None) -> bytes:
        what = self._begin("GetObject", bucket, key)
        with self._lock:
            obj = self._object(bucket, key, what)
        if etag and obj.etag != etag:
            raise self._stale(what)
        if (start or end is not None) and start >= len(obj.data):
            raise tagged(RemoteError(f"{what}: S3 error 416"), "InvalidRange", 416)
        self._done()
        return obj.data[start:end]

    def iter_chunks(self, bucket: str, key: str, etag: str, size: int, chunk: int) -> Iterator[bytes]:
        for start in range(0, size, chunk):
            yield self.get(bucket, key, etag, start, min(start + chunk, size))

    # ------------------------------------------------------------ Store: writes

    def put_object(self, bucket: str, key: str, body: bytes | BinaryIO, *,
                   content_type: str | None = None, if_match: str | None = None,
                   if_none_match: str | None = None,
                   metadata: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> str:
        what = self._begin("PutObject", bucket, key)
        data = body if isinstance(body, bytes) else body.read()
        with self._lock:
            self._check(what, self._bucket(bucket, what).get(key), if_match, if_none_match)
            etag = self._store(bucket, key, data, _md5(data).hexdigest(), content_type, metadata,
                               headers)
        self._done()
        return etag

    def create_multipart_upload(self, bucket: str, key: str, *,
                                content_type: str | None = None,
                                metadata: Mapping[str, str] | None = None,
                                headers: Mapping[str, str] | None = None) -> str:
        what = self._begin("CreateMultipartUpload", bucket, key)
        with self._lock:
            self._bucket(bucket, what)
            upload_id = f"upload-{next(self._ids)}"
            self._uploads[bucket][upload_id] = _Upload(key, content_type or "binary/octet-stream",
                                                       dict(metadata or {}),
                                                       other_headers(headers))
        self._done()
        return upload_id

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int,
                    body: PartBody) -> str:
        what = self._begin("UploadPart", bucket, key)
        data = body_bytes(body)
        etag = _md5(data).hexdigest()
        with self._lock:
            self._upload(bucket, upload_id, what).parts[part_number] = (data, etag)
        self._done()
        return etag

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                  part_etags: list[str], *, if_match: str | None = None,
                                  if_none_match: str | None = None) -> str:
        what = self._begin("CompleteMultipartUpload", bucket, key)
        with self._lock:
            upload = self._upload(bucket, upload_id, what)
            chunks = []
            for number, etag in enumerate(part_etags, 1):
                data, stored = upload.parts.get(number, (b"", ""))
                if stored != clean_etag(etag):
                    raise tagged(RemoteError(f"{what}: S3 error InvalidPart"), "InvalidPart", 400)
                if number < len(part_etags) and len(data) < self.min_part_size:
                    raise tagged(RemoteError(f"{what}: S3 error EntityTooSmall"),
                                 "EntityTooSmall", 400)
                chunks.append(data)
            self._check(what, self._buckets[bucket].get(key), if_match, if_none_match)
            digests = b"".join(_md5(data).digest() for data in chunks)
            etag = self._store(bucket, key, b"".join(chunks),
                               f"{_md5(digests).hexdigest()}-{len(chunks)}", upload.content_type,
                               upload.metadata, upload.headers)
            del self._uploads[bucket][upload_id]
        self._done()
        return etag

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._begin("AbortMultipartUpload", bucket, key)
        with self._lock:
            self._uploads.get(bucket, {}).pop(upload_id, None)  # already gone is fine
        self._done()

    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> list[tuple[str, str]]:
        what = self._begin("ListMultipartUploads", bucket, prefix)
        with self._lock:
            self._bucket(bucket, what)
            uploads = [(u.key, upload_id) for upload_id, u in self._uploads[bucket].items()
                       if u.key.startswith(prefix)]
        self._done()
        return sorted(uploads, key=lambda u: (_order(u[0]), int(u[1].rpartition("-")[2])))

    def copy_object(self, bucket: str, source_key: str, key: str, etag: str, *,
                    metadata: Mapping[str, str] | None = None,
                    content_type: str | None = None, size: int = 0,
                    trust_condition: bool = False) -> str:
        """One request whatever the size (the multipart path of a real store is not modelled:
        its outcome is the same object). The new ETag is the MD5 of the bytes, as S3's for a
        copy: a metadata change of a single-part object keeps its ETag."""
        what = self._begin("CopyObject", bucket, f"{source_key} -> {key}")
        with self._lock:
            source = self._object(bucket, source_key, what)
            if self.conditions != "ignore" and source.etag != clean_etag(etag):
                raise self._stale(what)
            new_etag = self._store(
                bucket, key, source.data, _md5(source.data).hexdigest(),
                source.content_type if metadata is None or content_type is None else content_type,
                source.metadata if metadata is None else metadata, source.headers)
        self._done()
        return new_etag

    def delete_object(self, bucket: str, key: str, *, if_match: str | None = None) -> None:
        what = self._begin("DeleteObject", bucket, key)
        with self._lock:
            objects = self._buckets.get(bucket, {})
            current = objects.get(key)
            if current is not None:  # already gone (or its bucket) is fine
                self._check(what, current, if_match, None)
            objects.pop(key, None)
        self._done()
