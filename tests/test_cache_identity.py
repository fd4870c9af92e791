"""A cache dir belongs to one S3 (endpoint and, when known, account): another endpoint's
mount is refused (one line, exit 2) and never sends the queued writes of the first one;
default cache dirs are one per endpoint; a cache from before identities is adopted."""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config as BotoConfig

from s3fuse import cli
from s3fuse.cache.identity import (IDENTITY_FILE, Identity, canonical_endpoint, check_identity,
                                   claim, identity_of, read_identity, resolve_cache_dir)
from s3fuse.cache import identity as identity_module
from s3fuse.config import Config, build_config, default_cache_dir, parse_source
from s3fuse.daemon import build
from s3fuse.errors import UsageError
from s3fuse.store.memory import MemoryStore
from s3fuse.upload.journal import Journal
from tests.support.procs import free_ports, kill_group
from tests.test_write_durability import uploads
from tests.test_write_mount import body, keys, sync

AWS = Identity("aws:aws")
MINIO = Identity("http://minio.local:9000")


# ---------------------------------------------------------------- canonical endpoints

@pytest.mark.parametrize("same", [
    "http://minio.local:9000", "http://MinIO.Local:9000/", "HTTP://minio.local.:9000",
    "http://minio.local:9000?x=1#frag", " http://minio.local:9000 "])
def test_equivalent_endpoints_are_one_identity(same: str) -> None:
    assert canonical_endpoint(same) == "http://minio.local:9000"


def test_default_ports_and_paths() -> None:
    assert canonical_endpoint("https://s3.example.com:443/") == "https://s3.example.com"
    assert canonical_endpoint("http://s3.example.com:80") == "http://s3.example.com"
    assert canonical_endpoint("http://h.example/tenant/") == "http://h.example/tenant"
    assert canonical_endpoint("http://[::1]:9000") == "http://[::1]:9000"


@pytest.mark.parametrize("a,b", [
    ("http://minio.local:9000", "http://minio.local:9001"),       # port
    ("http://minio.local:9000", "http://other.local:9000"),       # host
    ("http://minio.local:9000", "https://minio.local:9000"),      # scheme
    ("http://h.example/tenant-a", "http://h.example/tenant-b"),   # path
    ("https://s3.example.com", "https://s3.example.com:8443"),
])
def test_different_endpoints_differ(a: str, b: str) -> None:
    assert canonical_endpoint(a) != canonical_endpoint(b)


def test_aws_is_its_partition() -> None:
    assert {canonical_endpoint(None), canonical_endpoint(None, "eu-west-1"),
            canonical_endpoint(None, "us-east-1"), canonical_endpoint("https://s3.amazonaws.com"),
            canonical_endpoint("https://s3.eu-west-1.amazonaws.com/")} == {"aws:aws"}
    assert canonical_endpoint(None, "cn-north-1") == "aws:aws-cn"
    assert canonical_endpoint("https://s3.cn-northwest-1.amazonaws.com.cn") == "aws:aws-cn"
    assert canonical_endpoint(None, "us-gov-west-1") == "aws:aws-us-gov"
    assert canonical_endpoint("https://s3.us-gov-east-1.amazonaws.com") == "aws:aws-us-gov"
    assert canonical_endpoint("https://s3.amazonaws.com.evil.example") != "aws:aws"


def test_account_comes_from_the_role_and_the_access_key_does_not_count() -> None:
    role = "arn:aws:iam::123456789012:role/reader"
    with_role = identity_of(Config(role_arn=role), {})
    assert with_role == Identity("aws:aws", "123456789012")
    assert with_role != identity_of(Config(role_arn="arn:aws:iam::210987654321:role/reader"), {})
    assert with_role != identity_of(Config(), {})
    assert identity_of(Config(role_arn="arn:aws-cn:iam::123456789012:role/r"), {}).endpoint == "aws:aws-cn"
    assert identity_of(Config(), {"AWS_DEFAULT_REGION": "cn-north-1"}).endpoint == "aws:aws-cn"
    keys_a = build_config({"endpoint_url": "http://minio.local:9000"}, [],
                          {"S3_AWS_ACCESS_KEY_ID": "a", "S3_AWS_SECRET_ACCESS_KEY": "1"})
    keys_b = build_config({"endpoint_url": "http://minio.local:9000"}, [],
                          {"S3_AWS_ACCESS_KEY_ID": "b", "S3_AWS_SECRET_ACCESS_KEY": "2"})
    assert identity_of(keys_a, {}) == identity_of(keys_b, {}) == MINIO


def test_every_endpoint_source_gives_the_same_identity(tmp_path: Path) -> None:
    """The endpoint requests go to is the one the identity names, wherever it was set."""
    url = "http://minio.local:9000"
    toml = tmp_path / "c.toml"
    toml.write_text(f'endpoint_url = "{url}/"\n')
    secrets = tmp_path / "secrets.env"
    secrets.write_text("S3_ENDPOINT = http://MINIO.local:9000\nS3_DOWNLOAD_ACCESS_KEY=r\n"
                       "S3_DOWNLOAD_SECRET_KEY=r\nS3_UPLOAD_ACCESS_KEY=w\nS3_UPLOAD_SECRET_KEY=w\n")
    secrets.chmod(0o600)
    configs = [build_config({"endpoint_url": url}, [], {}),
               build_config({"config": str(toml)}, [], {}),
               build_config({}, [f"endpoint_url={url}"], {}),
               build_config({"secrets_env": str(secrets)}, [], {}),
               *(build_config({}, [], {var: url})
                 for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL", "S3_ENDPOINT"))]
    assert {identity_of(cfg, {}) for cfg in configs} == {MINIO}


def test_an_endpoint_set_in_a_profile_is_the_identity(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """`endpoint_url` in a ~/.aws/config profile: botocore sent every request there, but
    the identity said `aws:aws`, so two profiles of two servers shared one cache (and a
    queued upload went to the wrong server). The identity is where requests go now."""
    from s3fuse.store import botosession
    from s3fuse.store.botosession import profile_endpoint
    from s3fuse.store.s3 import S3Store

    config = tmp_path / "config"
    config.write_text("[profile a]\nendpoint_url = http://127.0.0.1:5101\n"
                      "[profile b]\nservices = lab\n[services lab]\ns3 =\n"
                      "  endpoint_url = http://MINIO.local:9000/\n[profile plain]\nregion = eu-west-1\n")
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))

    def identity(profile: str) -> Identity:
        return identity_of(build_config({"profile": profile}, [], {}, profile_endpoint), {})
    assert identity("a") == Identity("http://127.0.0.1:5101")
    assert identity("b") == MINIO
    assert identity("plain") == AWS
    assert identity("missing") == AWS  # the store says it is missing
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    for profile in ("a", "b"):  # the endpoint botocore's own client of the profile uses
        cfg = build_config({"profile": profile}, [], {}, profile_endpoint)
        own = botosession.session(profile).create_client("s3", region_name="us-east-1")
        assert S3Store(cfg).read_client.meta.endpoint_url == own.meta.endpoint_url


# ---------------------------------------------------------------- the identity file

def test_first_claim_records_and_another_identity_is_refused(tmp_path: Path) -> None:
    claim(tmp_path, MINIO)
    path = tmp_path / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_identity(tmp_path) == MINIO
    claim(tmp_path, MINIO)  # the same one again: fine
    journal = Journal(tmp_path / "journal.sqlite")
    journal.enqueue("b", "k", "", 0, None, op="delete")
    journal.close()
    with pytest.raises(UsageError) as info:
        claim(tmp_path, AWS)
    line = str(info.value)
    assert "\n" not in line and "http://minio.local:9000" in line and "aws:aws" in line
    assert "1 upload(s) queued" in line and "--cache-dir" in line
    assert read_identity(tmp_path) == MINIO  # never overwritten by the refused mount


@pytest.mark.parametrize("text", ["not json", '{"endpoint": "http://x\\n<0>forged", "account": null}',
                                  '{"endpoint": "ftp://x", "account": null}',
                                  '{"endpoint": "aws:aws", "account": "me"}', "[]", "x" * 9000])
def test_a_tampered_identity_file_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / IDENTITY_FILE).write_text(text)
    with pytest.raises(UsageError) as info:
        check_identity(tmp_path, MINIO)
    assert "\n" not in str(info.value) and "forged" not in str(info.value)


def test_a_cache_from_before_identities_is_adopted(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.enqueue("b", "k", "", 0, None, op="delete")
    journal.close()
    with caplog.at_level(logging.INFO, logger="s3fuse.cache.identity"):
        claim(tmp_path, MINIO)
    assert read_identity(tmp_path) == MINIO
    assert [r.getMessage() for r in caplog.records if "adopted" in r.getMessage()] == [
        f"cache dir {tmp_path} predates endpoint identities: adopted for http://minio.local:9000 "
        "(1 queued upload(s) go there)"]


def test_the_daemon_refuses_another_identitys_cache_and_leaves_its_queue(tmp_path: Path) -> None:
    store = MemoryStore()
    store.create_bucket("bkt")
    cfg = Config(mountpoint=tmp_path / "mnt", sources=(parse_source("s3://bkt", "bkt"),),
                 cache_dir=tmp_path / "cache", endpoint_url="http://a.example:9000")
    with ExitStack() as stack:
        build(cfg, stack, store=store)  # type: ignore[arg-type]
    journal = Journal(tmp_path / "cache" / "journal.sqlite")
    journal.enqueue("bkt", "queued.txt", "", 0, None, op="delete")
    journal.close()
    with ExitStack() as stack, pytest.raises(UsageError, match="belongs to http://a.example:9000"):
        build(cfg.with_overrides(endpoint_url="http://b.example:9000"), stack,
              store=store)  # type: ignore[arg-type]
    journal = Journal(tmp_path / "cache" / "journal.sqlite")
    assert [(job.key, job.attempts) for job in journal.pending()] == [("queued.txt", 0)]  # unsent
    journal.close()


# ---------------------------------------------------------------- default cache dirs

@pytest.fixture
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A non-root user's default cache base, in tmp (HOME and XDG_CACHE_HOME there); the
    ownership checks still see who we really are."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real = os.geteuid
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    base = default_cache_dir()
    monkeypatch.setattr(os, "geteuid", real)
    assert base == tmp_path / "xdg" / "s3fuse"
    monkeypatch.setattr(identity_module, "default_cache_dir", lambda: base)
    return base


def test_default_cache_dirs_are_one_per_identity(user_cache: Path) -> None:
    aws = resolve_cache_dir(None, AWS)
    assert aws == user_cache  # the documented default, for the first identity that uses it
    aws.mkdir(parents=True)
    claim(aws, AWS)
    minio = resolve_cache_dir(None, MINIO)
    assert minio.parent == user_cache and minio.name.startswith("minio.local-9000-")
    assert resolve_cache_dir(None, Identity("aws:aws-cn")).name.startswith("aws-")
    minio.mkdir()
    claim(minio, MINIO)  # no refusal: each has its own
    assert resolve_cache_dir(None, AWS) == aws and resolve_cache_dir(None, MINIO) == minio
    assert resolve_cache_dir(Path("/x"), MINIO) == Path("/x")  # a configured one is kept


def test_a_legacy_default_cache_stays_with_the_first_identity_that_mounts_it(user_cache: Path) -> None:
    user_cache.mkdir(parents=True)
    journal = Journal(user_cache / "journal.sqlite")  # queued before the upgrade
    journal.enqueue("b", "k", "", 0, None, op="delete")
    journal.close()
    assert resolve_cache_dir(None, MINIO) == user_cache  # adopted: its queue is not stranded
    claim(user_cache, MINIO)
    assert resolve_cache_dir(None, MINIO) == user_cache
    assert resolve_cache_dir(None, AWS) == user_cache / AWS.slug  # the others get their own


def test_cache_stats_finds_and_shows_the_identity(user_cache: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.local:9000/")
    path = resolve_cache_dir(None, MINIO)
    path.mkdir(parents=True)
    claim(path, MINIO)
    assert cli.main(["cache", "stats", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cache_dir"] == str(path) and result["identity"] == "http://minio.local:9000"
    assert result["queued_uploads"] == 0


# ---------------------------------------------------------------- through real mounts

@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


@pytest.fixture
def other_s3() -> Iterator[tuple[str, Any]]:
    """A second S3 of its own: moto in another process (moto servers of one process share
    their buckets)."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=BotoConfig(s3={"addressing_style": "path"}))
    try:
        yield endpoint, client
    finally:
        kill_group(proc)


@pytest.mark.mount
def test_queued_writes_never_reach_another_endpoint(s3, bucket, mount_factory, proxy, other_s3):
    endpoint_b, s3_b = other_s3
    s3_b.create_bucket(Bucket=bucket)
    a = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="a")
    a.expect_log(r"unreachable|offline|not done at unmount")
    assert os.listdir(a.path(bucket)) == []  # listed online: creating in it works offline
    proxy.cut()
    a.path(bucket, "queued.txt").write_bytes(b"for A only")
    assert uploads(a.mountpoint)["files"] == 1
    a.stop()

    b = mount_factory("--source", f"s3://{bucket}", endpoint=endpoint_b, name="b",
                      cache_dir=a.cache_dir, start=False)
    with pytest.raises(RuntimeError):
        b.start()
    assert b.proc is not None and b.proc.returncode == 2
    lines = b.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert proxy.endpoint in lines[0] and endpoint_b in lines[0] and "--cache-dir" in lines[0]
    assert "1 upload(s) queued" in lines[0] and "testing" not in lines[0]
    background = subprocess.run([sys.executable, "-m", "s3fuse", "mount", str(b.mountpoint),
                                 "--cache-dir", str(a.cache_dir), "--source", f"s3://{bucket}"],
                                env=b.env, capture_output=True, text=True, timeout=60)
    assert background.returncode == 2 and len(background.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(b.mountpoint)
    assert keys(s3_b, bucket) == set()

    proxy.restore()
    again = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="again",
                          cache_dir=a.cache_dir)
    assert sync(again.mountpoint).returncode == 0
    assert body(s3, bucket, "queued.txt") == b"for A only"
    assert keys(s3_b, bucket) == set()


@pytest.mark.mount
def test_a_cache_from_before_identities_keeps_its_queued_uploads(s3, bucket, mount_factory, proxy):
    m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="old")
    m.expect_log(r"unreachable|offline|not done at unmount")
    assert os.listdir(m.path(bucket)) == []
    proxy.cut()
    m.path(bucket, "queued.txt").write_bytes(b"queued before the upgrade")
    m.stop()
    (m.cache_dir / IDENTITY_FILE).unlink(missing_ok=True)  # as a cache from before identities
    proxy.restore()
    again = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="new",
                          cache_dir=m.cache_dir)
    assert sync(again.mountpoint).returncode == 0
    assert body(s3, bucket, "queued.txt") == b"queued before the upgrade"
    assert read_identity(m.cache_dir) == Identity(proxy.endpoint)
    assert "predates endpoint identities: adopted for " + proxy.endpoint in again.log()
