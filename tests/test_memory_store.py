"""The fake store's fault injection (its S3 semantics are in test_store_contract.py)."""
from __future__ import annotations

import time

import pytest

from s3fuse.errors import AccessDenied, NotFound, Offline, RemoteError, StaleObject
from s3fuse.store import retry
from s3fuse.store.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket("b")
    return memory


def test_faults_hit_the_next_calls_of_an_operation_under_a_prefix(store: MemoryStore) -> None:
    store.fail("PutObject", times=2, prefix="out/")
    store.put_object("b", "in/a", b"1")  # another prefix: not affected
    for _ in range(2):
        with pytest.raises(RemoteError) as info:
            store.put_object("b", "out/a", b"1")
        assert retry.error_code(info.value) == ("SlowDown", 503)
        assert not retry.is_permanent(info.value)
    store.put_object("b", "out/a", b"1")
    assert store.objects("b") == {"in/a": b"1", "out/a": b"1"}
    assert store.request_counts()["PutObject"] == 4  # failed calls count as requests

    store.fail("*", error="permanent")
    with pytest.raises(AccessDenied) as denied:
        store.head("b", "in/a")
    assert retry.is_permanent(denied.value)
    store.fail("HeadObject", error=lambda what: NotFound(f"{what}: injected"))
    with pytest.raises(NotFound, match="injected"):
        store.head("b", "in/a")
    store.fail("GetObject", times=5)
    store.clear_faults()
    assert store.get("b", "in/a", "") == b"1"


def test_offline_fails_fast_until_the_probe_finds_s3_again(store: MemoryStore) -> None:
    store.fail("PutObject", error="offline")
    with pytest.raises(Offline):
        store.put_object("b", "k", b"x")
    assert not store.link.online
    with pytest.raises(Offline):  # fast: not even counted as a request
        store.head("b", "k")
    assert "HeadObject" not in store.request_counts()
    assert store.probe() and store.link.online

    store.reachable = False
    with pytest.raises(Offline):
        store.list_buckets()
    assert not store.probe() and not store.link.online
    store.reachable = True
    assert store.probe() and store.list_buckets() == ["b"]


def test_latency(store: MemoryStore) -> None:
    store.latency = 0.05
    began = time.monotonic()
    store.put_object("b", "k", b"x")
    assert time.monotonic() - began >= 0.05


def test_servers_that_ignore_or_refuse_conditional_writes(store: MemoryStore) -> None:
    etag = store.put_object("b", "k", b"one")
    store.conditions = "ignore"
    store.put_object("b", "k", b"two", if_match="not-it")  # overwritten although it changed
    store.put_object("b", "k", b"three", if_none_match="*")
    store.delete_object("b", "k", if_match=etag)
    assert store.objects("b") == {}

    store.conditions = "refuse"
    with pytest.raises(RemoteError) as refused:
        store.put_object("b", "k", b"four", if_none_match="*")
    assert retry.error_code(refused.value) == ("NotImplemented", 501)
    store.put_object("b", "k", b"four")

    store.conditions = "honour"
    with pytest.raises(StaleObject):
        store.put_object("b", "k", b"five", if_none_match="*")
