"""Upload one journalled staging file to S3: blocking, run in a worker thread.

- Up to MULTIPART_THRESHOLD bytes: one PutObject. Larger: a multipart upload with
  PART_SIZE parts (more when 10,000 parts would not do), PARALLEL_PARTS at a time,
  aborted on any failure; every upload is recorded in the journal before it is created,
  so a crash leaves nothing behind that the next attempt or start does not abort.
- SSE comes from the configuration (the store adds it); the content type is guessed
  from the key's name.
- Conflicts: the upload is conditional on what the writer saw at open (`If-Match` its
  ETag, `If-None-Match: *` for a new file). On 412 the local bytes are uploaded beside
  the key as `<key>.s3fuse-conflict-<UTC YYYYmmddTHHMMSSZ>` (never overwriting) and the
  key is left as it is. An object deleted since open (404 NoSuchKey from AWS and moto,
  412 from SeaweedFS: a HEAD tells) is written again. Before calling it a conflict, the
  object's ETag is compared with the local bytes' ETag: a replay of an upload that had
  finished before a crash is not a conflict.
- Servers without conditional writes (501 NotImplemented) get a HEAD check instead,
  from then on (a change between the HEAD and the write is then not detected).
  Multipart uploads always get the HEAD check first, so a conflict is found before the
  parts are sent (and on servers that accept If-Match on CompleteMultipartUpload but
  ignore it, like moto 5.2).

Errors are the store's (errors.py); store/retry.py's `is_permanent` tells which to retry.
`stopping` makes a running multipart upload give up between parts (Interrupted).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import mimetypes
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import NotFound, Offline, RemoteError, S3FuseError, StaleObject
from ..store import retry
from ..store.protocol import Store
from .journal import UNKNOWN, Expected, Job, Journal
from .staging import Staging

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 8 << 20
PART_SIZE = 8 << 20
PARALLEL_PARTS = 4
MAX_PARTS = 10_000
CONFLICT_NAMES = 10
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                   "xz": "application/x-xz", "br": "application/x-brotli"}


class Interrupted(Exception):
    """The uploader is stopping: the job was not finished and stays queued."""


@dataclass(frozen=True, slots=True)
class UploadResult:
    etag: str
    conflict_key: str | None = None  # where the bytes went when the key had changed in S3
    size: int | None = None  # of the uploaded version (set by the queue for its listeners)


def _md5(data: bytes = b"") -> hashlib._Hash:
    return hashlib.md5(data, usedforsecurity=False)  # S3's ETag, not security


def content_type(key: str) -> str:
    """From the name; compressed files are their compression (not the inner type)."""
    guessed, encoding = mimetypes.guess_type(key, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding, "application/octet-stream")
    return guessed or "application/octet-stream"


def conflict_name(key: str, when: float | None = None) -> str:
    return f"{key}.s3fuse-conflict-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}"


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
        self.conditional = True  # False once the server answered a conditional write with 501

    def upload(self, job: Job) -> UploadResult:
        if job.op == "delete":
            self.store.delete_object(job.bucket, job.key)
            return UploadResult("")
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
                return UploadResult(self._send(job.bucket, job.key, path, expected, ctype))
            except StaleObject:
                remote = self._remote_etag(job.bucket, job.key)
            if remote is None and isinstance(expected, str):
                log.info("%s was deleted in S3 since it was opened: writing it again", job.uri)
                expected = None
                continue
            if remote is not None and remote == self.local_etag(path):
                log.info("%s already holds these bytes (an upload finished before a restart)",
                         job.uri)
                return UploadResult(remote)
            return self._conflict_copy(job, path, ctype)

    def _conflict_copy(self, job: Job, path: Path, ctype: str) -> UploadResult:
        base = conflict_name(job.key)
        for n in range(1, CONFLICT_NAMES + 1):
            key = base if n == 1 else f"{base}-{n}"
            try:
                etag = self._send(job.bucket, key, path, None, ctype)
            except StaleObject:
                continue
            log.warning("%s changed in S3 since it was opened for writing: the local version "
                        "was uploaded as s3://%s/%s", job.uri, job.bucket, key)
            return UploadResult(etag, key)
        raise StaleObject(f"{job.uri}: changed in S3 and no free conflict name")

    # ------------------------------------------------------------ sending

    def _send(self, bucket: str, key: str, path: Path, expected: Expected, ctype: str) -> str:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if expected is not UNKNOWN and (size > self.threshold or not self.conditional):
                self._precheck(bucket, key, expected)
            try:
                if size <= self.threshold:
                    return self._put(bucket, key, fh, expected, ctype)
                return self._multipart(bucket, key, fh.fileno(), size, expected, ctype)
            except NotFound as exc:  # AWS and moto answer If-Match on a missing key with 404
                if isinstance(expected, str) and retry.error_code(exc)[0] == "NoSuchKey":
                    raise StaleObject(f"s3://{bucket}/{key}: deleted since it was opened") from None
                raise

    def _put(self, bucket: str, key: str, fh: BinaryIO, expected: Expected, ctype: str) -> str:
        def put(**conditions: str) -> str:
            fh.seek(0)
            return self.store.put_object(bucket, key, fh, content_type=ctype, **conditions)
        return self._conditional(put, bucket, key, expected)

    def _multipart(self, bucket: str, key: str, fd: int, size: int, expected: Expected,
                   ctype: str) -> str:
        record = self.journal.multipart_begin(bucket, key)
        upload_id = self.store.create_multipart_upload(bucket, key, content_type=ctype)
        self.journal.multipart_created(record, upload_id)
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
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise OSError(f"staging file of s3://{bucket}/{key} shrank during its upload")
            return self.store.upload_part(bucket, key, upload_id, number, data)

        with concurrent.futures.ThreadPoolExecutor(self.parallel_parts,
                                                   thread_name_prefix="s3fuse-part") as pool:
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

    def abort_leftovers(self, bucket: str, key: str, *, thorough: bool = False) -> None:
        """Abort the multipart uploads the journal holds for a key (from failed attempts or a
        crash); ones whose UploadId never arrived, and with `thorough` every one S3 lists for
        the key, are found by listing."""
        records = self.journal.multiparts(bucket, key)
        if not records:
            return
        upload_ids = {upload_id for _, upload_id in records if upload_id}
        if thorough or len(upload_ids) < len(records):
            try:
                upload_ids |= {u for k, u in self.store.list_multipart_uploads(bucket, key) if k == key}
            except NotFound:  # the bucket is gone, and its uploads with it
                pass
        for upload_id in upload_ids:
            self.store.abort_multipart_upload(bucket, key, upload_id)
            log.info("aborted a multipart upload left at s3://%s/%s", bucket, key)
        for record, _ in records:
            self.journal.multipart_end(record)

    # ------------------------------------------------------------ conditions

    def _conditional(self, send: Callable[..., str], bucket: str, key: str,
                     expected: Expected) -> str:
        """send(**conditions); when the server cannot do conditional writes, a HEAD check
        and an unconditional send instead (and from then on)."""
        conditions: dict[str, str] = {}
        if self.conditional and isinstance(expected, str):
            conditions["if_match"] = expected
        elif self.conditional and expected is None:
            conditions["if_none_match"] = "*"
        try:
            return send(**conditions)
        except RemoteError as exc:
            code, status = retry.error_code(exc)
            if not conditions or (code != "NotImplemented" and status != 501):
                raise
        if self.conditional:
            self.conditional = False
            log.warning("the S3 server does not support conditional writes (%s): checking "
                        "with HEAD before each upload instead", code or status)
        self._precheck(bucket, key, expected)
        return send()

    def _precheck(self, bucket: str, key: str, expected: Expected) -> None:
        """HEAD: StaleObject when the object is not what the writer saw."""
        if self._remote_etag(bucket, key) != expected and expected is not UNKNOWN:
            raise StaleObject(f"s3://{bucket}/{key}: changed in S3 since it was opened")

    def _remote_etag(self, bucket: str, key: str) -> str | None:
        try:
            return self.store.head(bucket, key).etag
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
