"""Shared fixtures: moto's real HTTP server, buckets, and live mounts."""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Callable, Iterator

import boto3
import pytest

from tests.support.mount import Mount, s3_env

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


@pytest.fixture(scope="session")
def s3(moto_endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def bucket(s3) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty bucket per test."""
    name = f"test-{os.getpid()}-{next(_bucket_ids)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def fuse_available() -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (make test installs fuse3)")


@pytest.fixture
def mount_factory(tmp_path: Path, moto_endpoint: str, fuse_available: None
                  ) -> Iterator[Callable[..., Mount]]:
    """mount_factory(*args, endpoint=..., name=...) -> a started Mount; all stopped at teardown."""
    mounts: list[Mount] = []

    def make(*args: str, endpoint: str | None = None, name: str = "m", start: bool = True,
             cache_dir: Path | None = None, env: dict[str, str] | None = None) -> Mount:
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        m = Mount(base / "mnt", cache_dir or base / "cache", base / "daemon.log",
                  env or s3_env(endpoint or moto_endpoint), list(args))
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
