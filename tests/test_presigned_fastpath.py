"""The fast presigned path really runs: GETs and listings are signed by store/presigned.py
and sent without botocore. It reaches the credentials through botocore's private
request signer, so a botocore release that moves them would silently send every
request the slow way; this test then fails (pyproject.toml bounds botocore for it)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import botocore.awsrequest
import pytest

from s3fuse.config import Config, KeyPair
from s3fuse.errors import NotFound, RemoteError, StaleObject
from s3fuse.store.putsign import copy_etag
from s3fuse.store import retry
from s3fuse.store import s3 as s3_store
from s3fuse.store.s3 import S3Store
from tests.conftest import Backend


@pytest.mark.parametrize("session_token", [None, "token/+="])
def test_gets_and_listings_bypass_botocore(tmp_path: Path, moto_backend: Backend,
                                           monkeypatch: pytest.MonkeyPatch,
                                           session_token: str | None) -> None:
    bucket = f"fast-{os.getpid()}-{session_token is not None}"
    moto_backend.client.create_bucket(Bucket=bucket)
    moto_backend.client.put_object(Bucket=bucket, Key="d/a b+é.txt", Body=b"fast bytes")
    if session_token:  # credentials from the environment (as a role or SSO session gives them)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_backend.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_backend.secret_key)
        monkeypatch.setenv("AWS_SESSION_TOKEN", session_token)
        keys = None
    else:
        keys = KeyPair(moto_backend.access_key, moto_backend.secret_key)
    store = S3Store(Config(endpoint_url=moto_backend.endpoint, region="us-east-1",
                           addressing_style="path", read_keys=keys, cache_dir=tmp_path))
    assert store.fast_path(bucket), "GETs and listings would be presigned by botocore"

    botocore_calls: list[str] = []

    def count(event_name: str, **_: Any) -> None:
        botocore_calls.append(event_name)
    store.read_client.meta.events.register("before-call.s3", count)
    presign = store.read_client.generate_presigned_url
    presigned: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> str:
        presigned.append(args)
        return presign(*args, **kwargs)
    monkeypatch.setattr(store.read_client, "generate_presigned_url", spy)

    [page] = list(store.list_pages(bucket, "d/"))
    [obj] = page.objects
    assert obj.key == "d/a b+é.txt"
    assert store.get(bucket, obj.key, obj.etag) == b"fast bytes"
    assert store.get(bucket, obj.key, obj.etag, 5, 10) == b"bytes"
    info = store.head(bucket, obj.key)                  # HEADs too (a cold `ls -l` sends many)
    assert (info.size, info.etag, info.mtime_ns) == (10, obj.etag, obj.mtime_ns)
    with pytest.raises(NotFound):
        store.head(bucket, "d/missing")
    assert botocore_calls == [] and presigned == []
    store.list_buckets()                                # the control: goes through botocore
    assert botocore_calls


def writing_store(tmp_path: Path, moto_backend: Backend, bucket: str,
                  sse: str | None) -> tuple[S3Store, str]:
    """A store with write keys (and `sse`) on a new moto bucket."""
    moto_backend.client.create_bucket(Bucket=bucket)
    keys = KeyPair(moto_backend.access_key, moto_backend.secret_key)
    return S3Store(Config(endpoint_url=moto_backend.endpoint, region="us-east-1",
                          addressing_style="path", read_keys=keys, write_keys=keys,
                          cache_dir=tmp_path, sse=sse)), bucket


@pytest.mark.parametrize("sse", [None, "AES256"])
def test_metadata_copies_bypass_botocore_once_their_shape_is_checked(
        tmp_path: Path, moto_backend: Backend, sse: str | None) -> None:
    """A chmod of an uploaded file is a CopyObject onto itself: signed here (putsign.py),
    after one check per request shape that botocore signs it the same way."""
    store, bucket = writing_store(tmp_path, moto_backend, f"copies-{os.getpid()}-{sse}", sse)
    names = ["d/a b+é.txt", "d/plain", "d/~tilde!*'()"]
    etags = {name: store.put_object(bucket, name, b"bytes of " + name.encode(),
                                    content_type="text/x-kept", metadata={"mode": "33188"})
             for name in names}
    botocore_calls: list[str] = []
    store.write_client.meta.events.register(
        "before-call.s3", lambda event_name, **_: botocore_calls.append(event_name))
    for i, name in enumerate(names):
        new = store.copy_object(bucket, name, name, etags[name],
                                metadata={"mode": str(0o100600 + i), "xattr": "%7B%22user.a%22%3A%22b%22%7D"})
        info = store.head(bucket, name)
        assert new == info.etag and info.metadata["mode"] == str(0o100600 + i)
        assert info.metadata["xattr"] == "%7B%22user.a%22%3A%22b%22%7D"
        assert info.content_type == "text/x-kept"  # a REPLACE copy sends the kept headers again
    assert botocore_calls == []
    moto_backend.client.put_object(Bucket=bucket, Key="d/plain", Body=b"someone else's")
    with pytest.raises(StaleObject):  # the version seen is gone: 412, through the fast path too
        store.copy_object(bucket, "d/plain", "d/plain", etags["d/plain"], metadata={"mode": "1"})
    assert botocore_calls == []
    assert store.request_counts()["CopyObject"] == 3


def test_a_key_with_dot_segments_is_its_own_object_on_the_fast_path(
        tmp_path: Path, moto_backend: Backend) -> None:
    """`p/./y` and `p/y` are two keys: urllib3 made every URL signed here for `p/./y` one
    for `p/y` (RFC 3986 dot segments): a HEAD and a GET answered with the other object,
    and a metadata copy wrote `p/./y`'s bytes over it."""
    store, bucket = writing_store(tmp_path, moto_backend, f"dots-{os.getpid()}", None)
    dotted = {"p/./y": b"dotted", "p/../q": b"up"}
    for key, body in {**dotted, "p/y": b"plain", "q": b"other"}.items():
        moto_backend.client.put_object(Bucket=bucket, Key=key, Body=body)
    for key, body in dotted.items():
        info = store.head(bucket, key)
        assert info.size == len(body) and store.get(bucket, key, info.etag) == body
        store.copy_object(bucket, key, key, info.etag, metadata={"mode": "33152"}, size=info.size)
        assert moto_backend.client.head_object(Bucket=bucket, Key=key)["Metadata"] == {"mode": "33152"}
    for key, body in {"p/y": b"plain", "q": b"other"}.items():
        answer = moto_backend.client.get_object(Bucket=bucket, Key=key)
        assert answer["Body"].read() == body and answer["Metadata"] == {}


@pytest.mark.parametrize("sse", [None, "AES256"])
def test_small_puts_bypass_botocore_once_their_shape_is_checked(
        tmp_path: Path, moto_backend: Backend, sse: str | None) -> None:
    """A small file's upload is a PutObject signed here (putsign.py): botocore cost ~1.3 ms
    of CPU per request, ~3x ours, beside a `cp -r` on the same cores. Conditions, metadata,
    the content type and SSE go as botocore sends them; errors map as botocore's do."""
    store, bucket = writing_store(tmp_path, moto_backend, f"puts-{os.getpid()}-{sse}", sse)
    botocore_calls: list[str] = []
    store.write_client.meta.events.register(
        "before-call.s3", lambda event_name, **_: botocore_calls.append(event_name))
    meta = {"mode": "33188", "mtime": "1700000000.5", "xattr": "%7B%22user.a%22%3A%22b%22%7D"}
    names = ["d/a b+é.txt", "d/plain", "d/~tilde!*'()"]
    etags = {}
    for name in names:
        body = b"bytes of " + name.encode()
        with open(tmp_path / "body", "w+b") as fh:  # as the uploader sends it: a staged file
            fh.write(b"skipped" + body)
            fh.seek(len(b"skipped"))
            etags[name] = store.put_object(bucket, name, fh, content_type="text/x-kept",
                                           metadata=meta, if_none_match="*")
        got = moto_backend.client.get_object(Bucket=bucket, Key=name)
        assert got["Body"].read() == body and got["ETag"].strip('"') == etags[name]
        assert got["Metadata"] == meta and got["ContentType"] == "text/x-kept"
        assert got.get("ServerSideEncryption") == sse
    again = store.put_object(bucket, "d/plain", b"new", if_match=etags["d/plain"])
    assert moto_backend.client.head_object(Bucket=bucket, Key="d/plain")["ETag"].strip('"') == again
    assert botocore_calls == [] and store.request_counts()["PutObject"] == 4
    with pytest.raises(StaleObject):  # 412: If-None-Match on a key that exists
        store.put_object(bucket, "d/plain", b"x", if_none_match="*")
    with pytest.raises(NotFound) as missing:  # 404 with its code, sent once
        store.put_object(f"{bucket}-gone", "k", b"x")
    assert retry.error_code(missing.value)[0] == "NoSuchBucket"
    assert botocore_calls == [] and store.request_counts()["PutObject"] == 6
    big = b"y" * (s3_store.FAST_PUT_LIMIT + 1)  # larger bodies: botocore's
    assert store.put_object(bucket, "big", big) == hashlib.md5(big).hexdigest()
    assert botocore_calls == ["before-call.s3.PutObject"]


def test_a_put_answered_without_an_etag_is_not_sent_again(tmp_path: Path, moto_backend: Backend,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent again through botocore, an If-None-Match PUT met its own object (412) and
    the uploader kept the file as a conflict with itself: the ETag is asked for instead."""
    store, bucket = writing_store(tmp_path, moto_backend, f"noetag-{os.getpid()}", None)
    signed_put = store._fast.put

    def without_etag(what: str, url: str, headers: dict[str, str], body: bytes = b""):  # type: ignore[no-untyped-def]
        status, answer_headers, answer = signed_put(what, url, headers, body)
        return status, {k: v for k, v in answer_headers.items() if k.lower() != "etag"}, answer
    monkeypatch.setattr(store._fast, "put", without_etag)
    etag = store.put_object(bucket, "k", b"once", if_none_match="*")
    assert etag == hashlib.md5(b"once").hexdigest()
    assert store.request_counts()["PutObject"] == 1


@pytest.mark.parametrize("body, etag", [
    (b'<?xml version="1.0"?>\n<CopyObjectResult><LastModified>x</LastModified>'
     b'<ETag>&#34;27daae82&#34;</ETag></CopyObjectResult>', "27daae82"),        # SeaweedFS
    (b'<CopyObjectResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
     b'<ETag>&quot;9b2cf535&quot;</ETag></CopyObjectResult>', "9b2cf535"),        # AWS
    (b"<Error><Code>InternalError</Code></Error>", None),  # a 200 that failed midway
    (b"not xml", None),
])
def test_the_etag_of_a_copy_answer(body: bytes, etag: str | None) -> None:
    assert copy_etag(body) == etag


@pytest.mark.parametrize("size", [4, s3_store.FAST_PUT_LIMIT + 1])  # signed here / botocore's
def test_a_portals_200_to_a_put_is_no_upload(tmp_path: Path, moto_backend: Backend,
                                             monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """A captive portal (or a proxy) on a plain-HTTP link answers the PUT, and the HEAD
    that asks for the missing ETag, with 200 and a page of its own: the bytes counted as
    uploaded and the staging file went (data loss). An answer without an ETag, and a HEAD
    without one, are errors now, retried like a 5xx."""
    store, bucket = writing_store(tmp_path, moto_backend, f"portal-{os.getpid()}-{size}", None)
    page = b"<html>Sign in to the Wi-Fi</html>"
    monkeypatch.setattr(store._fast, "put", lambda *args, **kwargs: (200, {}, page))
    monkeypatch.setattr(store._fast, "head", lambda *args: (200, {"content-length": "33"}))
    store.write_client.meta.events.register(  # botocore's PUT: the portal answers it too
        "before-send.s3.PutObject", lambda **_: botocore.awsrequest.AWSResponse(
            "http://portal", 200, {}, _Raw(page)))
    with pytest.raises(RemoteError, match="a 200 answer without an ETag"):
        store.put_object(bucket, "k", b"x" * size, if_none_match="*")
    assert "Contents" not in moto_backend.client.list_objects_v2(Bucket=bucket)


class _Raw:
    """A botocore raw response body."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: object):  # type: ignore[no-untyped-def]
        yield self._data
