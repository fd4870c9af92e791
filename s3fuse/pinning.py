"""`s3fuse pin` / `unpin`: jobs the daemon runs, the command only watches.

A job resolves a mount-relative path, walks everything below it (bucket
directories, manifest views, shard members) and moves every block of every file
into (or out of) the pinned store, fetching what is missing. Progress is exposed
through the root's `user.s3fuse.jobs` xattr. Pins are recorded in meta.sqlite;
an interrupted pin resumes at the next start, skipping blocks already pinned. The
recorded pins are read once, at construction (before the loop serves); from then on
the pinner answers from its copy on the trio thread, and records changes as point
writes, which never wait (queued while a listing is being stored: cache/meta.py).

A file that cannot be pinned is a failure of the job, not of the daemon; a full cache
disk (ENOSPC, also when the disk's free-space reserve is reached) ends the job at once
(every further file would fail the same way). A pin that cannot fit at all, even in the
room that evicting every cached block and keeping every pinned one would leave above
the reserve, is refused before anything is fetched, with one line saying so. A job
that crashes anyway (a bug) is marked failed by the supervisor, and the mount stays.
"""
from __future__ import annotations

import errno
import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, AsyncIterator

import trio

from .cache.blocks import BlockCache
from .cache.meta import MetaStore
from .errors import NotADirectory, NotFound, S3FuseError, disk_full, errno_of
from .model import Entry, Ref
from .names import join
from .tree.contract import Namespace
from .tree.root import RootTree
from .util.supervisor import PIN, Supervisor

log = logging.getLogger(__name__)

PARALLEL_FILES = 4
FAILURES_SHOWN = 100


@dataclass
class Job:
    path: str
    action: str  # "pin" or "unpin"
    state: str = "running"  # running, done, failed
    files_total: int = 0
    files_done: int = 0
    files_failed: int = 0  # of files_total (a failed walk or a crash fails the job, no file)
    bytes_total: int = 0
    bytes_done: int = 0
    failures: list[str] = field(default_factory=list)  # the first FAILURES_SHOWN of them
    failures_hidden: int = 0                              # ... and how many more
    refused: str | None = None  # why the job did nothing (a pin that cannot fit)
    started: float = field(default_factory=time.time)
    finished: float | None = None


class Pinner:
    def __init__(self, root: RootTree, meta: MetaStore, background: Supervisor,
                 blocks: BlockCache | None = None):
        self.root = root
        self.meta = meta
        self.blocks = blocks
        self.background = background
        self._jobs: dict[str, Job] = {}

    def covers(self, path: str) -> bool:
        """Is the mount-relative `path` at or below a pinned path?"""
        return any(not p or path == p or path.startswith(p + "/") for p in self._recorded())

    def pins(self) -> list[dict[str, str]]:
        return [{"path": p, "state": s} for p, s in sorted(self._recorded().items())]

    def _recorded(self) -> dict[str, str]:
        """The pins as meta.sqlite records them now (a few rows, its queued writes
        included; asked by `status`, the `user.s3fuse.pinned` xattr and the start only).
        No copy is kept: `s3fuse cache clear --force` of a live mount's cache drops them
        there, and a copy went on saying pinned of files whose blocks were gone."""
        return dict(self.meta.pins())

    def jobs(self) -> list[dict[str, Any]]:
        return [asdict(job) for job in self._jobs.values()]

    def start(self, path: str, action: str) -> None:
        path = path.strip("/")
        running = self._jobs.get(path)
        if running is not None and running.state == "running":
            return
        job = self._jobs[path] = Job(path, action)
        if action == "pin":
            self._record(path, "incomplete")
        self.background.spawn(self._run, job, kind=PIN, name=path or "/",
                              on_failure=functools.partial(self._crashed, job))

    def resume(self) -> None:
        """Finish pins an earlier daemon did not complete."""
        for path, state in sorted(self._recorded().items()):
            if state != "complete":
                log.info("resuming the pin of %s", path or "/")
                self.start(path, "pin")

    async def _run(self, job: Job) -> None:
        """Count what is below the path (one walk), then pin it file by file as a second
        walk finds them: a pin of 10M files holds PARALLEL_FILES of them at a time, not a
        task and a list entry each (~3.8 KB per file: 36 GiB)."""
        keep = job.action == "pin"
        missing = False
        try:
            async for _, _, _, entry in self._files(job.path):
                job.files_total += 1
                job.bytes_total += entry.size
            if keep and self.blocks is not None:
                job.refused = await trio.to_thread.run_sync(self._no_room, job.bytes_total)
                if job.refused is not None:
                    job.files_failed = job.files_total
                    job.failures.append(f"{job.path or '/'}: ENOSPC ({job.refused})")
                    log.warning("pin of %s refused: %s", job.path or "/", job.refused)
                else:
                    await self._pin_all(job, keep)
            else:
                await self._pin_all(job, keep)
        except S3FuseError as exc:  # the walk failed (offline, gone)
            job.failures.append(f"{job.path or '/'}: {errno.errorcode.get(exc.errno, exc.errno)} ({exc})")
            missing = isinstance(exc, NotFound)  # nothing to pin there: no pin is recorded
        self._finish(job, keep and not missing)

    async def _pin_all(self, job: Job, keep: bool) -> None:
        """PARALLEL_FILES workers pin the files the walk hands them; once the cache disk is
        full (ENOSPC) the rest are only counted as not tried (they would fail the same way)."""
        full = False
        send, receive = trio.open_memory_channel[tuple[str, Namespace, Ref, Entry]](0)

        async def worker(files: trio.MemoryReceiveChannel[tuple[str, Namespace, Ref, Entry]]) -> None:
            nonlocal full
            async with files:
                async for path, ns, ref, entry in files:
                    try:
                        await self._pin_file(job, keep, ns, ref, entry)
                    except Exception as exc:  # noqa: BLE001 - only the expected ones are kept
                        if not (isinstance(exc, (S3FuseError, OSError)) or disk_full(exc)):
                            raise  # a bug: the supervisor marks the job failed
                        code = errno_of(exc)
                        self._failed(job, f"{path}: {errno.errorcode.get(code, code)}")
                        log.warning("%s of %s failed: %s", job.action, path, exc)
                        full = full or code == errno.ENOSPC
                    job.files_done += 1

        async with trio.open_nursery() as nursery:
            async with receive:
                for _ in range(PARALLEL_FILES):
                    nursery.start_soon(worker, receive.clone())
            async with send:
                async for item in self._files(job.path):
                    if full:  # left when the disk filled up: say which
                        self._failed(job, f"{item[0]}: ENOSPC (not tried: the cache disk is full)")
                    else:
                        await send.send(item)

    def _no_room(self, needed: int) -> str | None:
        """Why `needed` bytes cannot be pinned (blocking: statvfs, the cache's SQLite)."""
        assert self.blocks is not None
        reserve = self.blocks.reserve
        if reserve is None:
            return None
        use = self.blocks.usage()
        room = reserve.room() + use["used"] + use["pinned"]
        if needed <= room:
            return None
        mib = 1 << 20
        return (f"needs {needed / mib:.0f} MiB, the cache disk has room for {max(room, 0) / mib:.0f}"
                f" MiB above its reserve of {reserve.bytes / mib:.0f} MiB (cache_reserve)")

    @staticmethod
    async def _pin_file(job: Job, keep: bool, ns: Namespace, ref: Ref, entry: Entry) -> None:
        """Pin (or unpin) one file through a handle held only meanwhile."""
        def progress(n: int) -> None:
            job.bytes_done += n

        handle = await ns.open(ref)
        try:
            job.bytes_total += handle.size - entry.size  # its size as opened (e.g. from HEAD)
            await handle.pin(keep, progress)
        finally:
            with trio.CancelScope(shield=True):  # a job cancelled (disk full) still lets go
                await handle.close()

    @staticmethod
    def _failed(job: Job, line: str) -> None:
        """One file of the job could not be pinned (or unpinned)."""
        job.files_failed += 1
        if len(job.failures) < FAILURES_SHOWN:
            job.failures.append(line)
        else:
            job.failures_hidden += 1

    def _crashed(self, job: Job, exc: BaseException) -> None:
        """The job ended on an unexpected error (logged by the supervisor): mark it failed."""
        job.failures.append(f"{job.path or '/'}: crashed ({type(exc).__name__})")
        self._finish(job, job.action == "pin")

    def _finish(self, job: Job, keep: bool) -> None:
        """`keep`: the pin stays recorded (complete, or incomplete to be resumed); else any
        record of it goes (an unpin, or a pin of a path that does not exist)."""
        job.finished = time.time()
        job.state = "failed" if job.failures or job.failures_hidden else "done"
        try:
            self._record(job.path, ("incomplete" if job.failures else "complete") if keep else None)
        except S3FuseError as exc:  # CacheFull: the pin stays recorded as it was (incomplete)
            log.warning("the end of the %s of %s is not recorded: %s", job.action,
                        job.path or "/", exc)
        log.info("%s of %s: %d files, %d bytes, %d failures", job.action, job.path or "/",
                 job.files_done, job.bytes_done, len(job.failures) + job.failures_hidden)

    def _record(self, path: str, state: str | None) -> None:
        """Record a pin's state (None: forget it and the pins below it) in meta.sqlite (a
        point write: never waits; `pins` shows it at once)."""
        if state is None:
            self.meta.remove_pin(path)
        else:
            self.meta.set_pin(path, state)

    async def _files(self, path: str) -> AsyncIterator[tuple[str, Namespace, Ref, Entry]]:
        """Every file at or below the mount-relative `path`."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            for entry in await self.root.entries():
                async for item in self._files(entry.name):
                    yield item
            return
        index = await self.root.find(parts[0])
        if index is None:
            raise NotFound(path)
        ns = self.root.get(index)
        ref: Ref = ns.root
        entry = Entry(parts[0], True)
        for name in parts[1:]:
            found = await ns.lookup(ref, name)
            if found is None:
                raise NotFound(path)
            ref, entry = found
        async for item in _walk(ns, ref, entry, path):
            yield item


async def _walk(ns: Namespace, ref: Ref, entry: Entry,
                path: str) -> AsyncIterator[tuple[str, Namespace, Ref, Entry]]:
    """Every file at or below `ref`, as (mount-relative path, namespace, ref, entry):
    opened one by one later, so a pin of a big tree never holds a handle per file."""
    if not entry.is_dir:
        yield path, ns, ref, entry
        return
    stream = await ns.opendir(ref)
    start = 0
    while True:
        page = await stream.page(start, 256)
        if not page:
            return
        for start, child, child_entry in page:
            try:
                async for item in _walk(ns, child, child_entry, join(path, child_entry.name)):
                    yield item
            except NotADirectory:
                continue
