"""Shared fixtures: moto's real HTTP server, buckets, and live mounts."""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import boto3
import pytest

from tests.support.mount import Mount, s3_env
from tests.support.faultproxy import FaultProxy
from tests.support.proxy import CuttableProxy

_bucket_ids = itertools.count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class Backend:
    """An S3 server the tests talk to: moto (fast) or SeaweedFS (a real server)."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    client: Any

    def env(self) -> dict[str, str]:
        return s3_env(self.endpoint, self.access_key, self.secret_key)


def _client(endpoint: str, access_key: str, secret_key: str) -> Any:
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="session")
def moto_backend(moto_endpoint: str) -> Backend:
    return Backend("moto", moto_endpoint, "testing", "testing",
                   _client(moto_endpoint, "testing", "testing"))


@pytest.fixture(scope="session")
def seaweedfs_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from tests.support.seaweedfs import SeaweedFS

    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as weed:
        yield Backend("seaweedfs", weed.endpoint_url, weed.access_key, weed.secret_key,
                      _client(weed.endpoint_url, weed.access_key, weed.secret_key))


@pytest.fixture(params=["moto", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each mount test runs against moto's HTTP server and against SeaweedFS."""
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture
def s3(backend: Backend) -> Any:
    return backend.client


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket per test."""
    name = f"test-{os.getpid()}-{next(_bucket_ids)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(moto_backend: Backend) -> Iterator[CuttableProxy]:
    """A cuttable TCP proxy in front of moto: `endpoint=proxy.endpoint` for offline tests."""
    target = urlsplit(moto_backend.endpoint)
    p = CuttableProxy(target.hostname or "127.0.0.1", target.port or 80)
    yield p
    p.close()


@pytest.fixture
def faults(moto_backend: Backend) -> Iterator[FaultProxy]:
    """The fault-injecting HTTP proxy in front of moto: `endpoint=faults.endpoint`."""
    p = FaultProxy(moto_backend.endpoint)
    yield p
    p.close()


@pytest.fixture
def fuse_available() -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (make test installs fuse3)")


@pytest.fixture
def mount_factory(tmp_path: Path, backend: Backend, fuse_available: None
                  ) -> Iterator[Callable[..., Mount]]:
    """mount_factory(*args, endpoint=..., name=...) -> a started Mount; all stopped at teardown."""
    mounts: list[Mount] = []

    def make(*args: str, endpoint: str | None = None, name: str = "m", start: bool = True,
             cache_dir: Path | None = None, env: dict[str, str] | None = None) -> Mount:
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        m = Mount(base / "mnt", cache_dir or base / "cache", base / "daemon.log",
                  env or (s3_env(endpoint, backend.access_key, backend.secret_key) if endpoint
                          else backend.env()), list(args))
        mounts.append(m)
        return m.start() if start else m

    yield make
    problems = []
    for m in mounts:
        m.stop()
        bad = m.unexpected_log_lines()
        if bad:
            problems.append(f"{m.mountpoint}: unexpected daemon log lines:\n" + "\n".join(bad[:20]))
    assert not problems, "\n".join(problems)


@pytest.fixture
def public_base() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is 0700 to root only)."""
    base = Path(tempfile.mkdtemp(prefix="s3fuse-sec-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def restore_umask() -> Iterator[None]:
    """The CLI sets umask 077 for the process (its cache and log are private): a test that
    runs it in-process must not leave that to the tests after it (they create directories
    other users must traverse)."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
