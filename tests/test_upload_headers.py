"""A new version of an object keeps what the version it replaces held (content type,
Cache-Control and the other kept headers, other tools' user metadata), as s3fs does;
digests of the old bytes go, a content type that says nothing gives way to the name's.
New files and `dir/` markers get a type from their name. Against the in-memory store."""
from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from s3fuse.errors import AccessDenied
from s3fuse.posix import Posix, to_headers
from s3fuse.store.memory import MemoryStore
from s3fuse.upload import Uploader
from s3fuse.upload.headers import DIRECTORY_TYPE, carried, content_type
from tests.test_upload import upload_queue
from tests.test_upload_posix import B, SEC, meta, synced

SITE = {"CacheControl": "max-age=60", "ContentDisposition": "inline"}
FOREIGN = {"project": "apollo", "md5chksum": "abc==", "mode": "33188", "permissions": "420"}


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore(min_part_size=1 << 20)
    memory.create_bucket(B)
    return memory


async def rewritten(queue: Any, key: str, data: bytes, expected: str,
                    posix: Posix | None) -> None:
    staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
    await trio.to_thread.run_sync(path.write_bytes, data)
    await queue.submit(B, key, staging_id, expected, posix)
    await synced(queue)


@pytest.mark.parametrize("size", [10, 3 << 20], ids=["put", "multipart"])
async def test_a_rewrite_keeps_the_headers_and_other_metadata_of_the_old_version(
        tmp_path: Path, store: MemoryStore, size: int) -> None:
    etag = store.put_object(B, "site/index.html", b"<p>old</p>",
                            content_type="text/html; charset=utf-8", metadata=FOREIGN,
                            headers=SITE)
    async with upload_queue(tmp_path, store, uploader=lambda s, j, st: Uploader(
            s, j, st, threshold=1 << 20, part_size=1 << 20)) as queue:
        await rewritten(queue, "site/index.html", b"n" * size, etag, meta(0o600))
    info = store.head(B, "site/index.html")
    assert info.size == size and info.content_type == "text/html; charset=utf-8"
    assert store.headers(B, "site/index.html") == SITE
    assert info.metadata["project"] == "apollo"
    assert "md5chksum" not in info.metadata  # it described the old bytes
    assert "permissions" not in info.metadata  # another tool's POSIX field: ours wins
    assert info.metadata["mode"] == str(stat.S_IFREG | 0o600)


async def test_a_type_that_says_nothing_gives_way_to_the_name(tmp_path: Path,
                                                             store: MemoryStore) -> None:
    etag = store.put_object(B, "data.json", b"{}", metadata={"project": "apollo"})
    assert store.head(B, "data.json").content_type == "binary/octet-stream"  # S3's default
    async with upload_queue(tmp_path, store) as queue:
        await rewritten(queue, "data.json", b'{"a": 1}', etag, meta())
    info = store.head(B, "data.json")
    assert info.content_type == "application/json" and info.metadata["project"] == "apollo"


async def test_new_files_and_markers_get_the_type_of_their_name(tmp_path: Path,
                                                                store: MemoryStore) -> None:
    async with upload_queue(tmp_path, store) as queue:
        await rewritten_new(queue, "new.csv", b"a,b\n")
        await rewritten_new(queue, "dir/", b"")
    assert store.head(B, "new.csv").content_type == "text/csv"
    assert store.head(B, "dir/").content_type == DIRECTORY_TYPE == content_type("x/")
    assert store.headers(B, "new.csv") == {}


async def rewritten_new(queue: Any, key: str, data: bytes) -> None:
    staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
    await trio.to_thread.run_sync(path.write_bytes, data)
    await queue.submit(B, key, staging_id, None, meta())
    await synced(queue)


def test_posix_metadata_wins_when_both_would_not_fit(store: MemoryStore) -> None:
    """S3 keeps 2 KiB of user metadata: the POSIX fields are what the mount needs."""
    etag = store.put_object(B, "k", b"x", metadata={"big": "v" * 2000})
    posix = to_headers(meta())
    kept_type, extra = carried(store, B, "k", etag, posix)
    assert kept_type is None and extra == {"metadata": posix}


def test_a_version_whose_headers_cannot_be_read_is_replaced_without_them(
        store: MemoryStore, caplog: pytest.LogCaptureFixture) -> None:
    class WriteOnly(MemoryStore):
        def headers_of(self, bucket: str, key: str, etag: str) -> None:
            raise AccessDenied(f"HeadObject s3://{bucket}/{key}: access denied")
    posix = to_headers(Posix(mode=stat.S_IFREG | 0o644, mtime_ns=SEC))
    assert carried(WriteOnly(), B, "k", "etag", posix) == (None, {"metadata": posix})
    assert "cannot be read" in caplog.text
