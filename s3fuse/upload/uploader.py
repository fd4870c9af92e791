"""Upload one journalled staging file to S3: blocking, run in a worker thread.

- Up to MULTIPART_THRESHOLD bytes: one PutObject. Larger: a multipart upload with
  PART_SIZE parts (more when 10,000 parts would not do), PARALLEL_PARTS at a time, each
  streamed from the staging file (util/filerange.py, not read into memory first),
  aborted on any failure; every upload is recorded in the journal before it is created
  and its UploadId as soon as it arrives. Only recorded UploadIds are aborted, never
  whatever S3 lists for the key (another client may be uploading it): an upload whose id
  a crash lost is left to the bucket's lifecycle rule (AbortIncompleteMultipartUpload).
- SSE comes from the configuration (the store adds it). A new file's content type is
  guessed from its name; a new version of an object keeps the content type, other
  headers and other tools' user metadata of the version it replaces (headers.py).
- Conflicts: the upload is conditional on what the writer saw at open (`If-Match` its
  ETag, `If-None-Match: *` for a new file). On 412 the local bytes are uploaded beside
  the key as `<key>.s3fuse-conflict-<UTC YYYYmmddTHHMMSSZ>` (never overwriting) and the
  key is left as it is. An object deleted since open (404 NoSuchKey from AWS and moto,
  412 from SeaweedFS: a HEAD tells) is written again. Before calling it a conflict, the
  object is compared with the local version (`holds_ours`: its ETag with the bytes' MD5,
  else, as under SSE-KMS, the size and the POSIX metadata this upload wrote, ctime to
  the nanosecond): a replay of an upload that had finished before a crash, or whose
  answer was lost, is not a conflict. Nor is a conflict name holding our own bytes: the
  copy landed, its answer was lost (the names come from the job's close time, so a
  retry tries the same ones). A refusal where S3 holds nothing to keep (no
  object, or a `dir/` marker that is an empty object without metadata: SeaweedFS's
  leftovers of a removed or child-made directory, which refuse every condition) is not a
  conflict either: the HEAD that found it stands in for the condition.
- Removals are conditional too (DeleteObject If-Match the ETag the user saw): when the
  key holds another version, the newer remote version wins: the removal is dropped,
  logged and recorded (`kept_remote`, shown by `s3fuse status`). A key already gone is
  fine. A removal of a key that did not exist for us (a new file never uploaded) sends
  nothing.
- POSIX metadata (posix.py) goes with the bytes: a put or multipart upload stores the
  row's metadata as user metadata (s3fs's headers). A metadata change of an object in S3
  (op 'meta') is a copy onto itself replacing its metadata (content type kept), on the
  condition CopySourceIfMatch the row's ETag (UNKNOWN: a HEAD gives it). A 412 or 404
  means the key changed or went since the change was made: the remote version wins, the
  change is dropped and recorded (`kept_remote`). A replay of a copy that landed before
  a crash is recognised by the metadata S3 holds (a copy of a multipart object changes
  its ETag, so the condition alone would call it a conflict).
- Servers that ignore or refuse conditions (conditions.py probes each bucket once, before
  its first conditional request; a later 501 counts too) get a HEAD check instead (a
  change between the HEAD and the request is then not detected).
  Multipart uploads always get the HEAD check first, so a conflict is found before the
  parts are sent (and on servers that accept If-Match on CompleteMultipartUpload but
  ignore it, like moto 5.2).

Errors are the store's (errors.py); store/retry.py's `is_permanent` tells which to retry.
An OSError is the staging file's (the queue does not retry it).
`stopping` makes a running multipart upload give up between parts (Interrupted).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import NotFound, Offline, RemoteError, S3FuseError, StaleObject
from ..names import MAX_KEY_BYTES, MAX_NAME_BYTES
from ..posix import Posix, from_headers, to_headers
from ..store import retry
from ..store.protocol import ObjectInfo, Store
from ..util.daemonpool import DaemonPool
from ..util.filerange import FileRange
from .conditions import ConditionProbe
from .headers import Extra, carried, content_type, extra
from .journal import UNKNOWN, Expected, Job, Journal
from .staging import Staging

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 8 << 20
PART_SIZE = 8 << 20
PARALLEL_PARTS = 4
MAX_PARTS = 10_000
CONFLICT_NAMES = 10


class Interrupted(Exception):
    """The uploader is stopping: the job was not finished and stays queued."""


@dataclass(frozen=True, slots=True)
class UploadResult:
    etag: str
    conflict_key: str | None = None  # where the bytes went when the key had changed in S3
    size: int | None = None  # of the uploaded version (set by the queue for its listeners)
    kept_remote: bool = False  # a removal or metadata change dropped: the key holds a
    #                            newer version (`etag`; "" when the key is gone)
    posix: Posix | None = None  # the metadata stored (set by the queue for its listeners)


def _md5(data: bytes = b"") -> hashlib._Hash:
    return hashlib.md5(data, usedforsecurity=False)  # S3's ETag, not security


def conflict_name(key: str, when: float | None = None) -> str:
    """Where the local version of `key` goes when S3's changed meanwhile:
    `<key>.s3fuse-conflict-<UTC time>`. A name that would pass 255 bytes (a path
    component: the mount hid the copy) or a key that would pass S3's 1,024 (refused: the
    upload failed for good) is cut to fit, with a hash of the whole key to tell it from
    other cut names."""
    suffix = f".s3fuse-conflict-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}"
    taken = len(f"-{CONFLICT_NAMES}")  # room for the `-2`... of a name taken
    head, slash, name = key.rpartition("/")
    raw = name.encode("utf-8", "surrogateescape")
    room = min(MAX_NAME_BYTES,
               MAX_KEY_BYTES - len((head + slash).encode("utf-8", "surrogateescape")))
    if len(raw) + len(suffix) + taken <= room:
        return key + suffix
    tag = "~" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    keep = max(0, room - len(suffix) - len(tag) - taken)
    cut = raw[:keep].decode("utf-8", "ignore")  # whole characters only
    return f"{head}{slash}{cut}{tag}{suffix}"


class Uploader:
    def __init__(self, store: Store, journal: Journal, staging: Staging, *,
                 threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE,
                 parallel_parts: int = PARALLEL_PARTS):
        self.store = store
        self.journal = journal
        self.staging = staging
        self.threshold = threshold
        self.part_size = part_size
        self.parallel_parts = parallel_parts
        self.stopping = threading.Event()
        self.conditions = ConditionProbe(store, journal)
        self._no_marker_copies: set[str] = set()  # buckets whose server copies no `dir/` key

    def upload(self, job: Job) -> UploadResult:
        if job.op == "delete":
            return self._delete(job)
        if job.op == "meta":
            return self._change_metadata(job)
        path = self.staging.path(job.staging_id)
        try:
            self.abort_leftovers(job.bucket, job.key)
        except Offline:
            raise
        except S3FuseError as exc:  # never a reason not to upload
            log.info("multipart uploads left at %s not aborted: %s", job.uri, exc)
        ctype = content_type(job.key)
        expected = job.expected
        while True:
            try:
                return UploadResult(self._send(job.bucket, job.key, path, expected, ctype,
                                               job.meta))
            except StaleObject:
                info = self._remote(job.bucket, job.key)
            if info is None and isinstance(expected, str):
                log.info("%s was deleted in S3 since it was opened: writing it again", job.uri)
                expected = None
                continue
            if info is None or (job.key.endswith("/") and _carries_nothing(info)):
                # refused although nothing (to keep) is there: SeaweedFS keeps a removed
                # directory a while when its marker went before its last child, and refuses
                # If-None-Match on its name; the HEAD just made stands in for the condition
                log.debug("%s: refused, but S3 holds nothing to keep there: sent without the "
                          "condition", job.uri)
                expected = UNKNOWN
                continue
            if self.holds_ours(job, path, job.key, info):
                log.info("%s already holds these bytes (an upload whose answer was lost, or "
                         "that finished before a restart)", job.uri)
                return UploadResult(info.etag)
            return self._conflict_copy(job, path, ctype)

    def _conflict_copy(self, job: Job, path: Path, ctype: str) -> UploadResult:
        """The local bytes beside the key, under the first free conflict name. The names
        come from the job's close time, so a retry (a lost answer, a restart) tries the
        same ones, and a name holding this job's own bytes is its copy, done."""
        base = conflict_name(job.key, job.created)
        for n in range(1, CONFLICT_NAMES + 1):
            key = base if n == 1 else f"{base}-{n}"
            try:
                etag = self._send(job.bucket, key, path, None, ctype, job.meta)
            except StaleObject:
                info = self._remote(job.bucket, key)
                try:
                    ours = info is not None and self.holds_ours(job, path, key, info)
                except (StaleObject, NotFound):  # that name changed or went while compared
                    ours = False
                if not ours or info is None:
                    continue
                etag = info.etag  # our own copy, from an attempt whose answer was lost
            log.warning("%s changed in S3 since it was opened for writing: the local version "
                        "was uploaded as s3://%s/%s", job.uri, job.bucket, key)
            return UploadResult(etag, key)
        raise StaleObject(f"{job.uri}: changed in S3 and no free conflict name")

    def holds_ours(self, job: Job, path: Path, key: str, info: ObjectInfo) -> bool:
        """Is `info` (a HEAD of `key`) this job's own earlier upload, whose answer was lost?

        The ETag is the MD5 of the bytes only where S3 stores them plain: under SSE-KMS
        (and on servers with ETags of their own) it never is. Then the POSIX metadata this
        upload wrote tells, with the size: it holds the ctime of the version's last write
        to the nanosecond, which no other version (nor another writer) carries. Without
        such metadata, the bytes themselves are compared (a GET, on this rare path only)."""
        size = path.stat().st_size
        if info.size != size:
            return False
        if info.etag == self.local_etag(path):
            return True
        if job.meta is not None and job.meta.ctime_ns is not None:
            is_dir = key.endswith("/")
            return from_headers(info.metadata or {}, is_dir=is_dir) == \
                from_headers(to_headers(job.meta), is_dir=is_dir)
        return self._same_bytes(job.bucket, key, info, path)

    def _same_bytes(self, bucket: str, key: str, info: ObjectInfo, path: Path) -> bool:
        """Does S3's version `info` of `key` hold the bytes of `path` (read in parts)?"""
        with open(path, "rb") as fh:
            for chunk in self.store.iter_chunks(bucket, key, info.etag, info.size, self.part_size):
                if fh.read(len(chunk)) != chunk:
                    return False
        return True

    # ------------------------------------------------------------ removing

    def _delete(self, job: Job) -> UploadResult:
        """DeleteObject If-Match the ETag the user saw (or a HEAD check where the server
        does not honour it); a newer remote version is kept (see the module docstring)."""
        bucket, key, expected = job.bucket, job.key, job.expected
        if expected is None:  # a new file never uploaded: nothing of ours is there
            log.debug("%s: removed before its upload, nothing to delete", job.uri)
            return UploadResult("")
        if not isinstance(expected, str):
            self.store.delete_object(bucket, key)
            return UploadResult("")
        if self.conditions.of(bucket, key).delete:
            try:
                self.store.delete_object(bucket, key, if_match=expected)
                return UploadResult("")
            except StaleObject:
                pass
            except RemoteError as exc:
                if not _refused(exc):
                    raise
                self.conditions.lacks(bucket, delete=True)
        info = self._remote(bucket, key)
        if info is None:  # already gone: what the user wanted
            return UploadResult("")
        remote = info.etag
        if remote != expected and not (key.endswith("/") and _carries_nothing(info)):
            log.warning("%s changed in S3 since it was removed here: the newer version was "
                        "kept (ETag %s, removed %s)", job.uri, remote, expected)
            return UploadResult(remote, kept_remote=True)
        self.store.delete_object(bucket, key)  # checked by HEAD (the server ignores If-Match,
        return UploadResult("")                # or the marker holds nothing to keep)

    # ------------------------------------------------------------ metadata changes

    def _change_metadata(self, job: Job) -> UploadResult:
        """CopyObject of the key onto itself with the row's metadata (REPLACE), if it still
        holds the version the change was made on (see the module docstring). The copy
        keeps what else the object holds: its bytes, content type, other headers and other
        tools' user metadata; an empty object (a `dir/` marker, a fifo, an empty file) too:
        a PUT of an empty body dropped them, and the bytes of a marker that had some. A
        marker on a server that will not copy one (SeaweedFS answers NoSuchKey, and keeps
        no other metadata on it) is PUT again, checked by a HEAD."""
        bucket, key, expected = job.bucket, job.key, job.expected
        headers = to_headers(job.meta or Posix())
        if expected is None:  # made on a version removed since (by this mount): nothing left
            log.debug("%s: removed before its metadata change was sent", job.uri)
            return UploadResult("")
        if not isinstance(expected, str):
            expected = self._remote_etag(bucket, key)
            if expected is None:
                return self._metadata_dropped(job, None)
        marker = key.endswith("/")
        try:
            if marker and bucket in self._no_marker_copies:
                return self._put_marker(job, expected, headers)
            trusted = self.conditions.of(bucket, key).copy  # then no HEAD (copysources.py)
            return UploadResult(self.store.copy_object(bucket, key, key, expected,
                                                       metadata=headers, size=job.size,
                                                       trust_condition=trusted))
        except (StaleObject, NotFound):
            pass
        try:
            info = self.store.head(bucket, key)
        except NotFound:
            return self._metadata_dropped(job, None)
        if from_headers(info.metadata or {}, is_dir=marker) == from_headers(headers, is_dir=marker):
            log.info("%s already holds this metadata (a copy whose answer was lost, or that "
                     "finished before a restart)", job.uri)
            return UploadResult(info.etag)
        if marker and info.size == 0 and info.etag == expected:  # refused, not changed
            log.info("s3://%s: the server copies no directory marker: their metadata "
                     "changes are PUT again", bucket)
            self._no_marker_copies.add(bucket)
            return self._put_marker(job, expected, headers)
        if job.size == 0 and _carries_nothing(info):  # checked by the HEAD just made
            log.debug("%s: an empty version without metadata took its place: ours goes over it",
                      job.uri)
            return UploadResult(self._put(bucket, key, io.BytesIO(b""), UNKNOWN,
                                          content_type(key), extra(headers)))
        return self._metadata_dropped(job, info.etag)

    def _put_marker(self, job: Job, expected: str, headers: dict[str, str]) -> UploadResult:
        """A marker's new metadata as a PUT of it again, on the condition `expected`."""
        bucket, key = job.bucket, job.key
        if not self.conditions.of(bucket, key).put:
            self._precheck(bucket, key, expected)
        return UploadResult(self._put(bucket, key, io.BytesIO(b""), expected,
                                      content_type(key), extra(headers)))

    @staticmethod
    def _metadata_dropped(job: Job, remote: str | None) -> UploadResult:
        log.warning("%s changed in S3 since its metadata was changed here: the change was "
                    "dropped and the remote version kept (%s)", job.uri,
                    f"ETag {remote}" if remote else "the key is gone")
        return UploadResult(remote or "", kept_remote=True)

    # ------------------------------------------------------------ sending

    def _send(self, bucket: str, key: str, path: Path, expected: Expected, ctype: str,
              meta: Posix | None = None) -> str:
        posix = {} if meta is None else to_headers(meta)
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if expected is not UNKNOWN and (size > self.threshold
                                            or not self.conditions.of(bucket, key).put):
                self._precheck(bucket, key, expected)  # its HEAD tells carried() the headers
            metadata = extra(posix)
            if isinstance(expected, str):  # a new version: what the replaced one held stays
                kept_type, metadata = carried(self.store, bucket, key, expected, posix)
                ctype = kept_type or ctype
            try:
                if size <= self.threshold:
                    return self._put(bucket, key, fh, expected, ctype, metadata)
                return self._multipart(bucket, key, fh.fileno(), size, expected, ctype, metadata)
            except NotFound as exc:  # AWS and moto answer If-Match on a missing key with 404
                if isinstance(expected, str) and retry.error_code(exc)[0] == "NoSuchKey":
                    raise StaleObject(f"s3://{bucket}/{key}: deleted since it was opened") from None
                raise

    def _put(self, bucket: str, key: str, fh: BinaryIO, expected: Expected, ctype: str,
             metadata: Extra) -> str:
        def put(**conditions: str) -> str:
            fh.seek(0)
            return self.store.put_object(bucket, key, fh, content_type=ctype, **metadata,
                                         **conditions)
        return self._conditional(put, bucket, key, expected)

    def _multipart(self, bucket: str, key: str, fd: int, size: int, expected: Expected,
                   ctype: str, metadata: Extra) -> str:
        record = self.journal.multipart_begin(bucket, key)
        upload_id = self.store.create_multipart_upload(bucket, key, content_type=ctype,
                                                       **metadata)
        self.journal.multipart_created(record, upload_id)
        if expected is not UNKNOWN:  # the completion is conditional: its answer, meanwhile
            self.conditions.probe_ahead(bucket, key)
        try:
            etags = self._parts(bucket, key, upload_id, fd, size)
            etag = self._conditional(
                lambda **conditions: self.store.complete_multipart_upload(
                    bucket, key, upload_id, etags, **conditions), bucket, key, expected)
        except BaseException:
            self._abort(record, bucket, key, upload_id)
            raise
        self.journal.multipart_end(record)
        return etag

    def _parts(self, bucket: str, key: str, upload_id: str, fd: int, size: int) -> list[str]:
        part_size = self.part_size_for(size)

        def send(number: int) -> str:
            if self.stopping.is_set():
                raise Interrupted(f"s3://{bucket}/{key}: stopping")
            offset = (number - 1) * part_size
            length = min(part_size, size - offset)
            return self.store.upload_part(bucket, key, upload_id, number,
                                          FileRange(fd, offset, length))

        with DaemonPool(self.parallel_parts, "s3fuse-part") as pool:  # never joined at exit
            futures = [pool.submit(send, n) for n in range(1, -(-size // part_size) + 1)]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in futures:
                future.cancel()  # parts not started yet; running ones finish before the exit
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]

    def part_size_for(self, size: int) -> int:
        """PART_SIZE, or whole MiBs large enough to stay within S3's 10,000 parts."""
        needed = -(-size // MAX_PARTS)
        return max(self.part_size, -(-needed // (1 << 20)) << 20)

    def _abort(self, record: int, bucket: str, key: str, upload_id: str) -> None:
        try:
            self.store.abort_multipart_upload(bucket, key, upload_id)
        except S3FuseError as exc:  # the journal keeps it: aborted by the next attempt or start
            log.info("multipart upload of s3://%s/%s not aborted yet: %s", bucket, key, exc)
            return
        self.journal.multipart_end(record)

    def abort_leftovers(self, bucket: str, key: str) -> None:
        """Abort the multipart uploads the journal holds for a key (from failed attempts or a
        crash), by their recorded UploadId only. A record whose UploadId never arrived is
        dropped: S3's list of the key's uploads cannot tell ours from another client's."""
        for record, upload_id in self.journal.multiparts(bucket, key):
            if upload_id is None:
                log.info("s3://%s/%s: a multipart upload may have been left by a crash before "
                         "its id was recorded; it is not aborted (it cannot be told from "
                         "another client's): a bucket lifecycle rule "
                         "(AbortIncompleteMultipartUpload) removes such uploads", bucket, key)
            else:
                self.store.abort_multipart_upload(bucket, key, upload_id)
                log.info("aborted a multipart upload left at s3://%s/%s", bucket, key)
            self.journal.multipart_end(record)

    # ------------------------------------------------------------ conditions

    def _conditional(self, send: Callable[..., str], bucket: str, key: str,
                     expected: Expected) -> str:
        """send(**conditions); when the server does not honour conditional writes, a HEAD
        check and an unconditional send instead (and from then on)."""
        conditions: dict[str, str] = {}
        if expected is not UNKNOWN and self.conditions.of(bucket, key).put:
            conditions = ({"if_match": expected} if isinstance(expected, str)
                          else {"if_none_match": "*"})
        try:
            return send(**conditions)
        except RemoteError as exc:
            if not conditions or not _refused(exc):
                raise
        self.conditions.lacks(bucket, put=True)
        self._precheck(bucket, key, expected)
        return send()

    def _precheck(self, bucket: str, key: str, expected: Expected) -> None:
        """HEAD: StaleObject when the object is not what the writer saw."""
        if self._remote_etag(bucket, key) != expected and expected is not UNKNOWN:
            raise StaleObject(f"s3://{bucket}/{key}: changed in S3 since it was opened")

    def _remote_etag(self, bucket: str, key: str) -> str | None:
        info = self._remote(bucket, key)
        return None if info is None else info.etag

    def _remote(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            return self.store.head(bucket, key)
        except NotFound:
            return None

    def local_etag(self, path: Path) -> str:
        """The ETag S3 gives these bytes when uploaded by us (MD5, or MD5 of part MD5s)."""
        size = path.stat().st_size
        if size <= self.threshold:
            with open(path, "rb") as fh:
                return hashlib.file_digest(fh, _md5).hexdigest()
        part_size = self.part_size_for(size)
        digests = _md5()
        with open(path, "rb") as fh:
            while chunk := fh.read(part_size):
                digests.update(_md5(chunk).digest())
        return f"{digests.hexdigest()}-{-(-size // part_size)}"


def _carries_nothing(info: ObjectInfo) -> bool:
    """An empty version without user metadata: replacing or removing it loses nothing.
    SeaweedFS shows a `dir/` marker as one (ETag `<md5 of nothing>-0`, refusing every
    If-Match) when a child's upload created the directory before or beside the marker's."""
    return info.size == 0 and not info.metadata


def _refused(exc: RemoteError) -> bool:
    """Did the server refuse a conditional request as not implemented (501)?"""
    code, status = retry.error_code(exc)
    return code == "NotImplemented" or status == 501
