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
from s3fuse.errors import NotFound
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
