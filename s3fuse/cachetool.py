"""`s3fuse cache stats|prune|clear`: the cache directory, with or without a daemon on it.

`size_limit` None means the limit the last daemon used (kept in the cache itself).

diskcache and SQLite are safe across processes, so stats and prune work while a
daemon runs; clear refuses then (unless forced), because the daemon holds open
indexes. Nothing here ever touches pending uploads (the staging area). Each command
shows whose cache it is (the endpoint identity, cache/identity.py), so that a cache
meant for another S3 is noticed before it is pruned or cleared.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .cache.blocks import BlockCache
from .cache.cachedir import CacheLock, secure_cache_dir, secure_dir
from .cache.identity import queued_uploads, read_identity
from .cache.meta import MetaStore
from .errors import UsageError


def _open(cache_dir: Path, size_limit: int | None, room: bool = True
          ) -> tuple[BlockCache, MetaStore]:
    """The cache's block stores and listing store; `room`: see BlockCache (prune and
    clear may drop blocks to open a cache on a full disk, stats changes nothing)."""
    if not cache_dir.is_dir():
        raise UsageError(f"no cache at {cache_dir}")
    secure_cache_dir(cache_dir)
    blocks = BlockCache(secure_dir(cache_dir / "blocks"), size_limit, secure_dir(cache_dir / "pinned"),
                        room=room)
    return blocks, MetaStore(cache_dir / "meta.sqlite")


def identity(cache_dir: Path) -> str:
    """Whose cache this is, for people: the recorded endpoint identity."""
    recorded = read_identity(cache_dir)
    return recorded.describe() if recorded else "not recorded yet (the next mount records its own)"


def stats(cache_dir: Path, size_limit: int | None) -> dict[str, Any]:
    """Read only: the limit shown is `size_limit` when given, but not stored (that is the
    next mount's or prune's to do), so stats works on a full disk too."""
    blocks, meta = _open(cache_dir, None, room=False)
    try:
        usage = blocks.usage()
        limit = blocks.size_limit if size_limit is None else size_limit
        counts = meta.counters()
        hits, misses = counts.get("hits", 0), counts.get("misses", 0)
        return {
            "cache_dir": str(cache_dir), "identity": identity(cache_dir),
            "queued_uploads": queued_uploads(cache_dir), "limit": limit, **usage,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "hits": hits, "misses": misses,
            "pins": [{"path": p, "state": s} for p, s in meta.pins()],
            "manifests": len(list((cache_dir / "manifests").glob("*.sqlite"))),
            "in_use_by": CacheLock.holder(cache_dir),
            "pinned_over_limit": usage["pinned"] > limit,
        }
    finally:
        blocks.close()
        meta.close()


def prune(cache_dir: Path, size_limit: int | None, older_than: float | None, max_size: int | None
          ) -> dict[str, Any]:
    if older_than is None and max_size is None:
        raise UsageError("prune needs --older-than and/or --max-size")
    blocks, meta = _open(cache_dir, size_limit)
    try:
        cutoff = None if older_than is None else time.time() - older_than
        removed, freed = blocks.prune(cutoff, max_size)
        return {"identity": identity(cache_dir), "removed_blocks": removed, "freed_bytes": freed,
                **blocks.usage()}
    finally:
        blocks.close()
        meta.close()


def clear(cache_dir: Path, size_limit: int | None, force: bool) -> dict[str, Any]:
    holder = CacheLock.holder(cache_dir)
    if holder is not None and not force:
        raise UsageError(f"cache dir {cache_dir} is in use by pid {holder}: unmount first or use --force")
    blocks, meta = _open(cache_dir, size_limit)
    try:
        before = blocks.usage()
        dropped, dropped_bytes = blocks.dropped_at_open  # to open it on a full disk
        blocks.clear(pinned=True)
        for pin, _state in meta.pins():
            meta.remove_pin(pin)
        return {"identity": identity(cache_dir),
                "freed_bytes": before["used"] + before["pinned"] + dropped_bytes,
                "removed_blocks": before["blocks"] + before["pinned_blocks"] + dropped}
    finally:
        blocks.close()
        meta.close()
