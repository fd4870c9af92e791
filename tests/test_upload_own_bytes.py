"""A retried upload recognises its own earlier upload, also where S3's ETag is not the MD5
of the bytes (SSE-KMS on AWS): no conflict copy nobody caused. And a conflict copy whose
answer was lost is recognised under its name instead of trying `-2` ... `-10` and then
failing for good. Over the in-memory store, with AWS's SSE-KMS ETags and lost answers."""
from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trio

from s3fuse.errors import RemoteError
from s3fuse.posix import Posix, to_headers
from s3fuse.store.memory import MemoryStore
from s3fuse.store.retry import tagged
from s3fuse.upload import Uploader
from s3fuse.upload.journal import Expected
from tests.test_upload import upload_queue

B = "bucket"
SEC = 1_000_000_000


class KmsStore(MemoryStore):
    """S3 with SSE-KMS: ETags are not the MD5 of the bytes. The first PutObject of each key
    in `lose` is stored, but its answer is lost (a reset after S3 stored it)."""

    def __init__(self, lose: set[str] = frozenset(), **options: Any):  # type: ignore[assignment]
        super().__init__(**options)
        self.lose = set(lose)

    def _store(self, bucket: str, key: str, data: bytes, etag: str, *args: Any,
               **kwargs: Any) -> str:
        kms = hashlib.md5(b"kms" + etag.encode(), usedforsecurity=False).hexdigest()
        return super()._store(bucket, key, data, kms, *args, **kwargs)

    def put_object(self, bucket: str, key: str, body: bytes | BinaryIO, **kwargs: Any) -> str:
        etag = super().put_object(bucket, key, body, **kwargs)
        if key in self.lose:
            self.lose.discard(key)
            raise tagged(RemoteError(f"PutObject s3://{bucket}/{key}: connection reset"), "", 0)
        return etag


def meta(ctime_ns: int) -> Posix:
    return Posix(mode=stat.S_IFREG | 0o644, uid=1000, gid=1000, mtime_ns=ctime_ns,
                 ctime_ns=ctime_ns, atime_ns=ctime_ns)


async def upload(store: MemoryStore, tmp_path: Path, key: str, data: bytes,
                 expected: Expected, posix: Posix | None, **options: Any) -> dict[str, Any]:
    async with upload_queue(tmp_path, store, **options) as queue:
        staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
        await trio.to_thread.run_sync(path.write_bytes, data)
        await queue.submit(B, key, staging_id, expected, posix)
        return await queue.sync(timeout=10)


@pytest.mark.parametrize("posix", [meta(1_700_000_000 * SEC + 123_456_789), None],
                         ids=["by-metadata", "by-bytes"])
async def test_a_lost_answer_under_sse_kms_is_no_conflict(tmp_path: Path,
                                                          posix: Posix | None) -> None:
    store = KmsStore(lose={"results.csv"})
    store.create_bucket(B)
    status = await upload(store, tmp_path, "results.csv", b"results of job 42\n", None, posix)
    assert status["files"] == 0 and status["failures"] == [] and status["conflicts"] == []
    assert store.objects(B) == {"results.csv": b"results of job 42\n"}


async def test_a_lost_multipart_answer_under_sse_kms_is_no_conflict(tmp_path: Path) -> None:
    """The retry's HEAD check (multipart uploads check before sending) finds our version."""
    class LoseComplete(KmsStore):
        lost = False

        def complete_multipart_upload(self, *args: Any, **kwargs: Any) -> str:
            etag = super().complete_multipart_upload(*args, **kwargs)
            if not self.lost:
                self.lost = True
                raise tagged(RemoteError("CompleteMultipartUpload: connection reset"), "", 0)
            return etag

    store = LoseComplete(min_part_size=1 << 20)
    store.create_bucket(B)
    data = b"z" * (3 << 20)
    status = await upload(store, tmp_path, "big.bin", data, None, meta(1_700_000_001 * SEC),
                          uploader=lambda s, j, st: Uploader(s, j, st, threshold=1 << 20,
                                                             part_size=1 << 20))
    assert status["failures"] == [] and status["conflicts"] == []
    assert store.objects(B) == {"big.bin": data}


async def test_another_version_with_the_same_size_is_still_a_conflict(tmp_path: Path) -> None:
    """Same size, metadata of another version (another ctime): not ours, a conflict copy."""
    store = KmsStore()
    store.create_bucket(B)
    store.replace(B, "doc.txt", b"theirs", metadata=to_headers(meta(1_600_000_000 * SEC)))
    status = await upload(store, tmp_path, "doc.txt", b"mine!!", None, meta(1_700_000_000 * SEC))
    assert [c["kind"] for c in status["conflicts"]] == ["copy"]
    objects = store.objects(B)
    assert objects.pop("doc.txt") == b"theirs"
    assert list(objects.values()) == [b"mine!!"]


@pytest.mark.parametrize("kms", [False, True], ids=["md5-etags", "sse-kms"])
async def test_a_conflict_copy_whose_answer_was_lost_is_recognised(tmp_path: Path,
                                                                   kms: bool) -> None:
    """The conflict copy lands, its answer is lost: its retry finds our bytes under the
    same name (the job's close time names it) instead of a second copy, or `-2` ... `-10`
    and "no free conflict name" for ever."""
    class Lose(KmsStore if kms else MemoryStore):  # type: ignore[misc]
        lost = False

        def put_object(self, bucket: str, key: str, body: Any, **kwargs: Any) -> str:
            etag = super().put_object(bucket, key, body, **kwargs)
            if ".s3fuse-conflict-" in key and not self.lost:
                self.lost = True
                raise tagged(RemoteError(f"PutObject {key}: connection reset"), "", 0)
            return etag

    store = Lose()
    store.create_bucket(B)
    store.replace(B, "doc.txt", b"theirs")
    status = await upload(store, tmp_path, "doc.txt", b"mine", None, meta(1_700_000_000 * SEC))
    assert status["failures"] == [] and [c["kind"] for c in status["conflicts"]] == ["copy"]
    objects = store.objects(B)
    assert objects.pop("doc.txt") == b"theirs"
    assert list(objects.values()) == [b"mine"]  # one copy, not two
    assert [c["conflict_uri"] for c in status["conflicts"]] == [f"s3://{B}/{k}" for k in objects]
