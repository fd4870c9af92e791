"""A bucket tree over a store, with the real write-back stack (queue, overlay, supervisor):
for tests of what the tree shows while uploads and listings race."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import AsyncIterator

import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.cache.overlay import Overlay
from s3fuse.config import parse_source
from s3fuse.posix import Posix
from s3fuse.store.memory import MemoryStore
from s3fuse.tree.bucket import BucketTree
from s3fuse.upload.queue import UploadQueue
from s3fuse.upload.writeback import WriteBack
from s3fuse.util.supervisor import Supervisor
from tests.test_upload import upload_queue


@contextlib.asynccontextmanager
async def bucket_tree(tmp_path: Path, store: MemoryStore, bucket: str,
                      kind: type[BucketTree] = BucketTree
                      ) -> AsyncIterator[tuple[BucketTree, UploadQueue]]:
    """A `kind` of tree of s3://`bucket` (TTL 60 s) and the queue its changes go to."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    try:
        async with upload_queue(tmp_path, store) as queue, trio.open_nursery() as nursery:
            background = Supervisor()
            background.bind(nursery)
            writes = WriteBack(queue, queue.staging, Overlay())
            await writes.start()
            yield kind(parse_source(f"s3://{bucket}"), store, meta, None,  # type: ignore[arg-type]
                       ttl=60, list_limiter=trio.CapacityLimiter(8), background=background,
                       writes=writes), queue
            nursery.cancel_scope.cancel()
    finally:
        meta.close()


def posix(kind: int, mode: int = 0o644, owner: int = 0) -> Posix:
    """Metadata of a node of type `kind` made now, owned by `owner` (uid and gid)."""
    now = time.time_ns()
    return Posix(mode=kind | mode, uid=owner, gid=owner, mtime_ns=now, ctime_ns=now,
                 atime_ns=now)
