"""The write-back engine over moto's HTTP server: uploads, SSE, crash replay, offline,
permanent failures, conflicts, superseded versions, failed multipart uploads."""
from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import trio
from botocore.exceptions import ClientError, EndpointConnectionError

from s3fuse.config import Config, KeyPair
from s3fuse.errors import RemoteError
from s3fuse.store import retry
from s3fuse.store import s3 as s3_store
from s3fuse.store.liveness import probe_while_offline
from s3fuse.store.s3 import S3Store
from s3fuse.upload import UNKNOWN, Journal, Staging, Uploader, UploadFailed, UploadQueue
from s3fuse.upload.burst import BurstGate
from s3fuse.upload.conditions import PROBE_PUTS
from s3fuse.upload.journal import Expected
from s3fuse.util.supervisor import Supervisor
from tests.conftest import Backend
from tests.support.proxy import CuttableProxy

MiB = 1 << 20


@pytest.fixture
def backend(moto_backend: Backend) -> Backend:
    """Upload tests inspect moto's records (SSE) and put the cuttable proxy in front of it."""
    return moto_backend


def make_store(tmp_path: Path, endpoint: str, **settings: Any) -> S3Store:
    keys = KeyPair("testing", "testing")
    return S3Store(Config(endpoint_url=endpoint, region="us-east-1", addressing_style="path",
                          read_keys=keys, write_keys=keys, cache_dir=tmp_path, **settings))


@pytest.fixture
def store(tmp_path: Path, moto_backend: Backend) -> S3Store:
    return make_store(tmp_path, moto_backend.endpoint)


def small_parts(store: S3Store, journal: Journal, staging: Staging) -> Uploader:
    """Multipart from 1 MiB with 5 MiB parts (S3's minimum): 6 MiB makes two parts."""
    return Uploader(store, journal, staging, threshold=MiB, part_size=5 * MiB)


@asynccontextmanager
async def upload_queue(cache: Path, store: S3Store, *, start: bool = True,
                       uploader: Callable[..., Uploader] | None = None,
                       **options: Any) -> AsyncIterator[UploadQueue]:
    journal = Journal(cache / "journal.sqlite")
    staging = Staging(cache / "staging")
    try:
        async with trio.open_nursery() as nursery:
            background = Supervisor()
            background.bind(nursery)
            nursery.start_soon(probe_while_offline, store, 0.1)  # as the daemon does
            queue = UploadQueue(store, journal, staging, background=background, retry_base=0.05,
                                uploader=uploader(store, journal, staging) if uploader else None,
                                **options)
            if start:
                await queue.start()
            yield queue
            await queue.stop()
            nursery.cancel_scope.cancel()
    finally:
        journal.close()


async def write(queue: UploadQueue, bucket: str, key: str, data: bytes,
                expected: Expected = UNKNOWN) -> int:
    staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
    await trio.to_thread.run_sync(path.write_bytes, data)
    return await queue.submit(bucket, key, staging_id, expected)


def counted_claims(queue: UploadQueue, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the workers' claims from now on (workers that ask over and over show)."""
    claim, claims = queue.journal.claim, [0]

    def counting(*args: Any) -> Any:
        claims[0] += 1
        return claim(*args)
    monkeypatch.setattr(queue.journal, "claim", counting)
    return lambda: claims[0]


def stalled_puts(store: S3Store, monkeypatch: pytest.MonkeyPatch
                 ) -> tuple[threading.Event, threading.Event]:
    """Every PutObject waits (at most 10 s) for `release`, once `started` tells one came."""
    started, release = threading.Event(), threading.Event()
    put = store.put_object

    def slow_put(*args: Any, **kwargs: Any) -> str:
        started.set()
        release.wait(10)
        return put(*args, **kwargs)
    monkeypatch.setattr(store, "put_object", slow_put)
    return started, release


async def until_retrying(queue: UploadQueue) -> list[dict[str, Any]]:
    """Wait until an upload failed and waits for its retry (woken by the queue's changes);
    returns the retrying uploads seen then (a second look may come after the retry)."""
    with trio.fail_after(10):
        while True:
            changed = queue.changed()  # before looking: a change meanwhile sets it
            retrying = (await trio.to_thread.run_sync(queue.status))["retrying"]
            if retrying:
                return retrying
            await changed.wait()


def body(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def open_uploads(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


async def test_small_and_multipart_uploads_are_byte_exact(tmp_path: Path, store: S3Store,
                                                          s3: Any, bucket: str):
    small, big = b"id,value\n1,2\n", os.urandom(17 * MiB + 5)
    async with upload_queue(tmp_path, store) as queue:
        small_job = await write(queue, bucket, "out/results.csv", small)
        big_job = await write(queue, bucket, "out/big.bin", big)
        assert queue.pending_version(bucket, "out/big.bin") is not None
        assert await queue.wait(small_job) and await queue.wait(big_job)
        status = await queue.sync()
    assert status["files"] == 0 and status["failures"] == [] and status["conflicts"] == []
    assert body(s3, bucket, "out/results.csv") == small and body(s3, bucket, "out/big.bin") == big
    head = s3.head_object(Bucket=bucket, Key="out/big.bin")
    assert head["ETag"].endswith('-3"')  # 8 MiB parts
    assert s3.head_object(Bucket=bucket, Key="out/results.csv")["ContentType"] == "text/csv"
    assert head["ContentType"] == "application/octet-stream"
    assert queue.pending_version(bucket, "out/big.bin") is None
    assert os.listdir(tmp_path / "staging") == [] and open_uploads(s3, bucket) == []
    assert store.request_counts()["UploadPart"] == 3


@pytest.mark.parametrize("sse, kms_key", [("AES256", None), ("aws:kms", "alias/s3fuse"),
                                          ("aws:kms:dsse", "dsse-key")])
async def test_sse_settings_reach_the_server(tmp_path: Path, moto_backend: Backend, s3: Any,
                                             bucket: str, sse: str, kms_key: str | None):
    store = make_store(tmp_path, moto_backend.endpoint, sse=sse, sse_kms_key_id=kms_key)
    async with upload_queue(tmp_path, store, uploader=small_parts) as queue:
        await write(queue, bucket, "small.json", b"{}")
        await write(queue, bucket, "multi.tar.gz", os.urandom(6 * MiB))
        await queue.sync()
    for key, ctype in (("small.json", "application/json"), ("multi.tar.gz", "application/gzip")):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == sse and head["ContentType"] == ctype
        if sse == "aws:kms":  # moto reports the key id for aws:kms only
            assert head["SSEKMSKeyId"] == kms_key


def recorded(fn: Callable[..., Any], step: str, order: list[str]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        order.append(step)
        return fn(*args, **kwargs)
    return call


async def test_journal_survives_a_crash(tmp_path: Path, store: S3Store, s3: Any, bucket: str,
                                        caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch):
    order: list[str] = []
    monkeypatch.setattr("s3fuse.upload.queue.FSYNC_AT_CLOSE", 5)
    async with upload_queue(tmp_path, store, start=False) as queue:  # workers never run
        for obj, name, step in ((queue.staging, "commit", "fsync staging"),
                                (queue.journal, "enqueue", "journal row")):
            monkeypatch.setattr(obj, name, recorded(getattr(obj, name), step, order))
        await write(queue, bucket, "a.txt", b"alpha")       # small: a CRC, fsynced later
        await write(queue, bucket, "b.txt", b"bravo-large")  # large: fsynced first
        assert queue.journal.claim(0) is not None  # as if its upload was running at the crash
        _, never_closed = await trio.to_thread.run_sync(queue.staging.create)
        never_closed.write_bytes(b"partial")  # a write never closed
    assert order == ["journal row", "fsync staging", "journal row"]
    assert keys(s3, bucket) == []

    async with upload_queue(tmp_path, store) as queue:  # the next mount
        assert (await queue.sync(timeout=10))["files"] == 0
    assert body(s3, bucket, "a.txt") == b"alpha" and body(s3, bucket, "b.txt") == b"bravo-large"
    assert os.listdir(tmp_path / "staging") == []
    assert "never closed" in caplog.text


async def test_small_files_are_fsynced_in_groups(tmp_path: Path, store: S3Store,
                                                 monkeypatch: pytest.MonkeyPatch):
    """Closing a small file costs no fsync; the sync pass fsyncs many at once and makes
    their journal rows durable (synced) in one commit."""
    fsyncs: list[str] = []
    async with upload_queue(tmp_path, store, start=False) as queue:
        monkeypatch.setattr(queue.staging, "fsync", recorded(queue.staging.fsync, "file", fsyncs))
        for n in range(5):
            await write(queue, "bucket", f"f{n}", b"x" * n)
        assert fsyncs == [] and len(queue.journal.unsynced()) == 5
        await queue.make_durable()
        assert fsyncs == ["file"] * 5 and queue.journal.unsynced() == []


async def test_power_loss_before_the_sync_pass_never_uploads_torn_bytes(
        tmp_path: Path, store: S3Store, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture):
    async with upload_queue(tmp_path, store, start=False) as queue:
        await write(queue, bucket, "intact.txt", b"intact")
        await write(queue, bucket, "torn.txt", b"written just before the power went")
        torn = queue.staging.path(queue.pending_version(bucket, "torn.txt").name)
    # the machine stopped before a sync pass (none runs without start()); the disk kept:
    torn.write_bytes(b"written just bef\0\0\0\0")  # what the disk kept

    async with upload_queue(tmp_path, store) as queue:
        status = await queue.sync(timeout=10)
    assert body(s3, bucket, "intact.txt") == b"intact"
    assert "torn.txt" not in keys(s3, bucket)
    assert [f["uri"] for f in status["failures"]] == [f"s3://{bucket}/torn.txt"]
    assert "damaged" in status["failures"][0]["error"]
    assert "did not reach the disk intact" in caplog.text


async def test_orphaned_multipart_uploads_are_aborted_at_start(tmp_path: Path, store: S3Store,
                                                               s3: Any, bucket: str):
    """Recorded ones only: an upload whose UploadId never arrived cannot be told from another
    client's upload of the key, so its record is dropped and the upload left to the bucket's
    lifecycle rule (issue 13)."""
    journal = Journal(tmp_path / "journal.sqlite")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="big.bin")["UploadId"]
    journal.multipart_created(journal.multipart_begin(bucket, "big.bin"), upload_id)
    s3.create_multipart_upload(Bucket=bucket, Key="lost.bin")  # the answer never arrived
    journal.multipart_begin(bucket, "lost.bin")
    journal.close()
    assert sorted(open_uploads(s3, bucket)) == ["big.bin", "lost.bin"]

    async with upload_queue(tmp_path, store) as queue:
        await queue.sync(timeout=10)
        assert queue.journal.multipart_keys() == []
    assert open_uploads(s3, bucket) == ["lost.bin"]


async def test_offline_uploads_wait_without_retry_storm(tmp_path: Path, proxy: CuttableProxy,
                                                        s3: Any, bucket: str):
    store = make_store(tmp_path, proxy.endpoint)
    async with upload_queue(tmp_path, store) as queue:
        proxy.cut()
        jobs = [await write(queue, bucket, f"f{n}.txt", b"x" * n) for n in range(3)]
        with trio.fail_after(5):
            assert await queue.wait(jobs[0]) is False  # fsync offline: journalled is enough
        tried = store.request_counts().get("PutObject", 0)
        assert tried <= 3
        await trio.sleep(1.5)
        assert store.request_counts().get("PutObject", 0) == tried  # nothing while offline
        status = queue.status()
        assert status["files"] == 3 and status["failures"] == []
        assert all(r["attempts"] == 0 for r in status["retrying"])

        proxy.restore()
        assert (await queue.sync(timeout=20))["files"] == 0
    assert keys(s3, bucket) == ["f0.txt", "f1.txt", "f2.txt"]


async def test_permanent_failure_is_kept_reported_and_retried_on_request(
        tmp_path: Path, store: S3Store, s3: Any, bucket: str):
    gone = f"{bucket}-gone"
    async with upload_queue(tmp_path, store) as queue:
        job = await write(queue, gone, "keep.txt", b"precious")
        status = await queue.sync(timeout=10)
        assert status["files"] == 0 and len(status["failures"]) == 1
        assert status["failures"][0]["uri"] == f"s3://{gone}/keep.txt"
        assert "not found" in status["failures"][0]["error"]
        with pytest.raises(UploadFailed):
            await queue.wait(job)
        await trio.sleep(0.5)
        assert store.request_counts()["PutObject"] == 1  # not retried by itself
        staged = queue.pending_version(gone, "keep.txt")
        assert staged is not None and staged.read_bytes() == b"precious"

        s3.create_bucket(Bucket=gone)
        assert await queue.retry_failed() == 1
        status = await queue.sync(timeout=10)
    assert status["failures"] == [] and body(s3, gone, "keep.txt") == b"precious"


@pytest.mark.parametrize("code, status, permanent", [
    ("KMS.DisabledException", 400, True), ("AccessDenied", 403, True),
    ("InvalidAccessKeyId", 403, True), ("NoSuchBucket", 404, True),
    ("InvalidArgument", 400, True), ("NotImplemented", 501, True),
    ("SlowDown", 503, False), ("InternalError", 500, False), ("RequestTimeout", 400, False),
    # static keys cannot renew an expired session: for good (test_credentials.py: a
    # session that renews itself is retried)
    ("ExpiredToken", 400, True), ("PreconditionFailed", 412, False),
])
def test_error_classification(store: S3Store, code: str, status: int, permanent: bool):
    def fail() -> None:
        raise ClientError({"Error": {"Code": code, "Message": "m"},
                           "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    with pytest.raises(Exception) as info:
        store._call("PutObject s3://b/k", fail)
    assert retry.error_code(info.value) == (code, status)
    assert retry.is_permanent(info.value) is permanent


def test_network_errors_are_transient(store: S3Store):
    def fail() -> None:
        raise EndpointConnectionError(endpoint_url="http://nowhere")
    with pytest.raises(Exception) as info:
        store._call("PutObject s3://b/k", fail)
    assert not retry.is_permanent(info.value) and not store.link.online


CONFLICT = re.compile(r"^doc\.txt\.s3fuse-conflict-\d{8}T\d{6}Z$")


@pytest.mark.parametrize("size", [100, 6 * MiB], ids=["put", "multipart"])
async def test_conflict_keeps_both_versions(tmp_path: Path, store: S3Store, s3: Any,
                                            bucket: str, size: int):
    seen = s3.put_object(Bucket=bucket, Key="doc.txt", Body=b"v0")["ETag"].strip('"')
    s3.put_object(Bucket=bucket, Key="doc.txt", Body=b"theirs")  # changed after our open
    s3.put_object(Bucket=bucket, Key="new.txt", Body=b"created meanwhile")
    mine = os.urandom(size)
    async with upload_queue(tmp_path, store, uploader=small_parts) as queue:
        await write(queue, bucket, "doc.txt", mine, expected=seen)
        await write(queue, bucket, "new.txt", b"mine too", expected=None)
        status = await queue.sync(timeout=20)
    assert body(s3, bucket, "doc.txt") == b"theirs"
    assert body(s3, bucket, "new.txt") == b"created meanwhile"
    conflicts = [k for k in keys(s3, bucket) if "conflict" in k]
    assert len(conflicts) == 2 and any(CONFLICT.match(k) for k in conflicts)
    assert body(s3, bucket, next(k for k in conflicts if k.startswith("doc"))) == mine
    assert body(s3, bucket, next(k for k in conflicts if k.startswith("new"))) == b"mine too"
    assert {c["uri"] for c in status["conflicts"]} == {f"s3://{bucket}/doc.txt",
                                                       f"s3://{bucket}/new.txt"}
    assert open_uploads(s3, bucket) == []
    # a large file's conflict is found by HEAD before its parts are sent: one multipart upload
    assert store.request_counts().get("CreateMultipartUpload", 0) == (size > MiB)


async def test_no_conflict_when_unchanged_deleted_or_already_uploaded(
        tmp_path: Path, store: S3Store, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="s3fuse.upload")
    same = s3.put_object(Bucket=bucket, Key="same.txt", Body=b"v0")["ETag"].strip('"')
    gone = s3.put_object(Bucket=bucket, Key="gone.txt", Body=b"v0")["ETag"].strip('"')
    s3.delete_object(Bucket=bucket, Key="gone.txt")
    s3.put_object(Bucket=bucket, Key="replayed.txt", Body=b"v1")  # finished before a crash
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, bucket, "same.txt", b"v1", expected=same)
        await write(queue, bucket, "gone.txt", b"v1", expected=gone)
        await write(queue, bucket, "replayed.txt", b"v1", expected="etag-before-the-crash")
        status = await queue.sync(timeout=10)
    assert status["conflicts"] == [] and keys(s3, bucket) == ["gone.txt", "replayed.txt",
                                                              "same.txt"]
    assert all(body(s3, bucket, k) == b"v1" for k in keys(s3, bucket))
    assert "gone.txt was deleted in S3 since it was opened" in caplog.text
    assert "replayed.txt already holds these bytes" in caplog.text


@pytest.mark.parametrize("path", ["botocore", "signed here"])
async def test_servers_without_conditional_writes_get_a_head_check(
        tmp_path: Path, store: S3Store, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch,
        path: str):
    """The server answers a conditional PUT 501 NotImplemented, through botocore or to a
    small PUT signed here (store/putsign.py): the same error, so the same fallback."""
    if path == "botocore":
        monkeypatch.setattr(s3_store, "FAST_PUT_LIMIT", -1)
        put = store.write_client.put_object

        def no_conditions(**kwargs: Any) -> Any:
            if "IfMatch" in kwargs or "IfNoneMatch" in kwargs:
                raise ClientError({"Error": {"Code": "NotImplemented"},
                                   "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
            return put(**kwargs)
        monkeypatch.setattr(store.write_client, "put_object", no_conditions)
    else:
        signed_put = store._fast.put

        def no_signed_conditions(what: str, url: str, headers: dict[str, str],
                                 body: bytes = b"") -> tuple[int, Any, bytes]:
            if "if-match" in headers or "if-none-match" in headers:
                return 501, {}, b"<Error><Code>NotImplemented</Code><Message>x</Message></Error>"
            return signed_put(what, url, headers, body)
        monkeypatch.setattr(store._fast, "put", no_signed_conditions)
    seen = s3.put_object(Bucket=bucket, Key="doc.txt", Body=b"v0")["ETag"].strip('"')
    s3.put_object(Bucket=bucket, Key="doc.txt", Body=b"theirs")
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, bucket, "fresh.txt", b"new", expected=None)
        await queue.sync(timeout=10)
        await write(queue, bucket, "doc.txt", b"mine", expected=seen)
        status = await queue.sync(timeout=10)
        assert not queue.uploader.conditions.known(bucket).put  # type: ignore[union-attr]
    assert body(s3, bucket, "fresh.txt") == b"new" and body(s3, bucket, "doc.txt") == b"theirs"
    assert len(status["conflicts"]) == 1 and status["failures"] == []


async def test_only_the_last_version_is_uploaded(tmp_path: Path, store: S3Store, s3: Any,
                                                 bucket: str):
    async with upload_queue(tmp_path, store, start=False) as queue:
        first = await write(queue, bucket, "v.txt", b"one", expected=None)
        await write(queue, bucket, "v.txt", b"two", expected=None)
        await write(queue, bucket, "v.txt", b"three", expected=None)
        assert queue.pending_version(bucket, "v.txt").read_bytes() == b"three"  # type: ignore
        await queue.make_durable()  # the sync pass deletes the superseded staging files
        assert len(os.listdir(tmp_path / "staging")) == 1
        await queue.start()
        assert await queue.wait(first)  # fsync of an old version: its successor is in S3
        await queue.sync(timeout=10)
    assert body(s3, bucket, "v.txt") == b"three"
    assert store.request_counts()["PutObject"] == 1 + PROBE_PUTS  # and the bucket's probe


async def test_version_written_during_an_upload_follows_it(
        tmp_path: Path, store: S3Store, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch):
    """v2 is queued while v1 uploads: v1 lands first, then v2 (If-Match v1's ETag: no conflict)."""
    started, release = stalled_puts(store, monkeypatch)
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, bucket, "v.txt", b"one", expected=None)
        await trio.to_thread.run_sync(started.wait, 10)
        await write(queue, bucket, "v.txt", b"two", expected=None)
        release.set()
        status = await queue.sync(timeout=10)
    assert body(s3, bucket, "v.txt") == b"two" and status["conflicts"] == []
    assert keys(s3, bucket) == ["v.txt"]


async def test_a_stalled_upload_says_where_it_waits(tmp_path: Path, store: S3Store, bucket: str,
                                                    monkeypatch: pytest.MonkeyPatch):
    """The idle query names what a busy worker waits for: a stall (CI saw one once, with
    nothing else to go on) then tells the request from the journal or the listings."""
    started, release = stalled_puts(store, monkeypatch)
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, bucket, "stall.txt", b"one", expected=None)
        await trio.to_thread.run_sync(started.wait, 10)
        busy = await queue.busy()
        assert busy is not None and busy.startswith("uploading (job ")
        assert "put: waiting for a slot or sending" in busy and "stall.txt" not in busy
        release.set()
        await queue.sync(timeout=10)
        assert await queue.busy() is None


async def test_a_claim_of_an_empty_journal_is_not_work(tmp_path: Path, store: S3Store,
                                                      monkeypatch: pytest.MonkeyPatch):
    """A worker woken with nothing queued claims nothing: while its claim runs, the idle
    query says idle (it said "uploading", and a test that had just seen the mount go idle
    read that right after: CI failed on it twice). A claim that can find a job is work."""
    claiming, release, first = threading.Event(), threading.Event(), threading.Lock()
    claim = Journal.claim

    def slow_claim(journal: Journal, *args: Any) -> Any:
        if first.acquire(blocking=False):  # the first one only: the others leave the idle
            claiming.set()                 # query a thread of the queue's two for the journal
            release.wait(10)
        return claim(journal, *args)
    async with upload_queue(tmp_path, store) as queue:
        await queue.sync(timeout=10)
        monkeypatch.setattr(queue.journal, "claim", functools.partial(slow_claim, queue.journal))
        queue._notify()  # wakes a worker: it claims
        assert await trio.to_thread.run_sync(claiming.wait, 10)
        assert await queue.busy() is None
        release.set()
        monkeypatch.undo()
        await queue.sync(timeout=10)
        assert await queue.busy() is None


async def test_failed_part_aborts_the_upload(tmp_path: Path, store: S3Store, s3: Any,
                                             bucket: str, monkeypatch: pytest.MonkeyPatch):
    data = os.urandom(12 * MiB)  # three 5 MiB parts
    broken, aborted = [True], []
    upload_part, abort = store.upload_part, store.abort_multipart_upload

    def flaky_part(bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        if number == 2 and broken[0]:
            raise RemoteError("UploadPart: S3 error InternalError")
        return upload_part(bucket, key, upload_id, number, body)

    def spy_abort(*args: Any) -> None:
        aborted.append(args)
        abort(*args)
    monkeypatch.setattr(store, "upload_part", flaky_part)
    monkeypatch.setattr(store, "abort_multipart_upload", spy_abort)
    async with upload_queue(tmp_path, store, uploader=small_parts) as queue:
        await write(queue, bucket, "big.bin", data)
        await until_retrying(queue)
        broken[0] = False
        assert aborted and keys(s3, bucket) == []
        await queue.sync(timeout=10)
    assert body(s3, bucket, "big.bin") == data and open_uploads(s3, bucket) == []


async def test_upload_killed_mid_multipart_is_cleaned_and_finished_next_start(
        tmp_path: Path, store: S3Store, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch):
    """Part 2 fails and the abort is lost too (as when the process dies): the next start aborts
    the leftover and uploads the file."""
    data = os.urandom(6 * MiB)
    upload_part = store.upload_part

    def dying_part(bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        if number == 2:
            raise RemoteError("killed")
        return upload_part(bucket, key, upload_id, number, body)

    def lost_abort(*args: Any) -> None:
        raise RemoteError("killed")
    patched = make_store(tmp_path, store.cfg.endpoint_url or "")
    monkeypatch.setattr(patched, "upload_part", dying_part)
    monkeypatch.setattr(patched, "abort_multipart_upload", lost_abort)
    async with upload_queue(tmp_path, patched, uploader=small_parts) as queue:
        await write(queue, bucket, "big.bin", data)
        await until_retrying(queue)
    assert open_uploads(s3, bucket) and keys(s3, bucket) == []

    async with upload_queue(tmp_path, store, uploader=small_parts) as queue:
        assert (await queue.sync(timeout=10))["files"] == 0
    assert open_uploads(s3, bucket) == [] and body(s3, bucket, "big.bin") == data


async def test_drain_stops_a_long_upload_between_parts(tmp_path: Path, store: S3Store, s3: Any,
                                                       bucket: str, monkeypatch: pytest.MonkeyPatch):
    data = os.urandom(16 * MiB)  # four 5 MiB parts, one at a time, slowly
    upload_part = store.upload_part

    def slow_part(*args: Any) -> str:
        time.sleep(0.3)
        return upload_part(*args)
    monkeypatch.setattr(store, "upload_part", slow_part)

    def one_part_at_a_time(*args: Any) -> Uploader:
        return Uploader(*args, threshold=MiB, part_size=5 * MiB, parallel_parts=1)
    async with upload_queue(tmp_path, store, uploader=one_part_at_a_time) as queue:
        await write(queue, bucket, "big.bin", data)
        with trio.fail_after(5):
            left = await queue.drain(timeout=0.2)
    assert left["files"] == 1 and left["failures"] == [] and left["retrying"] == []
    assert open_uploads(s3, bucket) == [] and keys(s3, bucket) == []

    monkeypatch.setattr(store, "upload_part", upload_part)
    async with upload_queue(tmp_path, store, uploader=small_parts) as queue:
        assert (await queue.sync(timeout=10))["files"] == 0
    assert body(s3, bucket, "big.bin") == data


async def test_uploads_wait_for_a_burst_of_closes_to_pause(tmp_path: Path, store: S3Store,
                                                          bucket: str,
                                                          monkeypatch: pytest.MonkeyPatch):
    """`cp -r` closes a file every few ms: uploads wait until it pauses (so they do not slow
    it down), a lone close is uploaded at once, and fsync never waits for the pause."""
    # Wide margins: on a loaded machine the writes of a burst can come 50 ms apart (the
    # default BURST_GAP), and then they are no burst; every close of this test is within
    # a burst of the one before, and the gate is reset where the test wants none.
    monkeypatch.setattr("s3fuse.upload.burst.BURST_GAP", 30.0)
    monkeypatch.setattr("s3fuse.upload.burst.BURST_QUIET", 30.0)
    started: list[str] = []
    # one worker: several would each pass the burst check at the burst's first close and
    # then claim, in a thread, whichever job is due by then (the second close's, too)
    async with upload_queue(tmp_path, store, workers=1) as queue:
        upload = queue.uploader.upload

        def recording(job: Any) -> Any:
            started.append(job.key)
            return upload(job)

        monkeypatch.setattr(queue.uploader, "upload", recording)
        await write(queue, bucket, "lone.txt", b"lone")
        await queue.sync(timeout=10)
        assert started == ["lone.txt"]

        queue._bursts = BurstGate()  # long past: the burst's first close is not part of lone's
        first = await write(queue, bucket, "burst0.txt", b"x")
        with trio.fail_after(10):  # not known as a burst yet: uploaded at once
            while "burst0.txt" not in started:
                await trio.sleep(0.01)
            assert await queue.wait(first)
            while queue._processing:  # the worker parked (a claim in flight would take
                await trio.sleep(0.01)  # a job journalled meanwhile, burst or not)
        for n in range(1, 5):  # the rest of the burst
            await write(queue, bucket, f"burst{n}.txt", b"x")
        await trio.sleep(0.3)
        assert started == ["lone.txt", "burst0.txt"]  # the others wait for a pause
        job = await write(queue, bucket, "fsynced.txt", b"now")
        assert await queue.wait(job)     # fsync: at once
        assert "fsynced.txt" in started
        await queue.sync(timeout=10)
    assert set(started) == {"lone.txt", "fsynced.txt"} | {f"burst{n}.txt" for n in range(5)}


async def test_small_puts_go_sixteen_at_once_and_heavy_jobs_four(tmp_path: Path, store: S3Store,
                                                                  bucket: str,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """A burst of small files uploads WORKERS at a time (each is a round trip of latency);
    PUTs over LIGHT_PUT_BYTES and metadata copies go to the HEAVY_UPLOADS workers that
    take any job, so the memory of big uploads and the load beside a `chmod -R` stay as
    with 4 workers."""
    from s3fuse.upload import queue as upload_queue_module
    from s3fuse.upload.journal import Job

    monkeypatch.setattr(upload_queue_module, "LIGHT_PUT_BYTES", 100)  # "big": 101 bytes
    lock = threading.Lock()
    inside = {"light": 0, "heavy": 0}
    most = {"light": 0, "heavy": 0, "all": 0}

    async with upload_queue(tmp_path, store, start=False) as queue:
        upload = queue.uploader.upload

        def slow(job: Job) -> Any:
            kind = "heavy" if job.size > 100 else "light"
            with lock:
                inside[kind] += 1
                most[kind] = max(most[kind], inside[kind])
                most["all"] = max(most["all"], inside["light"] + inside["heavy"])
            time.sleep(0.3)  # every worker gets a job before the first ends
            try:
                return upload(job)
            finally:
                with lock:
                    inside[kind] -= 1

        monkeypatch.setattr(queue.uploader, "upload", slow)
        for n in range(20):
            await write(queue, bucket, f"small{n}.txt", b"s")
        for n in range(8):
            await write(queue, bucket, f"big{n}.bin", b"b" * 101)
        await queue.start()
        assert (await queue.sync(timeout=30))["files"] == 0
    assert most["all"] <= upload_queue_module.WORKERS == 16
    assert most["light"] >= 8 and most["heavy"] == upload_queue_module.HEAVY_UPLOADS == 4


async def test_light_workers_do_not_spin_while_big_uploads_wait(tmp_path: Path, store: S3Store,
                                                                 bucket: str,
                                                                 monkeypatch: pytest.MonkeyPatch):
    """Big files wait for the 4 workers that take any job; the 12 light workers, finding
    no light job, sleep until one comes (they asked again at once when a big job was due)."""
    from s3fuse.upload import queue as upload_queue_module
    from s3fuse.upload.journal import Job

    monkeypatch.setattr(upload_queue_module, "LIGHT_PUT_BYTES", 100)
    async with upload_queue(tmp_path, store) as queue:
        upload = queue.uploader.upload
        claims = counted_claims(queue, monkeypatch)

        def slow(job: Job) -> Any:
            time.sleep(0.5)
            return upload(job)

        monkeypatch.setattr(queue.uploader, "upload", slow)
        for n in range(8):  # 4 upload, 4 wait half a second for a worker that takes them
            await write(queue, bucket, f"big{n}.bin", b"b" * 101)
        assert (await queue.sync(timeout=30))["files"] == 0
    # 40-60 when they sleep (each worker's first look, a wake per change and per job end);
    # 3,058 when the light ones asked again at once while a big job was due
    assert claims() < 150, f"{claims()} claims for 8 jobs"


async def test_a_multipart_upload_probes_conditions_while_its_parts_go(
        tmp_path: Path, store: S3Store, s3: Any, bucket: str,
        monkeypatch: pytest.MonkeyPatch):
    """The first conditional upload to a bucket probes what it honours; a multipart one
    needs the answer only at its completion, so the probe runs beside its parts instead
    of after them (six requests on the path to durable on every fresh mount)."""
    upload_part, put_object = store.upload_part, store.put_object
    probing = threading.Event()
    overlapped: list[bool] = []

    def probe_put(bucket: str, key: str, *args: Any, **kwargs: Any) -> str:
        probing.set()
        return put_object(bucket, key, *args, **kwargs)

    def part_waiting_for_the_probe(*args: Any) -> str:
        overlapped.append(probing.wait(5))  # never set if the probe waits for the parts
        return upload_part(*args)
    monkeypatch.setattr(store, "put_object", probe_put)
    monkeypatch.setattr(store, "upload_part", part_waiting_for_the_probe)
    data = os.urandom(6 * MiB)
    async with upload_queue(tmp_path, store, uploader=small_parts) as queue:
        job = await write(queue, bucket, "new.bin", data, expected=None)
        with trio.fail_after(30):
            assert await queue.wait(job)
    assert overlapped == [True, True]
    assert body(s3, bucket, "new.bin") == data and keys(s3, bucket) == ["new.bin"]
