"""POSIX metadata a listing does not give: HEADs in parallel batches, only when needed, stored.

One job of the bucket namespace (see tree/bucket/__init__.py for the split): an entry
whose metadata is unknown (posix None: ListObjectsV2 returns no headers) gets it when a
lookup or stat needs it (a symlink must never first show as a regular file), never for
a readdir, so `find` over files sends no HEAD. The first unknown file of a directory
HEADs up to BATCH following unknown files at once: `ls -l` of 1,000 cold files is ~16
rounds of parallel HEADs, not 1,000 sequential ones. Results are stored (meta.sqlite):
a remount with the same cache sends none again.

Directories keep theirs on their marker `dir/`. A directory's own listing shows whether
it has one (tree walks list it anyway): none means no metadata, without a request; one
is HEADed. So a directory with unknown metadata is listed first (once per TTL, as
`find`, `ls -R` or `du` would), then its marker HEADed only if it exists.

A lookup never waits longer than a revalidation does (listing.REVALIDATE_WAIT) for S3 to
start answering: the entry then shows the defaults (posix still None), the link goes
offline and the HEADs finish in the background. Offline: the defaults at once.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from ...data.reader import BlockReader
from ...errors import CacheFull, NotFound, RemoteError, S3FuseError, StaleObject
from ...model import Entry, ObjectRef
from ...names import join
from ...store.protocol import ObjectInfo, Store
from ...util.supervisor import LIST_AHEAD as HEAD_TASK, Supervisor
from .keys import BucketKeys
from .listing import REVALIDATE_WAIT, Listings, headed_entry

log = logging.getLogger(__name__)

#: Files up to this size are fetched whole (a GET) instead of HEADed: the answer has the
#: headers too, and the bytes a `cat` would fetch next.
WHOLE_GET = 64 << 10
#: Directories remembered as being read (see PosixHeads.reading).
READING_DIRS = 64
#: Unknown files HEADed by the first lookup that needs one (and S3 requests of this
#: module in flight per tree: the connection pool holds 64).
BATCH = 64
#: A walk in name order (`ls -l`, `rsync`) that reaches a batch starts the next one,
#: twice as large, up to this: the HEADs keep running ahead of the walk instead of
#: stopping it at every batch boundary (read-ahead, as for blocks).
MAX_BATCH = 256
#: Directories whose walk is followed at once.
WALKS = 16
#: HEAD answers stored together (one transaction): fewer when a lookup waits for one.
STORE_GROUP = 16


@dataclass(eq=False)
class _Walk:
    """Lookups in name order through a directory (`ls -l`, `rsync`): a lookup of
    `trigger` or later starts the next batch, after `last`."""

    trigger: str
    last: str
    size: int


@dataclass(eq=False)
class _Batch:
    """HEADs sent together; waiters give up on `answered` after REVALIDATE_WAIT."""

    answered: trio.Event = field(default_factory=trio.Event)  # S3 answered one of them
    settled: set[str] = field(default_factory=set)  # names stored (or failed)
    waiting: dict[str, trio.Event] = field(default_factory=dict)  # per name a lookup waits on
    stored: dict[str, Entry] = field(default_factory=dict)  # answered, as stored (the waiter's)

    async def wait(self, name: str) -> None:
        """Until `name` is stored (or failed). An event only for a lookup that waits:
        most lookups of a walk find their answer stored already."""
        if name not in self.settled:
            await self.waiting.setdefault(name, trio.Event()).wait()

    def settle(self, names: Iterable[str]) -> None:
        for name in names:
            self.settled.add(name)
            event = self.waiting.pop(name, None)
            if event is not None:
                event.set()


@dataclass(eq=False)
class _Group:
    """One group of a batch's answers, as stored (_store_group) for the loop to wake
    their waiters (_stored)."""

    names: list[str]                                    # every name answered for
    answered: bool = False                              # S3 answered (not all errors)
    stored: list[Entry] = field(default_factory=list)   # answers stored
    gone: list[Entry] = field(default_factory=list)     # S3 has them no more


class PosixHeads:
    """Looks up the POSIX metadata of one bucket tree's entries when it is unknown."""

    def __init__(self, keys: BucketKeys, store: Store, listings: Listings, *, enabled: bool,
                 background: Supervisor, reader: BlockReader | None = None):
        self._keys = keys
        self._reader = reader
        self._store = store
        self._listings = listings
        self.enabled = enabled  # False: --no-posix-metadata, never a HEAD for metadata
        self._background = background
        self._limiter = trio.CapacityLimiter(BATCH)
        self._pending: dict[tuple[str, str], _Batch] = {}
        self._reading: dict[str, None] = {}  # directories a file was read in, oldest first
        self._walks: dict[str, _Walk] = {}    # per directory, oldest first

    async def complete(self, parent: str, entry: Entry, *, for_change: bool = False
                       ) -> Entry | None:
        """`entry` (of `parent`) with its POSIX metadata, looked up when unknown; None
        when S3 has it no more. Still unknown (posix None: the defaults show) when it
        cannot be looked up now: disabled, offline, or no answer within REVALIDATE_WAIT.
        `for_change`: a node about to be changed (chmod, touch, a rewrite) is looked up
        even when disabled (--no-posix-metadata), alone (a directory: its marker): the
        change is made on what S3 stores (the defaults shown would replace another tool's
        mode, owner and times)."""
        if not self.enabled and not for_change:
            return entry
        walk = self._walks.get(parent) if self.enabled else None
        if walk is not None and entry.name >= walk.trigger and self._store.link.online:
            await self._read_ahead(parent, walk)
        if entry.posix is not None:
            return entry
        if entry.is_dir:
            listed = await self._marker_listed(join(parent, entry.name))
            entry = self._listings.entry(parent, entry.name) or entry
            if entry.posix is not None or not listed:
                return entry
        if not self._store.link.online:
            return entry
        batch = self._pending.get((parent, entry.name))
        if batch is None:
            started = self._start(parent, [entry], BATCH if self.enabled else 1)
            if len(started[1]) > 1:  # a second lookup in name order is a walk: read ahead
                self._walk(parent, _Walk(started[1][1].name, started[1][-1].name, BATCH))
            batch = await self._launch(parent, started)
        if not batch.answered.is_set():
            with trio.move_on_after(REVALIDATE_WAIT):
                await batch.answered.wait()
        if not batch.answered.is_set():
            self._store.link.failed(f"HeadObject {self._keys.uri(self._key(parent, entry))}: "
                                    f"no answer within {REVALIDATE_WAIT:g}s")
            return entry
        await batch.wait(entry.name)
        stored = batch.stored.pop(entry.name, None)
        return stored if stored is not None else self._listings.entry(parent, entry.name)

    def _walk(self, parent: str, walk: _Walk) -> None:
        self._walks.pop(parent, None)
        self._walks[parent] = walk
        if len(self._walks) > WALKS:
            del self._walks[next(iter(self._walks))]

    async def _read_ahead(self, parent: str, walk: _Walk) -> None:
        """The walk reached the newest batch: HEAD the next unknown files, twice as many
        (up to MAX_BATCH), so that one batch is always on its way ahead of the walk."""
        after = [e for e in self._listings.unknown_after(parent, walk.last, MAX_BATCH + 1)
                 if e.name > walk.last and not e.is_dir]
        size = min(walk.size * 2, MAX_BATCH)
        started = self._start(parent, after, size) if after else None
        if started is None or not started[1]:
            self._walks.pop(parent, None)  # nothing unknown left: the walk is over
            return
        items = started[1]
        walk.trigger, walk.last, walk.size = items[0].name, items[-1].name, size
        await self._launch(parent, started)

    async def _marker_listed(self, path: str) -> bool:
        """List directory `path` (unless its listing is fresh): that records on its entry
        whether it has a marker. False when it could not be listed (offline, no answer)."""
        try:
            await self._listings.ensure(path)
        except S3FuseError as exc:
            log.debug("listing %s for its marker: %s", self._keys.dir_prefix(path), exc)
            return False
        return True

    def _key(self, parent: str, entry: Entry) -> str:
        path = join(parent, entry.name)
        return self._keys.dir_prefix(path) if entry.is_dir else self._keys.key(path)

    def _start(self, parent: str, first: list[Entry], size: int
               ) -> tuple[_Batch, list[Entry]]:
        """A batch of `first` and, for files, the unknown files that follow, `size` in all
        (run in the background: a waiter that gives up leaves them going)."""
        items = first[:1] if first[0].is_dir else [
            e for e in first if not e.is_dir and (parent, e.name) not in self._pending][:size]
        if items and not items[0].is_dir and len(items) < size:
            items += [e for e in self._listings.unknown_after(parent, items[-1].name, size)
                      if not e.is_dir and e.name > items[-1].name
                      and (parent, e.name) not in self._pending][:size - len(items)]
        batch = _Batch()
        for item in items:
            self._pending[(parent, item.name)] = batch
        return batch, items

    async def _launch(self, parent: str, started: tuple[_Batch, list[Entry]]) -> _Batch:
        batch, items = started
        if items and not self._background.spawn(self._run, parent, items, batch, kind=HEAD_TASK,
                                                name=f"HeadObject x{len(items)}"):
            await self._run(parent, items, batch)  # no supervisor running (a test)
        return batch

    async def _run(self, parent: str, items: list[Entry], batch: _Batch) -> None:
        try:
            async with trio.open_nursery() as nursery:
                headed = []
                for item in items:
                    if self._whole(parent, item):
                        nursery.start_soon(self._fetch, parent, item, batch)
                    else:
                        headed.append(item)
                if headed:
                    nursery.start_soon(self._head_all, parent, headed, batch)
        finally:
            batch.answered.set()
            for item in items:
                self._pending.pop((parent, item.name), None)
            batch.settle(item.name for item in items)

    async def _head_all(self, parent: str, items: list[Entry], batch: _Batch) -> None:
        """HEAD `items` together (Store.head_many: pipelined), storing the answers as they
        come, in the worker thread (_store_group), so that the first lookups go on
        before the last answers arrive and the loop only wakes their waiters. Answers
        are stored STORE_GROUP at a time (one transaction and one wakeup of the loop
        each), at once when a lookup waits for one of them (or for the first answer)."""
        named = {self._key(parent, item): item for item in items}
        token = trio.lowlevel.current_trio_token()
        held: list[tuple[str, ObjectInfo | S3FuseError]] = []
        holding = threading.Lock()  # a Store may answer from several threads at once

        first = True  # no group stored yet

        def store() -> None:
            nonlocal first
            group, first = self._store_group(parent, named, held[:]), False
            held.clear()
            try:
                token.run_sync_soon(self._stored, parent, batch, group)
            except trio.RunFinishedError:  # unmounted meanwhile: nobody waits
                pass

        def answered(results: list[tuple[str, ObjectInfo | S3FuseError]]) -> None:
            with holding:
                held.extend(results)
                # the first answer at once (the first lookup waits for S3 to answer at
                # all); batch.waiting belongs to the loop: read here as a hint (a lookup
                # that starts waiting just after is served by the next group)
                if (len(held) >= STORE_GROUP or first
                        or any(named[key].name in batch.waiting for key, _ in held)):
                    store()

        def head_all() -> None:
            try:
                self._store.head_many(self._keys.bucket, list(named), answered)
            finally:
                with holding:
                    if held:
                        store()
        try:
            await trio.to_thread.run_sync(head_all, limiter=self._limiter)
        except S3FuseError as exc:  # unknown they stay: the defaults show, asked again later
            log.debug("HeadObject x%d under %s for their metadata: %s", len(named),
                      self._keys.uri(self._keys.dir_prefix(parent)), exc)

    def _store_group(self, parent: str, named: dict[str, Entry],
                     results: list[tuple[str, ObjectInfo | S3FuseError]]) -> _Group:
        """Decode and store a group of HEAD answers for the entries still unknown
        (blocking: a worker thread; MetaStore.store_if_unknown). Whatever goes wrong
        storing them (a full disk, a hostile answer SQLite cannot hold) leaves them
        unknown: the defaults show and the next stat asks again."""
        group = _Group([named[key].name for key, _ in results])
        headed: list[Entry] = []
        answers: list[tuple[Entry, str] | None] = []
        try:
            for key, result in results:
                entry = named[key]
                if isinstance(result, S3FuseError) and not isinstance(result, NotFound):
                    log.debug("HeadObject %s for its metadata: %s", self._keys.uri(key), result)
                    continue  # unknown it stays: asked again later
                group.answered = True
                headed.append(entry)
                answers.append(None if isinstance(result, NotFound)
                               else headed_entry(entry.name, result, entry.is_dir))
            if headed:
                group.stored, group.gone = self._listings.store_if_unknown(parent, headed,
                                                                           answers)
        except CacheFull as exc:
            log.info("metadata of %d entries of %s not stored: %s", len(results),
                     self._keys.uri(self._keys.dir_prefix(parent)), exc)
        except Exception as exc:  # a hostile answer (a size SQLite cannot hold), a bad disk
            log.warning("metadata of %d entries of %s not stored: %r", len(results),
                        self._keys.uri(self._keys.dir_prefix(parent)), exc)
        return group

    def _stored(self, parent: str, batch: _Batch, group: _Group) -> None:
        """On the loop, once a group is stored: wake its waiters. A loop callback
        (run_sync_soon), where an exception would end the mount: none leaves it."""
        try:
            if group.answered:
                batch.answered.set()
            batch.stored.update((entry.name, entry) for entry in group.stored)
            for entry in group.gone:
                self._gone(parent, entry)
        except Exception as exc:  # the entries stay as stored: asked again later
            log.warning("forgetting %d entries of %s that S3 has no more: %r", len(group.gone),
                        self._keys.uri(self._keys.dir_prefix(parent)), exc)
        finally:
            batch.settle(group.names)

    async def _fetch(self, parent: str, entry: Entry, batch: _Batch) -> None:
        """Fetch one small file whole; its answer is stored as a HEAD's is."""
        key = self._key(parent, entry)
        result: ObjectInfo | S3FuseError
        try:
            result = await self._get_whole(parent, key, entry)
        except S3FuseError as exc:
            result = exc
        group = await trio.to_thread.run_sync(self._store_group, parent, {key: entry},
                                              [(key, result)])
        self._stored(parent, batch, group)

    def reading(self, parent: str) -> None:
        """A file of `parent` was opened for reading: its small files' lookups fetch them
        whole from now on (`cat *`, `tar -c`, `cp -r` read what they look up; `ls -l`
        opens nothing, and a GET with a cache write per file would only slow it down)."""
        self._reading.pop(parent, None)
        self._reading[parent] = None
        if len(self._reading) > READING_DIRS:
            del self._reading[next(iter(self._reading))]

    def fetches_whole(self, parent: str, entry: Entry) -> bool:
        """Will a lookup of `entry` fetch its bytes (a small file of unknown metadata in a
        directory being read)? Then nobody else needs to prefetch them."""
        return (self.enabled and self._reader is not None and entry.posix is None
                and not entry.is_dir and bool(entry.etag) and entry.size <= WHOLE_GET
                and parent in self._reading)

    def _whole(self, parent: str, entry: Entry) -> bool:
        """Is `entry` a small file in a directory being read, whose bytes nobody fetches yet?
        Then it is fetched whole instead of HEADed (GET: the same one request, and its
        bytes are then cached: `cat` of a cold directory of small files costs one request
        per file, not a HEAD and a GET)."""
        return (self._reader is not None and self.fetches_whole(parent, entry)
                and not self._reader.coming(ObjectRef(self._keys.bucket, self._key(parent, entry),
                                                      entry.etag, entry.size)))

    async def _get_whole(self, parent: str, key: str, entry: Entry) -> ObjectInfo:
        """GET `key` whole, its bytes given to the block reader; a HEAD when it changed."""
        assert self._reader is not None
        bucket = self._keys.bucket
        try:
            info, data = await trio.to_thread.run_sync(
                self._store.get_whole, bucket, key, entry.etag, WHOLE_GET, limiter=self._limiter)
        except (StaleObject, RemoteError):  # changed since listed: what S3 holds now
            return await trio.to_thread.run_sync(self._store.head, bucket, key,
                                                 limiter=self._limiter)
        await self._reader.seed(ObjectRef(bucket, key, entry.etag, entry.size), data)
        return info

    def _gone(self, parent: str, entry: Entry) -> None:
        """A HEAD answered 404 for an entry still unknown."""
        if entry.is_dir:
            self._listings.store_no_marker(parent, entry.name)
        else:
            self._listings.unknown(parent, entry.name)  # the listing is stale too


