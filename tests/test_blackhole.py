"""S3 black-holed (connections accepted, never answered; or every packet dropped by
iptables): a warm tree is still served within seconds once the metadata TTL has passed,
the mount calls itself offline, and an uncached file fails fast with EHOSTUNREACH.

Before the deadlines (docs/offline.md) the same `ls` took 180 s and `cat` 361 s.
"""
from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.blackhole import BlackHoleProxy

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]

TTL = 1.0
#: A functional deadline (the mount promises ~2 s for a revalidation; generous for CI).
BOUND = 10.0
#: The port the iptables test drops packets to: its own, so nothing else is touched.
IPTABLES_PORT = 47311
DROP = ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(IPTABLES_PORT), "-j", "DROP"]


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    """The black hole sits in front of moto only."""
    return moto_backend


@pytest.fixture
def hole(moto_backend) -> Iterator[BlackHoleProxy]:  # type: ignore[no-untyped-def]
    url = urlsplit(moto_backend.endpoint)
    proxy = BlackHoleProxy(url.hostname or "127.0.0.1", url.port or 80)
    yield proxy
    proxy.close()


@pytest.fixture
def dropping(moto_backend) -> Iterator[tuple[BlackHoleProxy, Callable[[], None]]]:  # type: ignore[no-untyped-def]
    """A plain forwarder on IPTABLES_PORT and a function that makes the kernel drop every
    packet sent to it (SYNs included); the rule is always removed again."""
    url = urlsplit(moto_backend.endpoint)
    proxy = BlackHoleProxy(url.hostname or "127.0.0.1", url.port or 80, port=IPTABLES_PORT)
    added = []

    def drop() -> None:
        subprocess.run(["iptables", "-I", *DROP], check=True)
        added.append(True)
    yield proxy, drop
    if added:
        subprocess.run(["iptables", "-D", *DROP], check=True)
    proxy.close()


def populate(s3, bucket: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    objects = {"warm/a.txt": b"alpha", "warm/sub/b.bin": os.urandom(3 << 20),
               "warm/sub/c.txt": b"charlie", "cold/d.txt": b"delta"}
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    return objects


def walk(root: Path) -> dict[str, bytes]:
    """`ls -R` and `cat` of every file: what a user does with a warm tree."""
    return {str(Path(d, f).relative_to(root)): Path(d, f).read_bytes()
            for d, _, files in os.walk(root) for f in files}


def black_hole_scenario(s3, bucket: str, mount_factory, endpoint: str,  # type: ignore[no-untyped-def]
                        black_hole: Callable[[], None]) -> None:
    objects = populate(s3, bucket)
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", str(TTL), endpoint=endpoint)
    m.expect_log(r"S3 unreachable|offline|no answer|EHOSTUNREACH")
    root = m.path(bucket)
    warm = {k: v for k, v in objects.items() if k.startswith("warm/")}
    assert walk(root / "warm") == {k.removeprefix("warm/"): v for k, v in warm.items()}
    assert os.listdir(root / "cold") == ["d.txt"]            # listed, its bytes never read
    m.assert_idle()                              # the cache writes are done
    warmed = time.monotonic()

    black_hole()
    time.sleep(max(0.0, warmed + TTL * 1.5 - time.monotonic()))  # every entry now stale

    began = time.monotonic()
    assert walk(root / "warm") == {k.removeprefix("warm/"): v for k, v in warm.items()}
    served = time.monotonic() - began
    assert served < BOUND, f"the warm tree took {served:.1f}s"
    assert m.status()["link"]["state"] == "offline"

    began = time.monotonic()
    with pytest.raises(OSError) as info:
        (root / "cold" / "d.txt").read_bytes()
    assert info.value.errno == errno.EHOSTUNREACH, info.value
    assert time.monotonic() - began < BOUND


def test_warm_tree_served_when_s3_accepts_and_never_answers(s3, bucket, mount_factory, hole):
    black_hole_scenario(s3, bucket, mount_factory, hole.endpoint, hole.blackhole)


def test_warm_tree_served_when_every_packet_to_s3_is_dropped(s3, bucket, mount_factory,
                                                             dropping):
    proxy, drop = dropping
    black_hole_scenario(s3, bucket, mount_factory, proxy.endpoint, drop)


def test_link_found_silent_while_the_mount_is_quiet(s3, bucket, mount_factory, hole):
    """S3 black-holed while nothing is asked: the watch (every 2 s with a 4 s TTL) takes
    the link offline on its own, so the next `ls` and `cat` never wait for a deadline."""
    objects = populate(s3, bucket)
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "4", endpoint=hole.endpoint)
    m.expect_log(r"S3 unreachable|offline|no answer")
    root = m.path(bucket)
    warm = {k.removeprefix("warm/"): v for k, v in objects.items() if k.startswith("warm/")}
    assert walk(root / "warm") == warm
    m.assert_idle()

    hole.blackhole()
    began = time.monotonic()
    while m.status()["link"]["state"] != "offline":  # no filesystem request meanwhile
        assert time.monotonic() - began < BOUND, "the quiet mount never noticed"
        time.sleep(0.1)
    assert "no answer from S3" in m.status()["link"]["reason"]
    assert walk(root / "warm") == warm
