"""One set of checks, run against the in-memory fake (MemoryStore) and against S3Store on
moto's HTTP server: the fake used by the fast unit tests cannot drift from S3."""
from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from botocore.exceptions import ClientError

from s3fuse import posix
from s3fuse.config import Config, KeyPair
from s3fuse.errors import NotFound, RemoteError, StaleObject
from s3fuse.store import retry
from s3fuse.store import s3 as s3_store
from s3fuse.store.memory import MemoryStore
from s3fuse.store.protocol import Store
from s3fuse.store.s3 import S3Store
from s3fuse.util.filerange import FileRange
from tests.conftest import Backend

MiB = 1 << 20
PAGE = 3
_ids = itertools.count()


@pytest.fixture(params=["memory", "s3"])
def store_bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, str]]:
    """(store, a fresh empty bucket), listing PAGE keys per page."""
    bucket = f"contract-{os.getpid()}-{next(_ids)}"
    if request.param == "memory":
        memory = MemoryStore(page_size=PAGE)
        memory.create_bucket(bucket)
        yield memory, bucket
        return
    backend: Backend = request.getfixturevalue("moto_backend")
    yield moto_store(backend, tmp_path), new_bucket(backend)


def new_bucket(backend: Backend) -> str:
    bucket = f"contract-{os.getpid()}-{next(_ids)}"
    backend.client.create_bucket(Bucket=bucket)
    return bucket


def moto_store(backend: Backend, tmp_path: Path, **config: Any) -> S3Store:
    keys = KeyPair(backend.access_key, backend.secret_key)
    return S3Store(Config(endpoint_url=backend.endpoint, region="us-east-1",
                          addressing_style="path", read_keys=keys, write_keys=keys,
                          cache_dir=tmp_path, **config), page_size=PAGE)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_put_head_get(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    data = bytes(range(256)) * 4
    etag = store.put_object(bucket, "dir/obj.bin", data, content_type="application/x-test")
    assert etag == md5(data)
    info = store.head(bucket, "dir/obj.bin")
    assert (info.key, info.size, info.etag) == ("dir/obj.bin", len(data), etag) and info.mtime_ns > 0
    assert store.get(bucket, "dir/obj.bin", etag) == data
    assert store.get(bucket, "dir/obj.bin", etag, 10, 20) == data[10:20]
    assert store.get(bucket, "dir/obj.bin", etag, 1000) == data[1000:]
    assert b"".join(store.iter_chunks(bucket, "dir/obj.bin", etag, len(data), 300)) == data
    with pytest.raises(StaleObject):
        store.get(bucket, "dir/obj.bin", md5(b"another version"))
    for missing in (lambda: store.head(bucket, "nope"), lambda: store.get(bucket, "nope", "")):
        with pytest.raises(NotFound) as info_:
            missing()
        assert info_.value.status == 404
    assert bucket in store.list_buckets()
    counts = store.request_counts()
    assert counts["PutObject"] == 1 and counts["HeadObject"] >= 1 and counts["GetObject"] >= 3


def test_conditional_put(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    first = store.put_object(bucket, "k", b"one", if_none_match="*")
    with pytest.raises(StaleObject) as stale:
        store.put_object(bucket, "k", b"two", if_none_match="*")
    assert stale.value.status == 412 and not retry.is_permanent(stale.value)
    with pytest.raises(StaleObject):
        store.put_object(bucket, "k", b"two", if_match=md5(b"not it"))
    second = store.put_object(bucket, "k", b"two", if_match=first)
    assert store.get(bucket, "k", second) == b"two"
    with pytest.raises(NotFound) as gone:  # what the uploader reads as "deleted since opened"
        store.put_object(bucket, "missing", b"x", if_match=first)
    assert retry.error_code(gone.value) == ("NoSuchKey", 404)


def test_parts_streamed_from_a_file(store_bucket: tuple[Store, str], tmp_path: Path) -> None:
    """A part's body may be a range of a file (FileRange): what the uploader sends, read
    from the staging file as it goes, not held in memory."""
    store, bucket = store_bucket
    data = os.urandom(5 * MiB + 1000)
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    fd = os.open(staged, os.O_RDONLY)
    try:
        upload_id = store.create_multipart_upload(bucket, "streamed")
        bodies = [FileRange(fd, 0, 5 * MiB), FileRange(fd, 5 * MiB, 1000)]
        bodies[0].read(123)  # a failed attempt read some of it: the next one starts over
        etags = [store.upload_part(bucket, "streamed", upload_id, n, body)
                 for n, body in enumerate(bodies, 1)]
        assert etags == [md5(data[:5 * MiB]), md5(data[5 * MiB:])]
        store.complete_multipart_upload(bucket, "streamed", upload_id, etags)
    finally:
        os.close(fd)
    assert store.get(bucket, "streamed", store.head(bucket, "streamed").etag) == data


def test_a_part_whose_file_fails_is_a_local_error(store_bucket: tuple[Store, str],
                                                  tmp_path: Path) -> None:
    """The staging file shrank under a part being sent: an OSError (the queue keeps the job
    as failed), not a network error: the link stays online."""
    store, bucket = store_bucket
    staged = tmp_path / "staged"
    staged.write_bytes(os.urandom(MiB))
    fd = os.open(staged, os.O_RDONLY)
    try:
        upload_id = store.create_multipart_upload(bucket, "shrunk")
        with pytest.raises(OSError, match="before the end of the range"):
            store.upload_part(bucket, "shrunk", upload_id, 1, FileRange(fd, 0, 2 * MiB))
        store.abort_multipart_upload(bucket, "shrunk", upload_id)
    finally:
        os.close(fd)
    assert store.link.online


def test_multipart(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    parts = [os.urandom(5 * MiB), b"tail"]
    upload_id = store.create_multipart_upload(bucket, "big", content_type="application/x-test")
    other = store.create_multipart_upload(bucket, "big")
    assert sorted(store.list_multipart_uploads(bucket, "bi")) == sorted(
        [("big", upload_id), ("big", other)])
    etags = [store.upload_part(bucket, "big", upload_id, n, data) for n, data in enumerate(parts, 1)]
    assert etags == [md5(data) for data in parts]
    etag = store.complete_multipart_upload(bucket, "big", upload_id, etags, if_none_match="*")
    digests = b"".join(hashlib.md5(data).digest() for data in parts)
    assert etag == f"{md5(digests)}-2" == store.head(bucket, "big").etag
    assert store.get(bucket, "big", etag, 5 * MiB - 2) == parts[0][-2:] + b"tail"
    assert store.list_multipart_uploads(bucket) == [("big", other)]

    again = [store.upload_part(bucket, "big", other, 1, b"x")]
    with pytest.raises(StaleObject):
        store.complete_multipart_upload(bucket, "big", other, again, if_none_match="*")
    store.abort_multipart_upload(bucket, "big", other)
    store.abort_multipart_upload(bucket, "big", other)  # already gone is fine
    assert store.list_multipart_uploads(bucket) == []

    small = store.create_multipart_upload(bucket, "small")
    tiny = [store.upload_part(bucket, "small", small, n, b"tiny") for n in (1, 2)]
    with pytest.raises(RemoteError) as too_small:
        store.complete_multipart_upload(bucket, "small", small, tiny)
    assert retry.error_code(too_small.value) == ("EntityTooSmall", 400)
    assert retry.is_permanent(too_small.value)
    store.abort_multipart_upload(bucket, "small", small)


def test_copy_and_conditional_delete(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    etag = store.put_object(bucket, "src", b"source bytes")
    store.copy_object(bucket, "src", "dst", etag)
    copied = store.head(bucket, "dst")
    assert store.get(bucket, "dst", copied.etag) == b"source bytes"
    with pytest.raises(StaleObject):
        store.copy_object(bucket, "src", "dst2", md5(b"older version"))
    with pytest.raises(NotFound):
        store.copy_object(bucket, "nope", "dst3", etag)

    with pytest.raises(StaleObject):
        store.delete_object(bucket, "src", if_match=md5(b"older version"))
    assert store.head(bucket, "src").etag == etag  # still there
    store.delete_object(bucket, "src", if_match=etag)
    store.delete_object(bucket, "dst")
    store.delete_object(bucket, "dst")  # already gone is fine
    store.delete_object(bucket, "dst", if_match=etag)
    with pytest.raises(NotFound):
        store.head(bucket, "src")
    names = [o.key for page in store.list_pages(bucket, "", "") for o in page.objects]
    assert names == []


def test_listing_with_delimiter_and_pages(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    keys = ["a-b", "a/b", "a/c/d", "a/c/e", "a0", "dir/", "dir/x", "top", "z/é", "é"]
    for key in keys:
        store.put_object(bucket, key, key.encode())

    pages = list(store.list_pages(bucket, ""))
    assert len(pages) > 1 and all(len(p.prefixes) + len(p.objects) <= PAGE for p in pages)
    assert [p for page in pages for p in page.prefixes] == ["a/", "dir/", "z/"]
    objects = [o for page in pages for o in page.objects]
    assert [o.key for o in objects] == ["a-b", "a0", "top", "é"]
    assert all(o.size == len(o.key.encode()) and o.etag == md5(o.key.encode()) for o in objects)

    below = list(store.list_pages(bucket, "a/"))
    assert [p for page in below for p in page.prefixes] == ["a/c/"]
    assert [o.key for page in below for o in page.objects] == ["a/b"]
    marker = list(store.list_pages(bucket, "dir/"))
    assert [o.key for page in marker for o in page.objects] == ["dir/", "dir/x"]
    flat = [o.key for page in store.list_pages(bucket, "", "") for o in page.objects]
    assert flat == sorted(keys, key=lambda k: k.encode())
    assert [o.key for page in store.list_pages(bucket, "nothing/") for o in page.objects] == []
    with pytest.raises(NotFound):
        list(store.list_pages(f"{bucket}-gone", ""))


#: What posix.py writes for a file with every field and xattrs that need escaping.
POSIX = posix.Posix(mode=0o100640, uid=1000, gid=100, mtime_ns=1_700_000_000_123_456_789,
                    ctime_ns=1_700_000_001_000_000_000, atime_ns=1_600_000_000_000_000_005,
                    xattrs=(("user.bin", bytes(range(7))),
                            ("user.note", "naïve, 100% {json}: \"x\"".encode())))
HEADERS = posix.to_headers(POSIX)


def test_metadata_round_trip(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    assert "%" in HEADERS["xattr"]  # the percent-encoded form is what must come back
    store.put_object(bucket, "plain", b"no metadata")
    info = store.head(bucket, "plain")
    assert info.metadata == {}

    store.put_object(bucket, "put", b"data", content_type="text/x-test", metadata=HEADERS)
    info = store.head(bucket, "put")
    assert info.metadata == HEADERS and info.content_type == "text/x-test"
    assert posix.from_headers(info.metadata) == POSIX

    upload_id = store.create_multipart_upload(bucket, "parts", content_type="text/x-parts",
                                              metadata=HEADERS)
    etags = [store.upload_part(bucket, "parts", upload_id, 1, b"a" * (5 * MiB)),
             store.upload_part(bucket, "parts", upload_id, 2, b"tail")]
    store.complete_multipart_upload(bucket, "parts", upload_id, etags)
    info = store.head(bucket, "parts")
    assert (info.metadata, info.content_type) == (HEADERS, "text/x-parts")
    listed = [o for page in store.list_pages(bucket, "") for o in page.objects]
    assert [o.metadata for o in listed] == [None, None, None]  # listings carry no headers


def test_copy_keeps_or_replaces_metadata(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    etag = store.put_object(bucket, "src", b"bytes", content_type="text/x-src", metadata=HEADERS)
    renamed = store.copy_object(bucket, "src", "renamed", etag)
    info = store.head(bucket, "renamed")
    assert (info.etag, info.metadata, info.content_type) == (renamed, HEADERS, "text/x-src")

    changed = posix.to_headers(POSIX.replace(mode=0o100755, xattrs=()))
    new_etag = store.copy_object(bucket, "src", "src", etag, metadata=changed)
    info = store.head(bucket, "src")
    assert (info.etag, info.metadata, info.content_type) == (new_etag, changed, "text/x-src")
    assert new_etag == etag == md5(b"bytes")  # a single-part copy keeps the MD5 ETag
    assert store.get(bucket, "src", new_etag) == b"bytes"

    retyped = store.copy_object(bucket, "src", "src", new_etag, metadata={},
                                content_type="text/x-new")
    info = store.head(bucket, "src")
    assert (info.etag, info.metadata, info.content_type) == (retyped, {}, "text/x-new")


def test_headers_of_a_version_are_what_a_new_version_keeps(store_bucket: tuple[Store, str],
                                                          tmp_path: Path) -> None:
    """headers_of: the content type, the other kept headers and the user metadata that is
    not POSIX metadata, of that version only; put_object and multipart uploads set them."""
    store, bucket = store_bucket
    extra = {"CacheControl": "max-age=60", "ContentDisposition": "inline"}
    etag = store.put_object(bucket, "page.html", b"<p>", content_type="text/html",
                            metadata={"project": "apollo", "mode": "33188"}, headers=extra)
    assert store.headers_of(bucket, "page.html", etag) == {
        "ContentType": "text/html", **extra, "Metadata": {"project": "apollo"}}
    assert store.headers_of(bucket, "page.html", md5(b"another version")) is None
    assert store.headers_of(bucket, "nope", etag) is None
    upload = store.create_multipart_upload(bucket, "big.bin", content_type="text/x-big",
                                           headers={"ContentLanguage": "en"})
    part = store.upload_part(bucket, "big.bin", upload, 1, b"x" * 10)
    big = store.complete_multipart_upload(bucket, "big.bin", upload, [part])
    assert store.headers_of(bucket, "big.bin", big) == {"ContentType": "text/x-big",
                                                        "ContentLanguage": "en"}
    if isinstance(store, S3Store):  # a version this store did not see costs one HEAD
        fresh = moto_store_like(store, tmp_path)
        heads = fresh.request_counts().get("HeadObject", 0)
        assert fresh.headers_of(bucket, "page.html", etag)["CacheControl"] == "max-age=60"
        assert fresh.headers_of(bucket, "page.html", etag)["ContentDisposition"] == "inline"
        assert fresh.request_counts().get("HeadObject", 0) == heads + 1


def moto_store_like(store: S3Store, tmp_path: Path) -> S3Store:
    """Another S3Store on the same server: nothing seen yet."""
    return S3Store(store.cfg, page_size=PAGE)


def test_copy_onto_itself_is_conditional(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    old = store.put_object(bucket, "k", b"old", metadata={"mode": "33188"})
    current = store.put_object(bucket, "k", b"new remote version", metadata={"mode": "33188"})
    with pytest.raises(StaleObject) as stale:
        store.copy_object(bucket, "k", "k", old, metadata={"mode": "33261"})
    assert stale.value.status == 412
    info = store.head(bucket, "k")
    assert (info.etag, info.metadata) == (current, {"mode": "33188"})  # not overwritten
    with pytest.raises(NotFound):
        store.copy_object(bucket, "gone", "gone", current, metadata={"mode": "33261"})


@pytest.mark.seaweedfs
def test_a_trusted_copy_of_a_version_seen_sends_no_head(seaweedfs_backend: Backend,
                                                       tmp_path: Path) -> None:
    """A metadata change of a version this store saw (its PUT, a HEAD) on a server that
    honours CopySourceIfMatch (SeaweedFS) is one CopyObject: the headers a REPLACE copy
    must send again are remembered, the condition guards the version. A stale version is
    still refused, and a version never seen is HEADed first."""
    store, bucket = moto_store(seaweedfs_backend, tmp_path), new_bucket(seaweedfs_backend)
    etag = store.put_object(bucket, "k", b"bytes", content_type="text/x-src", metadata=HEADERS)
    changed = posix.to_headers(POSIX.replace(mode=0o100755, xattrs=()))
    new_etag = store.copy_object(bucket, "k", "k", etag, metadata=changed, size=5,
                                 trust_condition=True)
    assert "HeadObject" not in store.request_counts()
    info = store.head(bucket, "k")
    assert (info.etag, info.metadata, info.content_type) == (new_etag, changed, "text/x-src")
    again = store.copy_object(bucket, "k", "k", new_etag, metadata=HEADERS, size=5,
                              trust_condition=True)  # the copy's own result is known too
    assert store.request_counts()["HeadObject"] == 1 and again == etag
    current = store.put_object(bucket, "k", b"newer", content_type="text/x-src")
    with pytest.raises(StaleObject):
        store.copy_object(bucket, "k", "k", etag, metadata=changed, size=5,
                          trust_condition=True)
    assert store.head(bucket, "k").etag == current
    fresh = moto_store(seaweedfs_backend, tmp_path)  # has seen nothing
    fresh.copy_object(bucket, "k", "k", current, metadata=changed, size=5, trust_condition=True)
    assert fresh.request_counts()["HeadObject"] == 1
    assert fresh.head(bucket, "k").content_type == "text/x-src"


def test_multipart_copy(store_bucket: tuple[Store, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the single-copy limit (lowered here), a copy goes in UploadPartCopy parts:
    same bytes, metadata kept by a plain copy and replaced by a metadata change."""
    store, bucket = store_bucket
    monkeypatch.setattr(s3_store, "COPY_LIMIT", 5 * MiB)
    monkeypatch.setattr(s3_store, "COPY_PART_SIZE", 5 * MiB)
    data = os.urandom(11 * MiB)
    etag = store.put_object(bucket, "big", data, content_type="text/x-big", metadata=HEADERS)

    copied = store.copy_object(bucket, "big", "copy", etag, size=len(data))
    info = store.head(bucket, "copy")
    assert (info.etag, info.size, info.metadata, info.content_type) == (
        copied, len(data), HEADERS, "text/x-big")
    assert store.get(bucket, "copy", copied) == data

    changed = {"mode": "33261", "mtime": "1700000000"}
    new_etag = store.copy_object(bucket, "big", "big", etag, metadata=changed, size=len(data))
    info = store.head(bucket, "big")
    assert (info.etag, info.metadata, info.content_type) == (new_etag, changed, "text/x-big")
    assert store.get(bucket, "big", new_etag) == data
    with pytest.raises(StaleObject):
        store.copy_object(bucket, "big", "big", md5(b"older"), metadata={}, size=len(data))
    assert store.list_multipart_uploads(bucket) == []
    if isinstance(store, S3Store):  # three ranges (5 + 5 + 1 MiB) per copy, all completed
        counts = store.request_counts()
        assert counts["UploadPartCopy"] == 6 and counts["CompleteMultipartUpload"] == 2
        assert new_etag.endswith("-3") and "CopyObject" not in counts


def test_s3_sends_metadata_conditions_and_sse_as_given(
        moto_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the wire: user metadata exactly as posix.py wrote it (botocore re-encodes
    nothing), CopySourceIfMatch on every copy request, REPLACE with the kept content type,
    and the configured SSE on copies as on puts."""
    store, bucket = moto_store(moto_backend, tmp_path, sse="AES256"), new_bucket(moto_backend)
    sent: list[tuple[str, dict[str, str]]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        sent.append((event_name.split(".")[-1], {k.lower(): v.decode() if isinstance(v, bytes)
                                                 else v for k, v in request.headers.items()}))
    store.write_client.meta.events.register("before-send.s3", record)
    signed_here = store._fast.put  # small copies and puts are presigned PUTs (store/putsign.py)

    def put(what: str, url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any, bytes]:
        sent.append(("CopyObject" if "x-amz-copy-source" in headers else "PutObject", dict(headers)))
        return signed_here(what, url, headers, body)
    monkeypatch.setattr(store._fast, "put", put)
    monkeypatch.setattr(s3_store, "COPY_LIMIT", 5 * MiB)
    monkeypatch.setattr(s3_store, "COPY_PART_SIZE", 5 * MiB)

    small = store.put_object(bucket, "small", b"x", content_type="text/x-a", metadata=HEADERS)
    big = store.put_object(bucket, "big", b"y" * (6 * MiB), metadata=HEADERS)
    store.copy_object(bucket, "small", "small", small, metadata={"mode": "33261"})
    store.copy_object(bucket, "big", "big", big, metadata={"mode": "33261"})
    by_operation: dict[str, list[dict[str, str]]] = {}
    for operation, headers in sent:
        by_operation.setdefault(operation, []).append(headers)

    put = by_operation["PutObject"][0]
    assert {k[len("x-amz-meta-"):]: v for k, v in put.items()
            if k.startswith("x-amz-meta-")} == HEADERS
    copy = by_operation["CopyObject"][0]
    assert copy["x-amz-copy-source-if-match"] == f'"{small}"'
    assert (copy["x-amz-metadata-directive"], copy["content-type"]) == ("REPLACE", "text/x-a")
    assert copy["x-amz-meta-mode"] == "33261" and "x-amz-meta-xattr" not in copy
    create = by_operation["CreateMultipartUpload"][0]
    assert create["x-amz-meta-mode"] == "33261"
    parts = by_operation["UploadPartCopy"]
    assert sorted(p["x-amz-copy-source-range"] for p in parts) == [  # sent in parallel
        f"bytes=0-{5 * MiB - 1}", f"bytes={5 * MiB}-{6 * MiB - 1}"]
    assert all(p["x-amz-copy-source-if-match"] == f'"{big}"' for p in parts)
    assert by_operation["CompleteMultipartUpload"][0]["if-match"] == f'"{big}"'
    for request in (put, copy, create):
        assert request["x-amz-server-side-encryption"] == "AES256"


def test_s3_failed_multipart_copy_is_aborted(
        moto_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part that fails ends the copy: the upload is aborted, the source untouched."""
    store, bucket = moto_store(moto_backend, tmp_path), new_bucket(moto_backend)
    monkeypatch.setattr(s3_store, "COPY_LIMIT", 5 * MiB)
    monkeypatch.setattr(s3_store, "COPY_PART_SIZE", 5 * MiB)
    etag = store.put_object(bucket, "big", b"z" * (11 * MiB), metadata={"mode": "33188"})
    copy_part = store.write_client.upload_part_copy

    def refuse_second(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "InvalidRequest"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "UploadPartCopy")
        return copy_part(**kwargs)
    monkeypatch.setattr(store.write_client, "upload_part_copy", refuse_second)
    with pytest.raises(RemoteError):
        store.copy_object(bucket, "big", "big", etag, metadata={"mode": "33261"})
    assert store.list_multipart_uploads(bucket) == []
    info = store.head(bucket, "big")
    assert (info.etag, info.metadata) == (etag, {"mode": "33188"})
    assert store.request_counts()["AbortMultipartUpload"] == 1


def test_get_whole_gives_the_bytes_and_what_a_head_gives(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    etag = store.put_object(bucket, "small", b"small bytes", content_type="text/x-test",
                            metadata=HEADERS)
    info, data = store.get_whole(bucket, "small", etag, 64)
    head = store.head(bucket, "small")
    assert data == b"small bytes"
    assert (info.size, info.etag, info.mtime_ns, info.metadata, info.content_type) == (
        head.size, head.etag, head.mtime_ns, HEADERS, "text/x-test")
    with pytest.raises(StaleObject):
        store.get_whole(bucket, "small", "0" * 32, 64)     # another version
    with pytest.raises(RemoteError):
        store.get_whole(bucket, "small", etag, 5)          # longer than asked for
    with pytest.raises(NotFound):
        store.get_whole(bucket, "gone", "", 64)


def test_head_many_answers_every_key_as_head_does(store_bucket: tuple[Store, str]) -> None:
    store, bucket = store_bucket
    keys = [f"many/{i:03d}" for i in range(40)]
    for i, key in enumerate(keys):
        store.put_object(bucket, key, b"x" * i, metadata={"mode": str(0o100600 + i % 8)})
    before = store.request_counts().get("HeadObject", 0)
    answers: list[tuple[str, Any]] = []
    store.head_many(bucket, keys + ["many/missing"], answers.extend)
    got = dict(answers)
    assert len(answers) == len(got) == len(keys) + 1  # each key once
    for key in keys:
        assert got[key] == store.head(bucket, key)
    assert isinstance(got["many/missing"], NotFound) and got["many/missing"].status == 404
    assert store.request_counts()["HeadObject"] - before == 2 * len(keys) + 1
