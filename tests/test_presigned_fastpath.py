"""The fast presigned path really runs: GETs and listings are signed by store/presigned.py
and sent without botocore. It reaches the credentials through botocore's private
request signer, so a botocore release that moves them would silently send every
request the slow way; this test then fails (pyproject.toml bounds botocore for it)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from s3fuse.config import Config, KeyPair
from s3fuse.errors import NotFound, StaleObject
from s3fuse.store.copysign import copy_etag
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


@pytest.mark.parametrize("sse", [None, "AES256"])
def test_metadata_copies_bypass_botocore_once_their_shape_is_checked(
        tmp_path: Path, moto_backend: Backend, sse: str | None) -> None:
    """A chmod of an uploaded file is a CopyObject onto itself: signed here (copysign.py),
    after one check per request shape that botocore signs it the same way."""
    bucket = f"copies-{os.getpid()}-{sse}"
    moto_backend.client.create_bucket(Bucket=bucket)
    keys = KeyPair(moto_backend.access_key, moto_backend.secret_key)
    store = S3Store(Config(endpoint_url=moto_backend.endpoint, region="us-east-1",
                           addressing_style="path", read_keys=keys, write_keys=keys,
                           cache_dir=tmp_path, sse=sse))
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
