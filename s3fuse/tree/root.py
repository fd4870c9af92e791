"""The top level: configured sources under their names, or every listable bucket.

Namespaces get a small index, stable for the life of the mount, which the inode
table uses to address (namespace, path) pairs.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import trio

from ..cache.meta import MetaStore
from ..config import SourceSpec
from ..errors import Offline
from ..model import Entry
from ..store.s3 import S3Store
from ..util.flight import SingleFlight
from .base import Namespace, static_base

log = logging.getLogger(__name__)

ROOT_NS = "root"


class RootTree:
    """Composes namespaces under the top-level names."""

    def __init__(self, namespaces: list[Namespace], *, store: S3Store, meta: MetaStore, ttl: float,
                 bucket_factory: Callable[[SourceSpec], Namespace] | None = None):
        self._namespaces: list[Namespace] = []
        self._index: dict[str, int] = {}
        for ns in namespaces:
            self._add(ns)
        self._store = store
        self._meta = meta
        self._ttl = ttl
        self._bucket_factory = bucket_factory  # set: auto mode, every listable bucket
        self._flight: SingleFlight[None] = SingleFlight()

    @property
    def auto(self) -> bool:
        return self._bucket_factory is not None

    def get(self, index: int) -> Namespace:
        return self._namespaces[index]

    async def entries(self) -> list[Entry]:
        if self.auto:
            return await self._refresh_buckets()
        now = time.time()
        return [Entry(ns.name, True, 0, 0, "", now) for ns in sorted(self._namespaces, key=lambda n: n.name)]

    async def find(self, name: str) -> int | None:
        """The index of the namespace called `name`, or None."""
        if self.auto and not any(e.name == name for e in await self._refresh_buckets()):
            return None
        return self._index.get(name)

    async def _refresh_buckets(self) -> list[Entry]:
        """The current bucket list (TTL-cached, persisted); registers new buckets."""
        listed_at = self._meta.listed_at(ROOT_NS, "")
        if listed_at is None or time.time() - listed_at >= self._ttl:
            try:
                await self._flight.run("", self._list_buckets)
            except Offline:
                if listed_at is None:
                    raise
        entries = self._meta.entries(ROOT_NS, "")
        for entry in entries:
            if entry.name not in self._index:
                self._add(self._bucket_factory(SourceSpec(entry.name, entry.name, "")))  # type: ignore[misc]
        return entries

    async def _list_buckets(self) -> None:
        def fetch() -> None:
            now = time.time()
            names = self._store.list_buckets()
            self._meta.replace_listing(ROOT_NS, "", [Entry(n, True, 0, 0, "", now) for n in names], now)
        await trio.to_thread.run_sync(fetch)

    def _add(self, ns: Namespace) -> None:
        index = len(self._namespaces)
        if getattr(ns, "indexed", False):  # it numbers its own inodes from this base
            ns.inode_base = static_base(index)
        self._index[ns.name] = index
        self._namespaces.append(ns)
