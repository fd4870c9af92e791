"""Credentials of every kind against moto, and never a secret in logs or status."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3fuse.config import build_config
from s3fuse.errors import Offline
from s3fuse.store.s3 import S3Store

SECRET = "VerySecretKey0123456789abcdefXYZ"


def test_s3exchange_environment_is_understood():
    cfg = build_config({}, [], {"S3_ENDPOINT_URL": "http://ex:9", "S3_REGION": "garage",
                                "S3_AWS_ACCESS_KEY_ID": "ak", "S3_AWS_SECRET_ACCESS_KEY": "sk"})
    assert cfg.endpoint_url == "http://ex:9" and cfg.region == "garage"
    assert cfg.read_keys.access_key == "ak" and cfg.write_keys.secret_key == "sk"


def test_assumed_role_is_used_and_refreshed(moto_backend, monkeypatch: pytest.MonkeyPatch):
    for name, value in moto_backend.env().items():
        monkeypatch.setenv(name, value)
    cfg = build_config({"endpoint_url": moto_backend.endpoint, "region": "us-east-1",
                        "role_arn": "arn:aws:iam::123456789012:role/reader",
                        "role_session_duration": "900"}, [], os.environ)
    store = S3Store.from_config(cfg)
    creds = store._session.get_credentials()
    first = creds.get_frozen_credentials()
    assert first.access_key != moto_backend.access_key and first.token   # temporary credentials
    moto_backend.client.create_bucket(Bucket="role-bucket")
    assert "role-bucket" in store.list_buckets()
    creds._expiry_time = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)
    assert creds.get_frozen_credentials().access_key != first.access_key   # refreshed before expiry


def test_an_unreachable_sts_does_not_stop_the_start(moto_backend, proxy,
                                                     monkeypatch: pytest.MonkeyPatch):
    """On a train: S3 and STS unreachable when the mount starts with --role-arn. It failed
    to start (refused connections) or hung for minutes (a black hole); now it starts
    with expired credentials, every request fails as offline (the cache serves), and
    the role is assumed once STS answers."""
    for name, value in moto_backend.env().items():
        monkeypatch.setenv(name, value)
    moto_backend.client.create_bucket(Bucket="train-bucket")
    cfg = build_config({"endpoint_url": proxy.endpoint, "region": "us-east-1",
                        "role_arn": "arn:aws:iam::123456789012:role/reader"}, [], os.environ)
    proxy.cut()
    store = S3Store.from_config(cfg)
    with pytest.raises(Offline):
        store.list_buckets()
    proxy.restore()
    assert store.probe()  # the daemon's link probe: S3 (and STS) answer again
    assert "train-bucket" in store.list_buckets()
    assert store._session.get_credentials().get_frozen_credentials().token  # the role's


def test_secrets_never_reach_logs_or_status(tmp_path: Path, moto_backend, mount_factory):
    bucket = "secret-test"
    moto_backend.client.create_bucket(Bucket=bucket)
    moto_backend.client.put_object(Bucket=bucket, Key="f.txt", Body=b"x")
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"S3_ENDPOINT={moto_backend.endpoint}\nS3_DOWNLOAD_ACCESS_KEY=readerkey\n"
                       f"S3_DOWNLOAD_SECRET_KEY={SECRET}\nS3_UPLOAD_ACCESS_KEY=writerkey\n"
                       f"S3_UPLOAD_SECRET_KEY={SECRET}W\n")
    secrets.chmod(0o600)
    env = {k: v for k, v in moto_backend.env().items() if not k.startswith("AWS_ACCESS")
           and not k.startswith("AWS_SECRET")}
    m = mount_factory("--secrets-env", str(secrets), "--source", f"s3://{bucket}", "--log-level", "DEBUG",
                      env=env)
    assert m.path(bucket, "f.txt").read_bytes() == b"x"
    assert not m.path(bucket, "missing").exists()
    status = subprocess.run([sys.executable, "-m", "s3fuse", "status", "--json", str(m.mountpoint)],
                            env=env, capture_output=True, text=True).stdout
    m.stop()
    for text in (status, m.log(), (m.cache_dir / "meta.sqlite").read_bytes().decode("latin-1")):
        assert SECRET not in text
    loose = tmp_path / "loose.env"
    loose.write_text(secrets.read_text())
    loose.chmod(0o644)
    res = subprocess.run([sys.executable, "-m", "s3fuse", "mount", str(m.mountpoint), "--secrets-env",
                          str(loose)], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "group/others" in res.stderr and SECRET not in res.stderr


def test_an_unreachable_endpoint_is_named_without_its_path_or_credentials():
    """A profile's role with STS down showed `ListObjectsV2 ...: S3 unreachable` in
    `status`, though S3 answered: the host that did not answer is named now."""
    import botocore.exceptions

    from s3fuse.store.s3 import translate
    sts = botocore.exceptions.EndpointConnectionError(endpoint_url="https://sts.amazonaws.com/")
    assert str(translate(sts, "ListObjectsV2 s3://dev/")) == (
        "ListObjectsV2 s3://dev/: S3 unreachable (EndpointConnectionError: https://sts.amazonaws.com)")
    s3 = botocore.exceptions.ConnectTimeoutError(endpoint_url="http://user:pw@h:9/b/k?acl=1")
    assert str(translate(s3, "GET")) == "GET: S3 unreachable (ConnectTimeoutError: http://h:9)"
