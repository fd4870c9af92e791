"""One set of checks, run against the in-memory fake (MemoryStore) and against S3Store on
moto's HTTP server: the fake used by the fast unit tests cannot drift from S3."""
from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Iterator

import pytest

from s3fuse.config import Config, KeyPair
from s3fuse.errors import NotFound, RemoteError, StaleObject
from s3fuse.store import retry
from s3fuse.store.memory import MemoryStore
from s3fuse.store.protocol import Store
from s3fuse.store.s3 import S3Store
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
    backend.client.create_bucket(Bucket=bucket)
    keys = KeyPair(backend.access_key, backend.secret_key)
    yield S3Store(Config(endpoint_url=backend.endpoint, region="us-east-1",
                         addressing_style="path", read_keys=keys, write_keys=keys,
                         cache_dir=tmp_path), page_size=PAGE), bucket


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
