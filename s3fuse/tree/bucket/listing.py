"""Listing and revalidation: what S3 holds, stored, kept fresh, and read off the loop.

One job of the bucket namespace (see tree/bucket/__init__.py for the split): turn
ListObjectsV2 pages into directory entries, store each directory's listing in the
metadata store once per TTL (one refresh per directory at a time, subdirectories
listed ahead of a tree walk), revalidate a file's entry with HEAD once it is older
than the TTL, and record what uploads changed meanwhile (LearnedChanges). A listing
or entry that cannot be refreshed (offline, a 5xx storm, a full cache disk) is served
as last stored rather than failing.

A revalidation never holds up what the cache can answer for long: when S3 has not
started answering it within REVALIDATE_WAIT (a black-holed endpoint accepts connections
and says nothing), the stored listing or entry is served, the link goes offline (its
probe brings it back) and the request finishes in the background. While offline,
stored answers are served at once. A new listing S3 is answering but that takes longer
than RELIST_WAIT (a huge directory) is waited for that long once; the stored listing
answers until it is stored, except that a name it lacks is only denied once the new
listing is in (`relisted`).

It knows nothing of local changes: the view of pending uploads (pending.py) lays
them over what this module returns. Whole listings are read from the store in a
worker thread: a 200,000-entry directory takes the metadata store ~0.4 s to read, and
the trio loop serves every other FUSE request meanwhile.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable, Iterable

import trio

from ...cache.meta import MetaStore, etag_of, version
from ...errors import CacheFull, NotFound, Offline, RemoteError, S3FuseError
from ...model import Entry
from ...names import ancestors, is_posix_name, join, split
from ...posix import NO_HEADERS, from_headers, stored_mtime
from ...store.protocol import ListPage, ObjectInfo, Store
from ...util.flight import SingleFlight
from ...util.oncelog import OnceLogger
from ...util.stoppoint import stop_points
from ...util.supervisor import LIST_AHEAD as LIST_AHEAD_TASK, UPLOAD_CLEANUP, Supervisor
from .ingest import Hidden, Ingest
from .keys import BucketKeys
from .learned import LearnedChanges

log = logging.getLogger(__name__)

#: Subdirectories of a listed directory whose listings are fetched ahead.
LIST_AHEAD = 16
#: Directories whose freshness is remembered (Listings.ensure runs for every lookup:
#: a dict read instead of a SQLite query). Emptied when full.
FRESH_PATHS = 1024
#: Worker threads reading stored listings at once (per tree); apart from the S3 limiter,
#: so a readdir served from the store never waits behind slow ListObjectsV2 calls.
STORED_READS = 4
#: A stored listing of at most this many entries (one readdir page) is read on the trio
#: loop: well under a millisecond, where a trip to a worker thread cost a `find` over
#: many small directories 10% of its time.
SMALL_LISTING = 256
#: Seconds a stat or readdir waits for S3 to start answering a revalidation when it has a
#: stored answer to give instead (docs/offline.md).
REVALIDATE_WAIT = 2.0
#: Seconds a stat, lookup or readdir waits, once S3 answers, for the new listing of a
#: directory it has a stored one of. A directory of 1,000,000 keys takes ~25 s to list
#: again: an `ls -l` walking it stalled that long at every TTL. Past this the stored
#: listing answers while the new one comes (later callers do not wait at all), as it
#: does offline.
RELIST_WAIT = 2.0
#: A conditional-request probe's scratch key older than this (its LastModified) is one its
#: probe could not delete: it went offline, and the journal that would have deleted it at
#: the next start was lost with a wiped cache directory. A probe takes a few requests: one
#: this old is nobody's, and a writable mount that lists it removes it.
PROBE_STALE = 600.0
#: Directories whose listings hid keys (Hidden) remembered: such keys are rare.
HIDING_DIRS = 4096
#: Keys a ListObjectsV2 page holds (S3's maximum, and what Store.list_pages asks for).
LIST_PAGE = 1000
#: Directories whose revalidating HEADs are counted (see Listings.revalidate).
COUNTED_DIRS = 4096


@dataclass(eq=False)
class _Revalidation:
    """One revalidation running in the background; its waiters may give up on it."""

    answered: trio.Event = field(default_factory=trio.Event)  # S3 started answering
    done: trio.Event = field(default_factory=trio.Event)
    value: Any = None
    error: BaseException | None = None
    overdue: bool = False  # answering, but past its waiters' finish_within: not waited for


class Listings:
    """The stored listings of one bucket tree, and how they are kept fresh."""

    _full_logged = False  # "cache full: stored listings" is logged once per daemon

    def __init__(self, keys: BucketKeys, store: Store, meta: MetaStore, *, ttl: float,
                 limiter: trio.CapacityLimiter, background: Supervisor,
                 remove_probes: bool = False):
        self._keys = keys
        self._remove_probes = remove_probes  # writable: stale probe keys listed are removed
        self._store = store
        self._meta = meta
        self._ttl = ttl
        self._limiter = limiter  # S3 requests
        self._reads = trio.CapacityLimiter(STORED_READS)  # stored listings read whole
        self._background = background
        self._flight: SingleFlight[None] = SingleFlight()
        self._learned = LearnedChanges()
        self._hidden = OnceLogger(log)
        self._revalidating: dict[Hashable, _Revalidation] = {}
        self._fresh_until: dict[str, float] = {}  # path -> when its stored listing goes stale
        # S3 answered the root's listing with NoSuchBucket (a typo in --source): nothing may
        # be made in it (a create went ahead and its upload failed for good); a listing
        # that succeeds later (the bucket made meanwhile) clears it
        self.bucket_missing = False
        self._shown_dirs: set[str] = set()  # know_dir's: entries recorded in their parents
        self._hiding: dict[str, Hidden] = {}  # path -> what its last listing hid (HIDING_DIRS)
        self._revalidated: dict[str, int] = {}  # path -> files HEADed since its listing

    # ----------------------------------------------------------- revalidation deadline

    async def _answer_in_time(self, key: Hashable, what: str,
                              work: Callable[[_Revalidation], Awaitable[Any]],
                              finish_within: float = math.inf) -> _Revalidation | None:
        """Run `work` (one revalidation, shared by everyone asking for `key`) in the
        background and wait for it to finish; None when S3 did not start answering
        within REVALIDATE_WAIT: the link is then offline and `work` goes on alone.
        `finish_within`: once S3 answers, wait at most this long for the end; the job,
        not done, is then overdue and returned at once to later callers too."""
        job = self._revalidating.get(key)
        if job is not None and job.overdue:
            return job
        if job is None:
            job = self._revalidating[key] = _Revalidation()

            async def run() -> None:
                try:
                    job.value = await work(job)
                except S3FuseError as exc:  # the waiters' business (there may be none left)
                    job.error = exc
                    log.debug("%s: %s", what, exc)
                finally:
                    job.answered.set()
                    job.done.set()
                    del self._revalidating[key]
            self._background.spawn(run, kind=LIST_AHEAD_TASK, name=what)
        with trio.move_on_after(REVALIDATE_WAIT):
            await job.answered.wait()
        if not job.answered.is_set():
            self._store.link.failed(f"{what}: no answer within {REVALIDATE_WAIT:g}s")
            return None
        with trio.move_on_after(finish_within):
            await job.done.wait()
        if not job.done.is_set():
            log.debug("%s: still running after %gs, the stored answer serves meanwhile",
                      what, finish_within)
            job.overdue = True
        return job

    # ----------------------------------------------------------- directories

    def fresh_for(self, path: str, longest: float) -> float:
        """Seconds until the stored listing of `path` goes stale (`longest` at most; that
        when it is not known here)."""
        until = self._fresh_until.get(path)
        return longest if until is None else min(longest, max(0.0, until - time.time()))

    def _fresh(self, listed_at: float | None) -> bool:
        return listed_at is not None and time.time() - listed_at < self._ttl

    async def ensure(self, path: str) -> None:
        """A stored listing of `path` younger than the TTL, or the last one stored when S3
        cannot give a new one (the error when there is none)."""
        until = self._fresh_until.get(path)
        if until is not None and time.time() < until:  # every lookup asks: no query
            return
        listed_at = self._meta.listed_at(self._keys.ns_id, path)
        if self._fresh(listed_at):
            assert listed_at is not None
            if len(self._fresh_until) >= FRESH_PATHS:
                self._fresh_until.clear()
            self._fresh_until[path] = listed_at + self._ttl
            return
        try:
            if listed_at is None or not self._background.active:
                await self._flight.run(path, self._refresh, path)
            elif self._store.link.online:  # offline: the stored listing, at once
                job = await self._answer_in_time(
                    ("list", path), f"ListObjectsV2 {self._keys.uri(self._keys.dir_prefix(path))}",
                    lambda job: self._flight.run(path, self._refresh, path, job.answered),
                    finish_within=RELIST_WAIT)
                if job is not None and job.done.is_set() and job.error is not None:
                    raise job.error
        except (Offline, RemoteError) as exc:
            if listed_at is None:
                raise
            # offline, or S3 failing even after the retries (a 5xx storm): the last listing
            # is a better answer than EIO
            log.debug("serving the cached listing of %s: %s", self._keys.dir_prefix(path), exc)
        except CacheFull as exc:  # the cache disk is full: the stored listing beats ENOSPC
            if listed_at is None:
                raise
            if not Listings._full_logged:
                Listings._full_logged = True
                log.warning("%s: serving stored listings without refreshing them", exc)
            log.debug("cache full: serving the stored listing of %s", self._keys.dir_prefix(path))

    async def relisted(self, path: str) -> None:
        """Until a relisting of `path` still running past RELIST_WAIT is stored (at once
        when there is none): a name the stored listing lacks may be in the new one, and a
        lookup must not deny it before then (design: after the TTL a stat revalidates)."""
        job = self._revalidating.get(("list", path))
        if job is not None and job.overdue:
            await job.done.wait()

    async def _refresh(self, path: str, answered: trio.Event | None = None) -> None:
        """List `path` from S3 and store it; `answered` is set at the first page."""
        prefix = self._keys.dir_prefix(path)
        ns_id = self._keys.ns_id
        mark = self._learned.mark()

        def fetch() -> tuple[list[ObjectInfo], Hidden]:
            with Ingest(prefix, self._hidden, time.time(), self._meta.stage()) as ingest:
                pages = stop_points(self._store.list_pages(self._keys.bucket, prefix))
                for number, page in enumerate(pages):  # an unmount stops it between two pages
                    if number == 0 and answered is not None:
                        trio.from_thread.run_sync(answered.set)
                    ingest.add(page)
                stage = ingest.finish()
                with self._meta.writing():  # uploads that finished meanwhile are not in the pages
                    changes = self._learned.since(mark, path)
                    now = time.time() if changes is not None else 0.0  # 0: stale, list again
                    self._meta.replace_staged(ns_id, path, stage, ingest.now, changes or {},
                                              now, marker=self._marker_seen(ingest.marker,
                                                                            path, mark))
                return ingest.probes, ingest.hidden

        try:
            probes, hidden = await trio.to_thread.run_sync(fetch, limiter=self._limiter)
        except NotFound as exc:
            if not path and exc.code == "NoSuchBucket":
                self.bucket_missing = True
            raise
        finally:
            self._fresh_until.pop(path, None)  # the next ensure reads what was stored
        if not path:  # every listing of the root says it, the background's too
            self.bucket_missing = False
        self._revalidated.pop(path, None)
        self._listed_hidden(path, hidden)
        stale = [p for p in probes if time.time() - p.mtime_ns / 1e9 > PROBE_STALE]
        if stale and self._remove_probes:
            self._background.spawn(self._remove_stale_probes, stale, kind=UPLOAD_CLEANUP)

    def _listed_hidden(self, path: str, hidden: Hidden) -> None:
        self._hiding.pop(path, None)
        if not hidden:
            return
        self._hiding[path] = hidden  # the newest last
        if len(self._hiding) > HIDING_DIRS:  # the oldest half goes (rare: a key per dir)
            for old in list(self._hiding)[:HIDING_DIRS // 2]:
                del self._hiding[old]

    def holds_unnamed(self, path: str) -> bool:
        """Did the last listing of `path` hold keys whose names cannot be shown (`a//b`)?
        Then it is not empty, whatever `ls` shows."""
        hidden = self._hiding.get(path)
        if hidden is None or not hidden.unnamed:
            return False
        log.info("%s is not empty: it holds keys whose names cannot be shown (logged as "
                 "'hiding s3 key')", self._keys.uri(self._keys.dir_prefix(path)))
        return True

    def hidden_file(self, parent: str, name: str) -> Entry | None:
        """The file `parent/name` that the last listing of `parent` hid behind a
        directory of that name, if any."""
        hidden = self._hiding.get(parent)
        return hidden.files.get(name) if hidden is not None else None

    def uncover(self, path: str) -> Entry | None:
        """Directory `path` is gone or going: the file its name hid in its parent's last
        listing, now stored as the parent's entry of that name (None: it hid none)."""
        parent, name = split(path)
        hidden = self._hiding.get(parent)
        entry = hidden.files.pop(name, None) if hidden is not None else None
        if entry is not None:
            self.learn(parent, name, entry)
        return entry

    def _marker_seen(self, marker: str | None, path: str, mark: int) -> str | None:
        """What a listing of `path` sent at `mark` may say of the directory's own marker:
        nothing (None) when its entry in the parent changed since (our marker upload
        landed, with the directory's metadata, after S3 answered the listing without it).
        Judged by it, the metadata was dropped as "no marker, no headers": a `mkdir`,
        `chown` and `chmod 1777` then showed the mount's defaults (root, 0755) until the
        directory was listed again after its TTL (pjdfstest's pace: EACCES in about 2% of
        renames into such a directory). Call it holding the writer lock, as `since`."""
        if not path or marker is None:
            return marker
        parent, name = split(path)
        above = self._learned.since(mark, parent)
        return None if above is None or name in above else marker

    async def _remove_stale_probes(self, probes: list[ObjectInfo]) -> None:
        """Delete scratch keys a probe left behind (unconditionally, as the probe does: a
        random name of ours, and not every server takes a conditional delete); what fails
        is tried again at a later listing."""
        for probe in probes:
            try:
                await trio.to_thread.run_sync(self._store.delete_object, self._keys.bucket,
                                              probe.key, limiter=self._limiter)
            except S3FuseError as exc:
                log.debug("%s, left by an interrupted probe, not removed yet: %s",
                          self._keys.uri(probe.key), exc)
            else:
                log.info("removed %s, a scratch key an interrupted probe of conditional "
                         "requests left behind", self._keys.uri(probe.key))

    async def entries(self, path: str) -> list[Entry]:
        """The stored listing of `path` (call `ensure` first), read in a worker thread
        unless it is small; also lists its first subdirectories ahead, in parallel.

        Tree walks (`find`, `ls -R`, `du`) list a directory and then descend into each
        subdirectory; fetching those listings ahead turns a walk's sequential round
        trips into parallel ones, still one listing per directory.
        """
        ns_id = self._keys.ns_id
        entries = self._meta.entries(ns_id, path, at_most=SMALL_LISTING)
        if entries is None:  # a big directory: never a bulk read on the loop
            entries = await trio.to_thread.run_sync(self._meta.entries, ns_id, path,
                                                    limiter=self._reads)
            assert entries is not None
        self.list_ahead(path, [e.name for e in entries if e.is_dir][:LIST_AHEAD])
        return entries

    def list_ahead(self, path: str, subdirs: list[str]) -> None:
        """List these subdirectories of `path` ahead, in the background, unless fresh."""
        if not self._background.active:
            return
        for name in subdirs:
            child = join(path, name)
            if not self._fresh(self._meta.listed_at(self._keys.ns_id, child)) and not self._flight.busy(child):
                self._background.spawn(self._list_ahead, child, kind=LIST_AHEAD_TASK)

    def window(self, path: str, after: str, limit: int) -> tuple[list[Entry], str | None]:
        """One page of the stored listing of `path` after `after` (MetaStore.entries_after),
        read on the loop: an indexed range read of `limit` rows (~0.5 ms for a readdir
        chunk of 256). Sent to a worker thread, each chunk also cost the trip there and
        back, which the kernel and `ls` waited for: a warm `ls` of 100,000 keys took 0.92 s
        instead of 0.76 s, its daemon idle a third of the time."""
        return self._meta.entries_after(self._keys.ns_id, path, after, limit)

    async def name_after(self, path: str, after: str, skip: int) -> str | None:
        """The stored name `skip` places after `after` (a worker thread: SQLite walks them)."""
        return await trio.to_thread.run_sync(self._meta.name_after, self._keys.ns_id, path,
                                             after, skip, limiter=self._reads)

    async def _list_ahead(self, path: str) -> None:
        try:
            await self.ensure(path)
        except S3FuseError as exc:  # the real listing will retry and report
            log.debug("listing ahead of %s failed: %s", self._keys.dir_prefix(path), exc)

    def expire(self, path: str) -> None:
        """List `path` again at its next use (it changed behind the stored listing); on a
        full disk, once its stored listing goes stale (a change made in S3 is not undone
        for a listing that cannot be written)."""
        self._fresh_until.pop(path, None)
        try:
            self._meta.expire_listing(self._keys.ns_id, path)
        except CacheFull as exc:
            log.warning("the listing of %s is not expired (%s): it is listed again after "
                        "its TTL", self._keys.uri(self._keys.dir_prefix(path)), exc)

    def files_after(self, path: str, after: str, limit: int) -> list[Entry]:
        """The next `limit` stored files of `path` after `after`, in name order (a small
        indexed range: the prefetcher's view of what a reader opens next)."""
        return self._meta.files_after(self._keys.ns_id, path, after, limit)

    # ----------------------------------------------------------- entries

    def entry(self, path: str, name: str) -> Entry | None:
        """The stored entry of `path/name` (a point query), or None."""
        return self._meta.entry(self._keys.ns_id, path, name)

    async def revalidate(self, parent: str, entry: Entry) -> Entry:
        """The entry of file `parent/entry.name` as HEAD shows it now (stored); the stored
        one when S3 cannot be asked, or does not answer within REVALIDATE_WAIT (then HEAD
        goes on in the background); NotFound (and forgotten) when S3 has it no more."""
        key = self._keys.key(join(parent, entry.name))
        if not self._store.link.online:  # offline: the stored entry, at once
            return entry
        relisted = await self._relisted(parent, entry)
        if relisted is not None:
            return relisted
        try:
            if not self._background.active:
                return await self._head(parent, entry)
            job = await self._answer_in_time(("head", parent, entry.name),
                                             f"HeadObject {self._keys.uri(key)}",
                                             lambda job: self._head(parent, entry))
            if job is None:
                return entry
            if job.error is not None:
                raise job.error
            return job.value
        except (Offline, RemoteError) as exc:  # as for listings: the last entry, not EIO
            log.debug("serving the cached entry of %s: %s", key, exc)
            return entry

    async def _relisted(self, parent: str, entry: Entry) -> Entry | None:
        """The entry of `parent/entry.name` from a new listing of `parent`, when listing it
        costs no more pages than the files of it revalidated so far (and this one) cost
        HEADs; None: HEAD this one. Re-reading a directory of cached files after the TTL
        (a training run's next epoch) sent one HEAD per file: 10,000 for a directory that
        lists in 20 pages. Now a directory of up to a page is listed at once and a larger
        one once its HEADs would pass its pages: at most twice the requests of the better
        of the two, whichever way the reader goes on."""
        heads = self._revalidated.get(parent, 0) + 1
        if self._fresh(self._meta.listed_at(self._keys.ns_id, parent)):
            return None  # listed within the TTL: a new listing would say the same
        if await self.name_after(parent, "", heads * LIST_PAGE) is not None:
            if len(self._revalidated) >= COUNTED_DIRS:
                self._revalidated.clear()
            self._revalidated[parent] = heads
            return None
        await self.ensure(parent)
        fresh = self.entry(parent, entry.name)
        if fresh is None:  # gone from S3 (the listing says so): as a HEAD's 404
            raise NotFound(f"{self._keys.uri(self._keys.key(join(parent, entry.name)))}: "
                           "not found")
        return fresh if time.time() - fresh.checked_at < self._ttl else None

    async def _head(self, parent: str, entry: Entry) -> Entry:
        """HEAD `parent/entry.name` and store what it says, POSIX metadata included (its
        headers come with it; NotFound: forgotten)."""
        key = self._keys.key(join(parent, entry.name))
        try:
            info = await trio.to_thread.run_sync(self._store.head, self._keys.bucket, key,
                                                 limiter=self._limiter)
        except NotFound:
            self._meta.remove_entry(self._keys.ns_id, parent, entry.name)
            raise
        return self.store_head(parent, entry.name, info)

    def store_head(self, parent: str, name: str, info: ObjectInfo) -> Entry:
        """Store what a HEAD of file `parent/name` says, its POSIX metadata included; the
        entry."""
        fresh, of = headed_entry(name, info, False)
        self._meta.update_entry(self._keys.ns_id, parent, fresh, of)
        return fresh

    def store_if_unknown(self, parent: str, headed: list[Entry],
                         answers: list[tuple[Entry, str] | None]) -> tuple[list[Entry], list[Entry]]:
        """Store HEAD answers (headed_entry's; None: not found) of entries of `parent`
        still unknown (blocking: MetaStore.store_if_unknown)."""
        return self._meta.store_if_unknown(self._keys.ns_id, parent, headed, answers)

    def store_no_marker(self, parent: str, name: str) -> Entry:
        """Directory `parent/name` has no marker (HEAD: 404): no metadata, stored so."""
        fresh = Entry(name, True, 0, 0, "", time.time(), NO_HEADERS)
        self._meta.update_entry(self._keys.ns_id, parent, fresh, "")
        return fresh

    def marker_absent(self, path: str) -> bool:
        """Did directory `path`'s own listing (or a HEAD) find it has no marker, with no
        change of it queued since? (False: it has one, or this is not known.)"""
        return self._meta.marker(self._keys.ns_id, path) == ""

    def marker_etag(self, path: str) -> str | None:
        """The ETag of directory `path`'s marker when its listing (or a HEAD) last saw it;
        None when it had none or this is not known."""
        return etag_of(self._meta.marker(self._keys.ns_id, path) or "") or None

    def unknown_after(self, path: str, name: str, limit: int) -> list[Entry]:
        """Up to `limit` stored entries of `path` from `name` on whose POSIX metadata is
        unknown (MetaStore.unknown_after: a bounded range read)."""
        return self._meta.unknown_after(self._keys.ns_id, path, name, limit)

    def remember(self, parent: str, entry: Entry) -> None:
        """Store an entry this mount made itself (a server-side copy)."""
        self._meta.update_entry(self._keys.ns_id, parent, entry)

    # ----------------------------------------------------------- what uploads changed

    def learn(self, parent: str, name: str, entry: Entry | None) -> None:
        """An upload landed (`entry` None: a removal): stored now, and applied to any
        listing of `parent` in flight (whose ListObjectsV2 may predate it)."""
        ns_id = self._keys.ns_id
        if entry is None:
            self._shown_dirs.difference_update(ancestors(parent))  # may be gone: know_dir again
            self._learned.record(parent, name, None,
                                 lambda: self._meta.remove_entry(ns_id, parent, name))
        else:
            self._learned.record(parent, name, entry,
                                 lambda: self._meta.update_entry(ns_id, parent, entry))

    def unknown(self, parent: str, name: str) -> None:
        """`parent/name` holds a version this mount did not write: look again."""
        self._fresh_until.pop(parent, None)
        self._meta.expire_listing(self._keys.ns_id, parent)
        self._meta.remove_entry(self._keys.ns_id, parent, name)

    def know_dir(self, path: str) -> None:
        """`path` exists in S3 (an upload made it), listed or not; so does each of its
        ancestors, recorded as an entry of its parent: a listing of the parent in flight
        since before the upload landed does not show a directory the upload made, and
        stored as it is, it would hide the new file until the next refresh. Once per
        directory until something in it is removed (which may remove the directory)."""
        self._meta.know_dir(self._keys.ns_id, path)
        while path and path not in self._shown_dirs:
            if len(self._shown_dirs) >= FRESH_PATHS:
                self._shown_dirs.clear()
            self._shown_dirs.add(path)
            parent, name = split(path)
            entry = Entry(name, True, 0, 0, "", time.time())
            self._learned.record(parent, name, entry,
                                 lambda parent=parent, entry=entry: self._show_dir(parent, entry))
            path = parent

    def _show_dir(self, parent: str, entry: Entry) -> None:
        """Store a directory's entry unless stored as one (a marker's entry is kept)."""
        stored = self._meta.entry(self._keys.ns_id, parent, entry.name)
        if stored is None or not stored.is_dir:
            self._meta.update_entry(self._keys.ns_id, parent, entry)


def headed_entry(name: str, info: ObjectInfo, is_dir: bool) -> tuple[Entry, str]:
    """The entry a HEAD answer shows and the version its metadata was read from."""
    return _headed(name, info, is_dir), version(info.etag, info.mtime_ns)


def _headed(name: str, info: ObjectInfo, is_dir: bool) -> Entry:
    """The entry a HEAD of file `name` (or of directory `name`'s marker) shows."""
    posix = from_headers(info.metadata or {}, is_dir=is_dir)
    if is_dir:
        if posix.mtime_ns is None:
            # no mtime header: LastModified (compat.md). Kept in the metadata, which
            # relistings keep, as their rows of directories carry no date.
            posix = posix.replace(mtime_ns=info.mtime_ns)
        return Entry(name, True, 0, posix.mtime_ns, "", time.time(), posix)
    return Entry(name, False, info.size, stored_mtime(posix, info.mtime_ns), info.etag,
                 time.time(), posix)
