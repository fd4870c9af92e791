"""A GET is bounded by the length asked for: a server (or proxy) that ignores Range, or
an entry (a manifest line) that says 1 byte for a big object, cannot make one read
buffer the whole object. Asserted on tracemalloc's peak, never on a timing."""
from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest
import trio

from s3fuse.cache.blocks import BlockCache
from s3fuse.data.reader import BlockReader
from s3fuse.errors import CorruptData, RemoteError
from s3fuse.model import ObjectRef
from s3fuse.store.presigned import PresignedReader
from tests.support.rangeless import MiB, RangelessServer

T = TypeVar("T")


@pytest.fixture
def server() -> Iterator[RangelessServer]:
    srv = RangelessServer(size=64 * MiB)
    yield srv
    srv.close()


def reader_for(server: RangelessServer) -> PresignedReader:
    return PresignedReader(lambda bucket, key: f"{server.endpoint}/{bucket}/{key}",
                           connect_timeout=2, read_timeout=5, ca_certs=None)


def peak_of(fn: Callable[[], T]) -> tuple[T | BaseException, int]:
    """fn()'s result (or exception) and the peak bytes Python allocated meanwhile."""
    tracemalloc.start()
    try:
        result: T | BaseException = fn()
    except Exception as exc:  # noqa: BLE001 - handed to the test
        result = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, peak


def test_a_range_from_0_is_cut_where_it_ends_when_the_server_sends_everything(server):
    got, peak = peak_of(lambda: reader_for(server).get("b", "k", "e1", 0, MiB))
    assert got == server.pattern                      # the first MiB: exactly what was asked
    assert peak < 3 * MiB, peak                       # the MiB and one copy; not 64 MiB


def test_a_range_further_in_is_an_error_not_the_whole_object(server):
    got, peak = peak_of(lambda: reader_for(server).get("b", "k", "e1", 8 * MiB, 9 * MiB))
    assert isinstance(got, RemoteError) and "more bytes than asked" in str(got), got
    assert peak < MiB, peak


def test_an_entry_saying_1_byte_reads_at_most_the_bound_and_fails(server, tmp_path: Path):
    """A manifest line declaring 1 byte for a 64 MiB object: EIO (CorruptData), having
    read 2 bytes (the one asked for, and one to see there are more), not 64 MiB."""
    reader = BlockReader(reader_for(server), BlockCache(tmp_path / "blocks", 256 * MiB))  # type: ignore[arg-type]
    ref = ObjectRef("b", "k", "e1", 1)
    got, peak = peak_of(lambda: trio.run(reader.read, ref, 0, 4096))
    assert isinstance(got, CorruptData) and "not the size its entry says" in str(got), got
    assert got.errno == 5  # EIO
    assert peak < 4 * MiB, peak


def test_a_whole_object_said_to_be_over_the_limit_is_not_read(server):
    """A published index's GET (`get_whole`) of an object whose Content-Length is over the
    allowance: refused on that, not after reading the allowance (32 MiB and more)."""
    reader = reader_for(server)
    got, peak = peak_of(lambda: reader.get_whole("GetObject b/k", f"{server.endpoint}/b/k",
                                                 "e1", 4 * MiB))
    assert isinstance(got, RemoteError) and "more than" in str(got), got
    assert peak < 256 << 10, peak
