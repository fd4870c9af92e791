"""A bucket (or prefix) as a directory tree, split by job into one module each.

Each directory is listed once per TTL, whole and paginated, into the metadata store;
lookups, stats and readdir are then answered from there (negative lookups included),
so `find` costs one listing per directory. Listings and stats that cannot be
refreshed because S3 is unreachable are served as last seen. Local changes show at
once, before their upload lands.

The parts, each given only what it needs (no part reaches into another's state):

- keys.py: path <-> S3 key, the listing store's id (shared vocabulary);
- ingest.py: one directory's ListObjectsV2 pages -> its entries, in bounded memory;
- listing.py: listing and revalidation: stored listings, TTL,
  single-flight refresh, list-ahead, uploads learned while a listing is in flight,
  HEAD revalidation, stored listings served offline, in a 5xx storm or on a full disk;
- pending.py: the view of pending uploads: the overlay laid over listings (GONE for
  local removals), and what the listings learn when an upload lands;
- mutations.py: create, open for writing, setattr, unlink, mkdir, rmdir, rename;
- namespace.py: BucketTree, the Namespace contract answered by composing the three;
- learned.py, localsource.py: the log of learned changes, handles on local bytes.
"""
from __future__ import annotations

from .ingest import entries_from_pages
from .listing import LIST_AHEAD
from .mutations import RENAME_DIR_LIMIT
from .namespace import BucketTree, ReadOnlyBucketTree
from .pending import GONE

__all__ = ["BucketTree", "GONE", "LIST_AHEAD", "RENAME_DIR_LIMIT", "ReadOnlyBucketTree",
           "entries_from_pages"]
