"""Daemon lifecycle: build the components, mount, serve, and unmount cleanly.

`run()` blocks until the filesystem is unmounted (fusermount3 -u, `s3fuse umount`)
or the process gets SIGINT/SIGTERM. Readiness is announced only once the kernel
answers a stat of the mountpoint through us, and S3 did not refuse the credentials
themselves (`credentials_refused`: then the mount goes away and the start fails, exit 2). Background work runs under the
supervisor (util/supervisor.py), so no failure of it can end the root nursery, i.e.
unmount: only the lifecycle tasks here (signals, readiness) are its direct children.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

import pyfuse3
import trio

from .cache.blocks import BlockCache
from .cache.cachedir import CacheLock, secure_cache_dir, secure_dir
from .cache.identity import claim, identity_of, resolve_cache_dir
from .cache.meta import MetaStore
from .cache.overlay import Overlay
from .cache.reserve import DiskReserve
from .config import Config, SourceSpec
from .control import Control
from .data.prefetch import SiblingPrefetcher
from .data.reader import BlockReader
from .fs import renumbered
from .fs.ops import S3Operations
from .notify import Notifier
from .pinning import Pinner
from .errors import AccessDenied, CredentialsExpired, NotFound, S3FuseError, UsageError
from .idle import Idle
from .store.credentials import one_line
from .store.liveness import probe_while_offline, watch_interval, watch_while_in_use
from .store.protocol import Store
from .store.s3 import S3Store
from .tree.bucket import BucketTree, ReadOnlyBucketTree
from .tree.manifest import ManifestTree
from .tree.root import RootTree
from .tree.sharedindex import SharedIndex
from .tree.shards import ShardService
from .upload.journal import Journal
from .upload.queue import UploadQueue
from .upload.staging import Staging
from .upload.writeback import UploadedBytes, WriteBack
from .util.bufferpool import trim_all
from .util.fusemount import claim_mountpoint, mount_with_reason
from .util.supervisor import (BUFFER_TRIM, INODE_CAP, INODE_SAVE, LINK_WATCH, PAGE_DROP,
                              PROBE, STATUS_REPORT, Supervisor)

log = logging.getLogger(__name__)

READAHEAD_KIB = 1024
STATUS_INTERVAL = 5.0
#: How often the pools of big buffers are asked to let go of theirs (util/bufferpool.py)
TRIM_INTERVAL = 2.0
M_MMAP_THRESHOLD = -3  # glibc mallopt parameters
M_ARENA_MAX = -8
#: malloc arenas: glibc gives threads up to 8 per core, and what a worker thread freed stays
#: in its own arena. The daemon's threads allocate under the GIL nearly all the time, so
#: they hardly contend for one: with 2, `ls -l` of 100,000 keys peaked 5 MiB lower (107 ->
#: 102 MiB; 1: 97 MiB), reads and writes as fast (docs/memory.md).
MALLOC_ARENAS = 2
PR_SET_DUMPABLE = 4
FLUSH_TIMEOUT = 30.0
#: Answers to the start's first request that say no request of these credentials can succeed
#: (the key is unknown, or the secret wrong); any other refusal (AccessDenied: a key scoped
#: to some buckets) does not stop the mount.
BAD_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch"})
#: How long readiness waits for that answer: longer (a black hole), and the mount comes up
#: as an offline boot does, the request's outcome told to the link as any other's.
CREDENTIAL_CHECK_WAIT = 5.0
#: At unmount, how long uploads in flight may still finish: when no drain ran (`fusermount3
#: -u`), or ...
STOP_UPLOADS_TIMEOUT = 5.0
#: ... once a drain already waited --drain-timeout for them (or a second signal cut it):
#: the unmount then takes about --drain-timeout, as documented, not 5 s more.
STOP_AFTER_DRAIN = 0.5


class ReadySignal:
    """Tells whoever started us that the mount is live (or why it is not): the parent
    `s3fuse mount` through a pipe, systemd through sd_notify, the demo through a callback."""

    def __init__(self, fd: int | None = None, on_ready: Callable[[], None] | None = None,
                 notifier: Notifier | None = None):
        self._fd = fd
        self._on_ready = on_ready
        self.notifier = notifier or Notifier()

    def _send(self, text: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, text.encode() + b"\n")
            os.close(self._fd)
        except OSError:
            pass
        self._fd = None

    def ready(self, warning: str | None = None) -> None:
        """`warning`: one line the starting user should see (a bucket that does not exist):
        `s3fuse mount` prints it, which a background start's log alone did not."""
        self._send("READY" + (" " + warning.replace("\n", " ") if warning else ""))
        # no STATUS here: the status reporter may have sent its first line already, and
        # sends the next one only when it changes ("mounted" stood for good, offline too)
        self.notifier.send(READY="1")
        if self._on_ready is not None:
            self._on_ready()

    def failed(self, reason: str) -> None:
        self._send("ERROR " + reason.replace("\n", " "))
        self.notifier.send(STATUS=f"failed: {reason}")


@dataclass
class Components:
    supervisor: Supervisor
    store: Store
    meta: MetaStore
    blocks: BlockCache
    reader: BlockReader
    root: RootTree
    ops: S3Operations
    pinner: Pinner
    writes: WriteBack
    control: Control
    cache_dir: Path  # resolved and secured: where this mount's state lives
    drained_out: bool = False  # the unmount's drain ended with uploads left: stop at once
    stopping: bool = False  # a signal came: systemd's STATUS= is the unmount's from now on
    refused: str | None = None  # why S3 refused the credentials at start (the start fails)


def build(cfg: Config, stack: ExitStack, store: Store | None = None) -> Components:
    """Everything below FUSE, wired together; closed by `stack`."""
    identity = identity_of(cfg)
    cfg = cfg.with_overrides(cache_dir=resolve_cache_dir(cfg.cache_dir, identity))
    assert cfg.cache_dir is not None
    cache_dir = secure_cache_dir(cfg.cache_dir)
    lock = CacheLock(cache_dir)
    lock.acquire()
    stack.callback(lock.release)
    claim(cache_dir, identity)  # another endpoint's cache (and queue) is refused: exit 2
    store = store or S3Store.from_config(cfg)
    # the block cache first: on a full disk it drops cached blocks until the databases
    # (its own, meta, journal) can be opened, then down to the reserve (queued uploads
    # need room to be recorded); pinned blocks and staged writes stay
    reserve = DiskReserve(cache_dir, cfg.cache_reserve)
    blocks = BlockCache(secure_dir(cache_dir / "blocks"), cfg.cache_size,
                        secure_dir(cache_dir / "pinned"), reserve)
    stack.callback(blocks.close)
    blocks.evict_to_reserve()
    meta = MetaStore(cache_dir / "meta.sqlite")
    stack.callback(meta.close)
    supervisor = Supervisor()
    reader = BlockReader(store, blocks, background=supervisor)
    stack.callback(_save_counters, meta, reader)
    siblings = SiblingPrefetcher(reader)
    list_limiter = trio.CapacityLimiter(8)

    journal = Journal(cache_dir / "journal.sqlite")
    stack.callback(journal.close)
    staging = Staging(cache_dir / "staging", blocks.claim, blocks.claim_now)
    queue = UploadQueue(store, journal, staging, background=supervisor, listener_writes=meta,
                        read_only=cfg.read_only)
    queue.keep_uploaded = UploadedBytes(blocks.put, reader.block_size, cfg.cache_size // 8)
    writes = WriteBack(queue, staging, Overlay())

    def bucket(spec: SourceSpec) -> BucketTree:
        tree = ReadOnlyBucketTree if cfg.read_only else BucketTree
        return tree(spec, store, meta, reader, ttl=cfg.metadata_ttl, list_limiter=list_limiter,
                    siblings=siblings, background=supervisor, writes=writes,
                    posix_metadata=cfg.posix_metadata)

    shared = None if cfg.shared_index is None else SharedIndex(
        store, cfg.shared_index, supervisor, publish=not cfg.read_only)
    shards = ShardService(store, reader, ttl=cfg.metadata_ttl, shared=shared)
    manifest_dir = secure_dir(cache_dir / "manifests")
    manifests = [ManifestTree(spec, store, reader, manifest_dir, ttl=cfg.metadata_ttl,
                              limiter=list_limiter, shards=shards) for spec in cfg.manifests]
    for tree in manifests:
        stack.callback(tree.close)
    auto = not cfg.sources and not cfg.manifests
    root = RootTree([*(bucket(s) for s in cfg.sources), *manifests], store=store, meta=meta,
                    ttl=cfg.metadata_ttl, bucket_factory=bucket if auto else None)

    def usage() -> dict[str, Any]:
        use = blocks.usage()
        return {**use, "hits": reader.hits, "misses": reader.misses, "disk_full": reader.disk_full,
                "pinned_over_limit": use["pinned"] > cfg.cache_size}

    pinner = Pinner(root, meta, supervisor, blocks)
    root.use_pins(pinner.covers)
    control = Control(cfg, cache_usage=usage, requests=store.request_counts, link=store.link.status,
                      pinner=pinner, uploads=queue, supervisor=supervisor,
                      idle=Idle(supervisor, queue, store.link),
                      manifest_failures=lambda: manifest_failures(manifests),
                      open_for_writing=writes.open_for_writing)
    ops = S3Operations(root, cfg, control)
    control.inodes = ops.inode_status
    renumbered.restore(ops.inodes, cache_dir)
    return Components(supervisor, store, meta, blocks, reader, root, ops, pinner, writes, control,
                      cache_dir)


def traffic_of(store: Store) -> Callable[[], dict[str, Any]]:
    """The store's request outcomes and bytes for metrics (S3Store.traffic); a store that
    keeps none (a test's) gives its request counts."""
    traffic = getattr(store, "traffic", None)
    if callable(traffic):
        return traffic
    return lambda: {"requests": {(operation, "sent"): count for operation, count
                                 in store.request_counts().items()},
                    "bytes_in": 0, "bytes_out": 0}


def manifest_failures(manifests: list[ManifestTree]) -> list[dict[str, Any]]:
    """Manifests whose index build failed and waits for its backoff (for status). Blocking."""
    failed = []
    for tree in manifests:
        failure = tree.builds.failure()
        if failure is not None:
            etag, count, retry_in, reason = failure
            failed.append({"uri": tree.spec.uri, "etag": etag, "failures": count,
                           "retry_in": round(retry_in), "reason": reason})
    return failed


def tune_malloc() -> None:
    """Serve allocations of 2 MiB and more (blocks) with mmap, so freed blocks go back to the
    OS: glibc otherwise raises its mmap threshold after the first freed block and keeps
    every later 8 MiB buffer in the heap, where RSS only grows. The 1 MiB buffers of FUSE
    writes stay below it: reused from the heap, not mapped and page-faulted in anew for
    every write (that cost a third of the time `cp` of a large file took). And at most
    MALLOC_ARENAS arenas; call before the daemon starts threads (they pick theirs then)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 2 << 20)
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        log.debug("mallopt not available: RSS may stay at its peak")


def no_core_dumps() -> None:
    """Mark the daemon non-dumpable: no core file, and no other process of the same user
    may ptrace it or read its /proc/PID/environ and memory. The daemon holds S3
    credentials in memory (and often in its environment) for its whole life."""
    try:
        if ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_DUMPABLE) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError):
        log.debug("prctl not available: core dumps may hold credentials")


def _save_counters(meta: MetaStore, reader: BlockReader) -> None:
    try:
        meta.add_counters(hits=reader.hits, misses=reader.misses)
    except S3FuseError as exc:
        log.warning("cache hit counters not saved: %s", exc)


def fuse_options(cfg: Config) -> set[str]:
    """libfuse's mount options: pyfuse3's defaults (default_permissions), our names, and
    the kernel flags asked for (noexec, ...: config.KERNEL_FLAGS), which libfuse turns into
    the mount's flags (shown in /proc/mounts)."""
    options = set(pyfuse3.default_options)  # keeps default_permissions
    # noatime whatever was asked: reads never update atime here (posix.md), and a mount
    # shown `relatime` said otherwise
    options |= {"fsname=s3fuse", "subtype=s3fuse", "noatime", *cfg.mount_flags}
    if cfg.allow_other:
        options.add("allow_other")
    return options


async def _serve(cfg: Config, parts: Components, ready: ReadySignal) -> None:
    async with trio.open_nursery() as nursery:
        parts.supervisor.bind(nursery)
        await parts.writes.start()  # journal replay: pending changes show before any request
        parts.pinner.resume()
        nursery.start_soon(_watch_signals, cfg, parts, ready.notifier)
        parts.supervisor.spawn(probe_while_offline, parts.store, kind=PROBE)
        parts.supervisor.spawn(watch_while_in_use, parts.store, watch_interval(cfg.metadata_ttl),
                               kind=LINK_WATCH)
        if ready.notifier.enabled:
            parts.supervisor.spawn(_report_status, parts, ready.notifier, kind=STATUS_REPORT)
        parts.supervisor.spawn(_trim_buffers, kind=BUFFER_TRIM)
        parts.supervisor.spawn(parts.ops.inode_cap.run, kind=INODE_CAP)
        parts.supervisor.spawn(parts.ops.page_dropper.run, kind=PAGE_DROP)
        parts.supervisor.spawn(renumbered.keep_saved, parts.ops.inodes, parts.cache_dir,
                               kind=INODE_SAVE)
        nursery.start_soon(_announce_ready, cfg, parts, ready)
        await pyfuse3.main()
        ready.notifier.send(STOPPING="1", STATUS="unmounting: writing cached blocks")
        # a hung upload is resumed at the next start
        with trio.move_on_after(STOP_AFTER_DRAIN if parts.drained_out else STOP_UPLOADS_TIMEOUT):
            await parts.writes.queue.stop()
        await trio.to_thread.run_sync(parts.writes.staging.drop_spares)
        with trio.move_on_after(FLUSH_TIMEOUT):
            await parts.reader.flush()
        await trio.to_thread.run_sync(lambda: _report_left(parts.writes.queue.status()))
        nursery.cancel_scope.cancel()


async def _trim_buffers(interval: float = TRIM_INTERVAL) -> None:
    """Give the memory of the big buffers kept for reuse back once reads have stopped."""
    while True:
        await trio.sleep(interval)
        trim_all()


async def _report_status(parts: Components, notifier: Notifier) -> None:
    """systemd's STATUS= line (systemctl status): link state and cache use, when they change."""
    last = ""
    while True:
        link = parts.store.link.status()
        usage = await trio.to_thread.run_sync(parts.blocks.usage)
        line = (f"{link['state']}; cache {usage['used'] >> 20} MiB, pinned {usage['pinned'] >> 20} MiB;"
                f" {len(parts.pinner.jobs())} pin jobs")
        if parts.stopping:  # the drain's line ("unmounting: N upload(s)") stays shown
            return
        if line != last:
            notifier.send(STATUS=line)
            last = line
        await trio.sleep(STATUS_INTERVAL)


async def _watch_signals(cfg: Config, parts: Components, notifier: Notifier) -> None:
    """SIGINT/SIGTERM, and SIGHUP (the terminal of a foreground mount or the ssh session
    went away: its default action would kill the daemon and leave a dead mount behind):
    wait (at most drain_timeout) for pending uploads, then unmount; a second signal
    unmounts at once. The mount keeps serving while it drains. (The log file needs no
    SIGHUP to be reopened after logrotate moves it: logs.py.)"""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            break
        parts.stopping = True
        notifier.send(STOPPING="1", STATUS="unmounting")  # systemd: stopping, not after the drain
        with trio.CancelScope() as drain:
            async def second_signal() -> None:
                async for _ in signals:
                    log.warning("second signal: unmounting without waiting for uploads")
                    drain.cancel()
                    return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(second_signal)
                await parts.writes.submit_open()  # files still open: what they hold so far
                parts.drained_out = True  # until the drain ends with nothing left
                parts.drained_out = not await _drain(cfg, parts, notifier)
                nursery.cancel_scope.cancel()
        await parts.ops.inode_cap.stop()  # while requests are still answered (inodecap.py)
        await parts.ops.page_dropper.stop()  # ... and so on (coherence.py)
        pyfuse3.terminate()


async def _drain(cfg: Config, parts: Components, notifier: Notifier) -> bool:
    """Wait at most --drain-timeout for the pending uploads; True when none is left."""
    queue = parts.writes.queue
    pending = await trio.to_thread.run_sync(queue.status)
    if not pending["files"] or queue.read_only:  # a read-only mount's queue waits for another
        return True
    log.info("waiting up to %.0fs for %d pending upload(s) (%d bytes)",
             cfg.drain_timeout, pending["files"], pending["bytes"])
    notifier.send(STATUS=f"unmounting: {pending['files']} upload(s) to finish")
    return not (await queue.sync(cfg.drain_timeout))["files"]


def _report_left(status: dict[str, Any]) -> None:
    if status["files"] and status.get("read_only"):
        log.info("%d journalled change(s) (%d bytes) kept: a read-write mount with this cache "
                 "dir sends them", status["files"], status["bytes"])
        return
    if status["files"]:
        log.warning("%d upload(s) (%d bytes) not done at unmount: they stay journalled and the "
                    "next mount with this cache dir uploads them", status["files"], status["bytes"])
    for failure in status["failures"]:
        log.error("upload of %s failed and is kept: %s (retry with s3fuse sync --retry)",
                  failure["uri"], failure["error"])


async def _announce_ready(cfg: Config, parts: Components, ready: ReadySignal) -> None:
    st = await trio.to_thread.run_sync(os.stat, str(cfg.mountpoint))
    tune_readahead(st.st_dev)
    warnings: list[str] = []
    parts.refused = await credentials_refused(first_request(cfg, parts.store), warnings=warnings)
    if parts.refused is not None:  # `run` fails the start once the mount is gone
        pyfuse3.terminate()
        return
    log.info("mounted %s", cfg.mountpoint)
    ready.ready("; ".join(warnings) or None)


def first_request(cfg: Config, store: Store) -> Callable[[], object]:
    """The request the mount would make first anyway, sent at start to hear what S3 says
    of the credentials: the first page of the first source's listing (what `ls` asks),
    else one byte of the first manifest, else the bucket list (all buckets shown). Not
    ListBuckets for every mount: a key scoped to its buckets is refused that, and each
    start would leave a refusal in the status that says nothing about the mount."""
    if cfg.sources:
        source = cfg.sources[0]

        def first_page() -> object:
            pages = store.list_pages(source.bucket, source.prefix)
            try:
                return next(iter(pages), None)
            finally:
                getattr(pages, "close", lambda: None)()  # no page read ahead
        return first_page
    if cfg.manifests:
        manifest = cfg.manifests[0]
        return lambda: store.get(manifest.bucket, manifest.key, "", 0, 1)
    return store.list_buckets


async def credentials_refused(request: Callable[[], object],
                              wait: float = CREDENTIAL_CHECK_WAIT,
                              warnings: list[str] | None = None) -> str | None:
    """Why no request can succeed (S3 answered `request`, the start's first, with
    InvalidAccessKeyId or SignatureDoesNotMatch, or said a session that s3fuse cannot
    renew has expired: CredentialsExpired), else None: any other answer (a refused
    listing of a key that may GET mounts), none at all (an offline boot mounts, as
    documented), or none within `wait` seconds."""
    with trio.move_on_after(wait):
        try:
            await trio.to_thread.run_sync(request, abandon_on_cancel=True)
        except CredentialsExpired as exc:  # a session nothing here renews: none will do
            return f"S3 says these session credentials have expired ({exc.code}): {exc}"
        except AccessDenied as exc:
            if exc.code in BAD_CREDENTIALS:
                return f"S3 refuses these credentials ({exc.code}): {exc}"
        except NotFound as exc:
            if exc.code == "NoSuchBucket":  # a typo in --source: say it before `ls` does
                warning = (f"{exc}: the bucket does not exist (a typo?): listing it is ENOENT, "
                           "and nothing can be made in it")
                log.warning("%s", warning)
                if warnings is not None:  # for whoever started the mount (ReadySignal.ready)
                    warnings.append(warning)
            else:
                log.debug("credential check at start: %s", exc)
        except S3FuseError as exc:
            log.debug("credential check at start: %s", exc)
        except Exception as exc:  # noqa: BLE001 - a provider's own error (SSO, credential
            # process) met while signing: this task's failure would end the mount; the
            # requests that follow meet it again, each as an error of its own
            log.info("credential check at start: %s", one_line(str(exc)) or type(exc).__name__)
    return None


def tune_readahead(dev: int, kib: int = READAHEAD_KIB) -> None:
    """Let the kernel read ahead 1 MiB instead of 128 KiB on our mount (root only).

    Fewer, larger FUSE reads cut the per-request cost of sequential reads; the
    setting belongs to this mount's own backing device and goes away with it.
    """
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as fh:
            fh.write(str(kib))
    except OSError as exc:
        log.debug("cannot set %s: %s", path, exc.strerror)


def run(cfg: Config, ready: ReadySignal | None = None, store: Store | None = None) -> int:
    """Mount `cfg.mountpoint` and serve it until unmounted or signalled."""
    ready = ready or ReadySignal()
    assert cfg.mountpoint is not None
    os.umask(0o077)  # every cache, index and staging file private (0600), whoever creates it
    no_core_dumps()
    tune_malloc()
    with ExitStack() as stack:
        parts = build(cfg, stack, store)
        if cfg.metrics_address is not None:
            from .metrics import Metrics
            stack.callback(Metrics(cfg.metrics_address, parts.control.status,
                                   traffic_of(parts.store)).close)
        claim = claim_mountpoint(cfg.mountpoint)
        if claim is not None:
            stack.callback(os.close, claim)  # held while mounted
        try:
            mount_with_reason(lambda: pyfuse3.init(parts.ops, str(cfg.mountpoint),
                                                   fuse_options(cfg)))
        except RuntimeError as exc:
            ready.failed(f"cannot mount {cfg.mountpoint}: {exc}")
            log.error("cannot mount %s: %s", cfg.mountpoint, exc)
            return 1
        try:
            trio.run(_serve, cfg, parts, ready)
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", cfg.mountpoint)
            renumbered.save(parts.ops.inodes, parts.cache_dir)  # for the next mount
    if parts.refused is not None:
        raise UsageError(parts.refused)
    return 0
