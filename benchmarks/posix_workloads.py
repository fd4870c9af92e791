"""POSIX metadata workloads (issue 14): `cp -a`, `chmod`, `rsync -a` a second time and a
cold `ls -l` of objects carrying s3fs's headers, timed, with the S3 requests each sent.

Every filesystem is mounted through a counting proxy (``benchmarks.counting``) for these,
since s3fs and rclone report no request counts. *Durable* is watched straight against
SeaweedFS with boto3: every object listed with its bytes (size, MD5 ETag) and a HEAD showing
its mtime and, for a tool that stores modes, its mode. The files are written under a new
prefix ``bench-writes/<fs>-<ns>/`` per round and filesystem, deleted once measured.
Registered (after the write workloads) by importing this module from run.py.

The files sit in one directory that the harness makes (untimed) and the commands name the
files, so no directory's metadata changes: SeaweedFS keeps no user metadata on a ``dir/``
marker (a PUT drops it) and answers NoSuchKey to a CopyObject of one, so s3fs's
chmod/utime of a directory fails there with ENOENT (so would any tool's).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import stat
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.counting import CountingProxy
from benchmarks.datasets import DataSpec, SetupEnv
from benchmarks.s3 import S3Target
from benchmarks.workloads import (
    Context,
    Metric,
    MetricsFailed,
    NotSupported,
    WorkloadError,
    expect,
    run_timed,
    timed,
    workload,
)
from benchmarks.write_workloads import (
    DURABLE_TIMEOUT,
    POLL,
    WRITE_PREFIX,
    cleanup,
    new_prefix,
    settle,
    warm,
)
from s3fuse.posix import Posix, from_headers, to_headers

log = logging.getLogger(__name__)

TREE_SEED = 1414
TREE_MODES = (0o644, 0o640, 0o600, 0o755)
TREE_SIZES = (256, 4096)
TREE_MTIME = 1_600_000_000  # whole seconds: every tool stores at least those
DIR_MODE = 0o755
META_DIR = "posix-meta"
META_OWNER = 1000
CHMOD = "g+w"  # none of TREE_MODES has it: every file changes
CHMOD_BITS = stat.S_IWGRP
QUIET = 1.0  # no request for this long: the tool is done (its trailing requests counted)
QUIET_TIMEOUT = 30.0
HEAD_THREADS = 16
REHEAD_AFTER = 2.0  # LastModified has 1 s resolution: HEAD again until this long after it
PUT_THREADS = 16
DIRECTORY_TYPE = "application/x-directory"


@dataclass(frozen=True)
class TreeFile:
    """One file: name, bytes, permission bits, mtime (s)."""

    rel: str
    body: bytes
    mode: int
    mtime: int

    @property
    def md5(self) -> str:
        return hashlib.md5(self.body, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Want:
    """What a durable object looks like: its bytes, mode (None: not checked) and mtime."""

    size: int
    md5: str
    mode: int | None
    mtime: int


def tree_files(spec: DataSpec) -> list[TreeFile]:
    """``spec.small_files`` files: random bytes, mixed modes, distinct whole-second mtimes
    (always the same for the same spec)."""
    rng = random.Random(TREE_SEED)
    return [TreeFile(f"f{i:04d}.bin", rng.randbytes(rng.randint(*TREE_SIZES)),
                     TREE_MODES[i % len(TREE_MODES)], TREE_MTIME + 37 * i)
            for i in range(spec.small_files)]


def tree_source(data_dir: Path) -> Path:
    return data_dir / "posix-tree"


def posix_tree_source(env: SetupEnv) -> None:
    """The local files `cp -a` and `rsync -a` copy, their modes and mtimes set."""
    top = tree_source(env.data_dir)
    top.mkdir(parents=True, exist_ok=True)
    for f in tree_files(env.spec):
        path = top / f.rel
        path.write_bytes(f.body)
        path.chmod(f.mode)
        os.utime(path, (f.mtime, f.mtime))


def file_headers(f: TreeFile, mode: int, owner: int) -> dict[str, str]:
    """s3fs's headers of a file (s3fuse.posix writes exactly its format)."""
    ns = f.mtime * 1_000_000_000
    return to_headers(Posix(mode=stat.S_IFREG | mode, uid=owner, gid=owner, mtime_ns=ns,
                            ctime_ns=ns, atime_ns=ns))


def dir_headers(owner: int) -> dict[str, str]:
    ns = TREE_MTIME * 1_000_000_000
    return to_headers(Posix(mode=stat.S_IFDIR | DIR_MODE, uid=owner, gid=owner, mtime_ns=ns,
                            ctime_ns=ns, atime_ns=ns))


def put_objects(target: S3Target, items: Sequence[tuple[str, bytes, dict[str, str], str | None]]
                ) -> None:
    """PUT (key, body, user metadata, content type) objects concurrently, straight to S3."""
    client = target.client(max_connections=PUT_THREADS)

    def put(item: tuple[str, bytes, dict[str, str], str | None]) -> None:
        key, body, metadata, content_type = item
        extra = {"ContentType": content_type} if content_type else {}
        client.put_object(Bucket=target.bucket, Key=key, Body=body, Metadata=metadata, **extra)

    with ThreadPoolExecutor(PUT_THREADS) as pool:
        list(pool.map(put, items))


def tree_objects(top: str, files: Sequence[TreeFile], owner: int
                 ) -> list[tuple[str, bytes, dict[str, str], str | None]]:
    """The objects s3fs would have written for the files in directory ``top`` (its marker
    included)."""
    return [(f"{top}/", b"", dir_headers(owner), DIRECTORY_TYPE)] + [
        (f"{top}/{f.rel}", f.body, file_headers(f, f.mode, owner), None) for f in files]


def posix_meta_objects(env: SetupEnv) -> None:
    """A directory of ``small_files`` objects written with s3fs's metadata headers."""
    files = tree_files(env.spec)
    put_objects(env.target, tree_objects(META_DIR, files, META_OWNER))


# -- durability: bytes and metadata in S3 ------------------------------------------------


def listing(client, bucket: str, prefix: str) -> dict[str, tuple[int, str, float]]:
    """{key: (size, etag, LastModified as a timestamp)} of the files under ``prefix/``."""
    found = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                found[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'),
                                     obj["LastModified"].timestamp())
    return found


def head_metadata(client, bucket: str, key: str) -> dict[str, str] | None:
    try:
        return client.head_object(Bucket=bucket, Key=key)["Metadata"]
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def mismatch(metadata: dict[str, str] | None, want: Want) -> str | None:
    """Why the headers are not (yet) the wanted ones, or None."""
    if metadata is None:
        return "gone"
    posix = from_headers(metadata)
    if posix.mtime_ns is None or posix.mtime_ns // 1_000_000_000 != want.mtime:
        return f"mtime {metadata.get('mtime')!r}, want {want.mtime}"
    if want.mode is not None and (posix.mode is None or stat.S_IMODE(posix.mode) != want.mode):
        return f"mode {metadata.get('mode')!r}, want {want.mode:o}"
    return None


def wait_durable(target: S3Target, prefix: str, wants: dict[str, Want], start: float) -> float:
    """Seconds from ``start`` until every wanted object under ``prefix/`` is listed with its
    bytes and HEADs with its metadata (polled every POLL s; an object is HEADed again only
    while its LastModified may still change); WorkloadError after DURABLE_TIMEOUT."""
    client = target.client(max_connections=HEAD_THREADS)
    pending = dict(wants)
    headed: dict[str, tuple[float, float]] = {}  # key -> (LastModified, when HEADed)
    why: dict[str, str] = {}
    with ThreadPoolExecutor(HEAD_THREADS) as pool:
        while True:
            listed = listing(client, target.bucket, prefix)
            due = []
            for key, want in pending.items():
                got = listed.get(key)
                if got is None or got[:2] != (want.size, want.md5):
                    why[key] = "missing" if got is None else f"listed {got[0]} bytes, {got[1]}"
                    continue
                last = headed.get(key)
                if last is None or last[0] != got[2] or last[1] < got[2] + REHEAD_AFTER:
                    due.append((key, got[2]))
            heads = pool.map(lambda item: head_metadata(client, target.bucket, item[0]), due)
            for (key, modified), metadata in zip(due, heads):
                headed[key] = (modified, time.time())
                wrong = mismatch(metadata, pending[key])
                if wrong is None:
                    del pending[key]
                else:
                    why[key] = wrong
            elapsed = time.perf_counter() - start
            if not pending:
                return elapsed
            if elapsed > DURABLE_TIMEOUT:
                first = sorted(pending)[:3]
                raise WorkloadError(f"{len(pending)} of {len(wants)} objects not durable "
                                    f"{DURABLE_TIMEOUT:.0f} s after the command started: "
                                    + "; ".join(f"{k}: {why.get(k, '?')}" for k in first))
            time.sleep(POLL)


def tree_wants(top: str, files: Sequence[TreeFile], stores_mode: bool,
               extra_bits: int = 0) -> dict[str, Want]:
    return {f"{top}/{f.rel}": Want(len(f.body), f.md5, (f.mode | extra_bits) if stores_mode
                                   else None, f.mtime) for f in files}


# -- requests ------------------------------------------------------------------------------


def request_metrics(prefix: str, what: str) -> list[Metric]:
    """Rows for the requests counted at the proxy: all of them, then PUT, COPY and HEAD."""
    return [Metric(f"{prefix}_req", f"S3 requests {what}", "req"),
            Metric(f"{prefix}_put", "of which PUT (objects and parts)", "req"),
            Metric(f"{prefix}_copy", "of which COPY (CopyObject, UploadPartCopy)", "req"),
            Metric(f"{prefix}_head", "of which HEAD", "req")]


def requests_since(counter: CountingProxy, before, prefix: str) -> dict[str, float]:
    """The requests since ``before`` once the tool has gone quiet, as request_metrics rows."""
    counter.wait_quiet(QUIET, QUIET_TIMEOUT)
    got = counter.since(before)
    return {f"{prefix}_req": got["total"], f"{prefix}_put": got["PUT"],
            f"{prefix}_copy": got["COPY"], f"{prefix}_head": got["HEAD"]}


def keys_of(metrics: Sequence[Metric]) -> list[str]:
    return [m.key for m in metrics]


def check_exit(proc, what: str, values: dict[str, float], failed: Sequence[str]) -> None:
    """A tool that exits non-zero has failed the workload: a result (MetricsFailed)."""
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        raise MetricsFailed(f"{what} exits {proc.returncode} with {len(lines)} error line"
                            f"{'s' * (len(lines) > 1)}, the first: {lines[0][:300]}",
                            values, failed)


def durable_or_fail(target: S3Target, prefix: str, wants: dict[str, Want], start: float,
                    values: dict[str, float], failed: Sequence[str]) -> float:
    try:
        return wait_durable(target, prefix, wants, start)
    except WorkloadError as exc:
        raise MetricsFailed(str(exc), values, failed) from None


# -- cp_a_small ------------------------------------------------------------------------------

CP_METRICS = [
    Metric("cp_a_close", "close: until `cp -a` returns"),
    Metric("cp_a_durable", "durable: from the start of `cp -a` until every object in S3 has "
           "its bytes, mode and mtime"),
    *request_metrics("cp_a", "until durable"),
]

TOOLS_NOTE = ("s3fs stores mode, owner and times in `x-amz-meta-*` headers (no option "
              "needed); rclone stores the mtime (`X-Amz-Meta-Mtime`, its default) and no mode, "
              "so for rclone only the mtime is waited for. Every filesystem is mounted "
              "through a request-counting TCP proxy in front of SeaweedFS for this section "
              "(requests counted until the tool has sent none for "
              f"{QUIET:.0f} s). The commands name the files, in one directory made "
              "beforehand: SeaweedFS keeps no metadata on a directory marker and refuses to "
              "copy one, so a directory's chmod or utime fails with s3fs there.")


@workload(
    "cp_a_small",
    "`cp -a` of {small_files:,} small files (modes, mtimes) into the mount",
    CP_METRICS,
    setups=(posix_tree_source,),
    notes=f"`cp -a -t DEST FILE...` of {{small_files:,}} local files ({TREE_SIZES[0]}-"
          f"{TREE_SIZES[1]} random bytes, modes {', '.join(f'{m:o}' for m in TREE_MODES)}, "
          f"distinct past mtimes) to a new directory under `{WRITE_PREFIX}/` (fresh mount, "
          "empty FS cache, page cache warm). *Durable*: "
          f"`ListObjectsV2` every {POLL * 1000:.0f} ms until every key has its size and MD5 "
          "ETag, and a `HeadObject` of each shows its mtime and mode. " + TOOLS_NOTE,
)
def cp_a_small(ctx: Context) -> dict[str, float]:
    files = tree_files(ctx.spec)
    source = tree_source(ctx.data_dir)
    fs = ctx.fs
    with fs.through_counter() as counter:
        ctx.fresh_mount()
        prefix = new_prefix(ctx)
        sources = [source / f.rel for f in files]
        warm(sources)
        try:
            before = counter.counts()
            start = time.perf_counter()
            close, proc = run_timed(["cp", "-a", "-t", ctx.at(prefix), *sources],
                                    label=f"cp -a of {len(files)} files")
            check_exit(proc, "cp -a", {}, keys_of(CP_METRICS))
            values = {"cp_a_close": close}
            values["cp_a_durable"] = durable_or_fail(
                fs.target, prefix, tree_wants(prefix, files, fs.stores_mode), start, values,
                keys_of(CP_METRICS[1:]))
            values.update(requests_since(counter, before, "cp_a"))
        finally:
            cleanup(ctx, prefix)
    return values


# -- chmod_r ---------------------------------------------------------------------------------

CHMOD_METRICS = [
    Metric("chmod_r_time", f"until `chmod {CHMOD} FILE...` returns"),
    Metric("chmod_r_durable", "durable: from its start until every object in S3 has the new "
           "mode"),
    *request_metrics("chmod_r", "until durable"),
]


@workload(
    "chmod_r",
    "`chmod` of {small_files:,} uploaded files",
    CHMOD_METRICS,
    notes="The files of the `cp -a` section written straight to S3 as s3fs writes them (its "
          "headers), mounted fresh (empty FS cache) and listed once with `ls -l` (untimed, "
          f"so every entry is looked up), then `chmod {CHMOD}` of every file (each one "
          "changes; what `chmod -R` does per file). *Durable*: as above, until every file's "
          "`HeadObject` shows the new mode; tools and proxy as in the `cp -a` section. A tool "
          "whose chmod exits 0 "
          "but stores nothing is shown as not supported (checked every round).",
)
def chmod_r(ctx: Context) -> dict[str, float]:
    files = tree_files(ctx.spec)
    fs = ctx.fs
    prefix = f"{WRITE_PREFIX}/{fs.name}-{time.time_ns()}"
    top = f"{prefix}/tree"
    with fs.through_counter() as counter:
        try:
            put_objects(fs.target, tree_objects(top, files, 0))
            ctx.fresh_mount()
            timed(["ls", "-l", ctx.at(top)], capture=True, label="warming `ls -l`")
            counter.wait_quiet(QUIET, QUIET_TIMEOUT)
            before = counter.counts()
            start = time.perf_counter()
            elapsed, proc = run_timed(["chmod", CHMOD, *(ctx.at(top) / f.rel for f in files)],
                                      label=f"chmod of {len(files)} files")
            check_exit(proc, f"chmod {CHMOD}", {}, keys_of(CHMOD_METRICS))
            values = {"chmod_r_time": elapsed}
            if not fs.stores_mode:
                raise chmod_stores_nothing(ctx, counter, before, top, files[0])
            values["chmod_r_durable"] = durable_or_fail(
                fs.target, top, tree_wants(top, files, True, CHMOD_BITS), start, values,
                keys_of(CHMOD_METRICS[1:]))
            values.update(requests_since(counter, before, "chmod_r"))
        finally:
            cleanup(ctx, prefix)
    return values


def chmod_stores_nothing(ctx: Context, counter: CountingProxy, before, top: str,
                         first: TreeFile) -> NotSupported:
    """Check that a tool said not to store modes indeed stored none (else the harness is out
    of date: WorkloadError); the NotSupported to raise, saying what the chmod did."""
    counter.wait_quiet(QUIET, QUIET_TIMEOUT)
    sent = counter.since(before)
    key = f"{top}/{first.rel}"
    stored = head_metadata(ctx.fs.target.client(), ctx.fs.target.bucket, key) or {}
    want = first.mode | CHMOD_BITS
    mode = from_headers(stored).mode
    if mode is not None and stat.S_IMODE(mode) == want:
        raise WorkloadError(f"{ctx.fs.name} stored the new mode of {key}: set its stores_mode")
    shown = stat.S_IMODE(os.lstat(ctx.at(key)).st_mode)
    return NotSupported(f"`chmod {CHMOD}` exits 0 but {ctx.fs.name} stores no mode: "
                        f"{sent['total']} requests sent ({sent['COPY']} COPY, {sent['PUT']} "
                        f"PUT), the mount shows {shown:o} for a file "
                        f"whose new mode is {want:o}")


# -- rsync_again -----------------------------------------------------------------------------

RSYNC_METRICS = [
    Metric("rsync_warm", "again on the same mount: until it returns"),
    *request_metrics("rsync_warm", "sent by it"),
    Metric("rsync_warm_sent", "files it sent again", "files"),
    Metric("rsync_cold", "again after a remount with an empty FS cache"),
    *request_metrics("rsync_cold", "sent by it"),
    Metric("rsync_cold_sent", "files it sent again", "files"),
]
_TRANSFERRED = re.compile(r"Number of regular files transferred: ([\d,]+)")


@workload(
    "rsync_again",
    "`rsync -a` of the {small_files:,} files a second time (nothing to send)",
    RSYNC_METRICS,
    setups=(posix_tree_source,),
    notes="The files of the `cp -a` section copied with `rsync -a FILE... DEST/` (untimed) "
          f"to a new directory under `{WRITE_PREFIX}/` and waited for until durable (as above), "
          "then the same `rsync -a` again: on the same mount, then after a remount with an "
          "empty FS cache. A second run should send no file (rsync compares size and mtime; "
          "a tool that keeps no modes only makes it repeat its chmods, which cost nothing "
          "there). *Files sent again*: rsync's `--stats`. Tools and proxy as in the `cp -a` "
          "section.",
)
def rsync_again(ctx: Context) -> dict[str, float]:
    files = tree_files(ctx.spec)
    source = tree_source(ctx.data_dir)
    fs = ctx.fs
    every = keys_of(RSYNC_METRICS)
    with fs.through_counter() as counter:
        ctx.fresh_mount()
        prefix = new_prefix(ctx)
        sources = [source / f.rel for f in files]
        warm(sources)
        argv = ["rsync", "-a", "--stats", *sources, f"{ctx.at(prefix)}/"]
        try:
            start = time.perf_counter()
            _, proc = run_timed(argv, label="first rsync -a")
            check_exit(proc, "the first rsync -a", {}, every)
            durable_or_fail(fs.target, prefix, tree_wants(prefix, files, fs.stores_mode), start,
                            {}, every)
            values: dict[str, float] = {}
            for run in ("warm", "cold"):
                settle(ctx)
                if run == "cold":
                    ctx.fresh_mount()
                counter.wait_quiet(QUIET, QUIET_TIMEOUT)  # mount-time requests not counted
                before = counter.counts()
                elapsed, proc = run_timed(argv, label=f"rsync -a again ({run})")
                check_exit(proc, f"rsync -a again ({run})", values,
                           [k for k in every if k not in values])
                sent = _TRANSFERRED.search(proc.stdout.decode(errors="replace"))
                expect(sent is not None, "rsync --stats printed no transferred count")
                values[f"rsync_{run}"] = elapsed
                values[f"rsync_{run}_sent"] = int(sent.group(1).replace(",", ""))
                values.update(requests_since(counter, before, f"rsync_{run}"))
        finally:
            cleanup(ctx, prefix)
    return values


# -- ls_l_meta -------------------------------------------------------------------------------

LS_METRICS = [
    Metric("ls_meta_cold", "cold `ls -l`"),
    *request_metrics("ls_meta", "sent by it"),
]


@workload(
    "ls_l_meta",
    "`ls -l` of a cold directory of {small_files:,} objects with s3fs metadata",
    LS_METRICS,
    setups=(posix_meta_objects,),
    notes=f"One directory `{META_DIR}/` of {{small_files:,}} objects written straight to S3 "
          "with s3fs's headers (`x-amz-meta-mode`, `-uid`, `-gid`, `-mtime`, `-ctime`, "
          "`-atime`; modes and mtimes as in the `cp -a` section), listed with `ls -l` on a "
          "fresh mount (empty FS cache, page cache dropped). Afterwards every entry's "
          "`lstat` must show the stored mtime (and mode, for a tool that reads modes): a "
          "listing showing defaults instead counts as failed. Mounted through the "
          "request-counting proxy (requests counted until none for "
          f"{QUIET:.0f} s; the mount's own requests before `ls` not counted).",
)
def ls_l_meta(ctx: Context) -> dict[str, float]:
    files = tree_files(ctx.spec)
    directory = ctx.at(META_DIR)
    fs = ctx.fs
    with fs.through_counter() as counter:
        ctx.fresh_mount()
        counter.wait_quiet(QUIET, QUIET_TIMEOUT)
        before = counter.counts()
        elapsed, out = timed(["ls", "-l", directory], capture=True)
        values = {"ls_meta_cold": elapsed, **requests_since(counter, before, "ls_meta")}
        entries = len(out.splitlines()) - 1  # first line is "total N"
        expect(entries == len(files), f"ls -l listed {entries} entries, expected {len(files)}")
        wrong = shown_wrong(directory, files, fs.stores_mode)
    if wrong:
        raise MetricsFailed(f"`ls -l` shows other metadata than stored for {len(wrong)} of "
                            f"{len(files)} entries ({'; '.join(wrong[:2])}); it took "
                            f"{elapsed:.3f} s and {values['ls_meta_req']:.0f} requests",
                            {}, keys_of(LS_METRICS))
    return values


def shown_wrong(directory: Path, files: Sequence[TreeFile], stores_mode: bool) -> list[str]:
    """Entries whose lstat does not show the stored mtime (and mode, when checked)."""
    wrong = []
    for f in files:
        st = os.lstat(directory / f.rel)
        if int(st.st_mtime) != f.mtime or (stores_mode and stat.S_IMODE(st.st_mode) != f.mode):
            wrong.append(f"{f.rel}: mode {stat.S_IMODE(st.st_mode):o} mtime {int(st.st_mtime)}, "
                         f"stored {f.mode:o} {f.mtime}")
    return wrong
