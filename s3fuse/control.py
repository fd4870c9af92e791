"""The control plane: status and commands through xattrs on the mount root.

`s3fuse status` and `s3fuse umount` talk to a running daemon by reading
`user.s3fuse.*` xattrs of the mountpoint, so there is no socket to secure and no
hidden file in the tree. Values are JSON or plain text; never credentials.

`user.s3fuse.idle` is for tests and scripts that must wait for background work: setting
it to a number of seconds blocks until the daemon is idle (see idle.py) or that time has
passed; reading it answers the current state at once (so `getfattr -d` never blocks).

Who may do what: only the mount's owner (the daemon's user, the `--uid` it shows files
as, or root) may set a control attribute, whatever the modes say: the kernel checks the
root's permission bits, which `--dir-mode 0777` opens to everyone. Anyone the kernel
lets read the root may read the status, but a caller who is not an owner gets a summary
(`restricted: true`): counts and states, never a key, path, URL or error text (those
name other users' files and may carry anything a hostile key holds).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable

import trio

from . import __version__
from .config import Config
from .errors import InvalidArgument, NotPermitted, ReadOnly
from .idle import Idle
from .names import is_relative_path
from .pinning import Pinner
from .redact import redact_url
from .upload.queue import UploadQueue
from .util.supervisor import Supervisor

log = logging.getLogger(__name__)

STATUS = "user.s3fuse.status"
PID = "user.s3fuse.pid"
JOBS = "user.s3fuse.jobs"    # get: pin/unpin jobs with progress (JSON)
PIN = "user.s3fuse.pin"      # set: start pinning a mount-relative path; get: the pins (JSON)
UNPIN = "user.s3fuse.unpin"  # set: start unpinning a mount-relative path
UPLOADS = "user.s3fuse.uploads"  # get: the upload queue (JSON)
#: get: the same, and versions held for their writer's release go now (queue.py, `hold`):
#: polled by `s3fuse sync`. Not listed, so `getfattr -d` never reads it.
SYNC = "user.s3fuse.sync"
RETRY = "user.s3fuse.retry"      # set: queue the permanently failed uploads again
#: set "ID ID ...": give up these failed changes (`s3fuse sync --discard`, which showed them);
#: get: the ids the last such request dropped (JSON)
DISCARD = "user.s3fuse.discard"
DISCARD_MAX = 10_000  # ids in one request
IDLE = "user.s3fuse.idle"        # set SECONDS: wait (that long at most) until idle; get: state
IDLE_WAIT_MAX = 600.0
#: The upload queue's lists that name keys: a reader who is not an owner gets their lengths.
PER_KEY = ("failures", "retrying", "conflicts")


class Control:
    """Root xattrs: status, pid, and pin jobs."""

    def __init__(self, cfg: Config, *, cache_usage: Callable[[], dict[str, Any]],
                 requests: Callable[[], dict[str, int]], link: Callable[[], dict[str, Any]],
                 pinner: Pinner, uploads: UploadQueue | None = None, started: float | None = None,
                 supervisor: Supervisor | None = None, idle: Idle | None = None,
                 manifest_failures: Callable[[], list[dict[str, Any]]] = list,
                 open_for_writing: Callable[[], int] = lambda: 0):
        self.cfg = cfg
        self._open_for_writing = open_for_writing
        self._manifest_failures = manifest_failures
        self.pinner = pinner
        self.uploads = uploads
        self.supervisor = supervisor
        self.idle = idle
        self._cache_usage = cache_usage
        self._requests = requests
        self._link = link
        self.started = time.time() if started is None else started
        #: held, cap and invalidated inodes (the FUSE adapter's; daemon.py sets it, read on
        #: the trio thread)
        self.inodes: Callable[[], dict[str, int]] | None = None
        self.owners = frozenset({0, os.geteuid(), cfg.uid})
        self.discarded: list[int] = []  # job ids the last discard request dropped

    def is_owner(self, caller: int | None) -> bool:
        """May `caller` (a uid; None: unknown) drive the mount? Unknown callers may not."""
        return caller is not None and caller in self.owners

    def names(self) -> list[str]:
        return [STATUS, PID, JOBS, PIN, UNPIN, UPLOADS, RETRY, DISCARD] + (
            [IDLE] if self.idle else [])

    def readable(self, name: str) -> bool:
        """Listed names, and SYNC (read by name only)."""
        return name == SYNC or name in self.names()

    async def get(self, name: str, caller: int | None) -> bytes:
        """The value of control attribute `name` as `caller` may see it."""
        if not self.is_owner(caller) and name not in (STATUS, PID, IDLE, UPLOADS, SYNC, RETRY):
            raise NotPermitted(f"{name}: the mount owner's only (uid {caller})")
        if name == PID:
            return str(os.getpid()).encode()
        if name == JOBS:
            return json.dumps(self.pinner.jobs()).encode()
        if name in (PIN, UNPIN):
            return json.dumps(self.pinner.pins()).encode()
        if name == DISCARD:
            return json.dumps({"dropped": self.discarded}).encode()
        if name in (UPLOADS, SYNC, RETRY):
            if name == SYNC and self.uploads is not None:  # `s3fuse sync` waits on this
                self.uploads.release_holds()
            queue = await trio.to_thread.run_sync(self._uploads)
            queue["open_for_writing"] = self._open_for_writing()  # read on the trio thread
            return json.dumps(queue if self.is_owner(caller) else queue_summary(queue)).encode()
        if name == IDLE and self.idle is not None:
            return json.dumps(await self.idle.state(), sort_keys=True).encode()
        status = await trio.to_thread.run_sync(self.status)  # cache use, the upload journal
        status["pins"] = self.pinner.pins()  # read on the trio thread, where they change
        if self.supervisor is not None:
            status["supervisor"] = self.supervisor.status()
        if self.inodes is not None:
            status["inodes"] = self.inodes()
        shown = status if self.is_owner(caller) else status_summary(status)
        return json.dumps(shown, sort_keys=True).encode()

    async def set(self, name: str, value: bytes, caller: int | None) -> None:
        """Act on control attribute `name`: the owners' only (EPERM for anyone else)."""
        if not self.is_owner(caller):
            log.info("refused %s from uid %s: only the mount's owner may drive it", name, caller)
            raise NotPermitted(f"{name}: only the mount's owner may drive it (uid {caller})")
        if name == RETRY and self.uploads is not None:
            count = await self.uploads.retry_failed()
            log.info("%d failed upload(s) queued again on request", count)
            return
        if name == DISCARD and self.uploads is not None:
            dropped = await self.uploads.discard_failed(_job_ids(value))
            self.discarded = [job.id for job in dropped]
            log.info("%d failed change(s) given up on request", len(dropped))
            return
        if name == IDLE and self.idle is not None:
            await self.idle.wait(_seconds(value))
            return
        if name not in (PIN, UNPIN):
            raise ReadOnly(name)
        path = os.fsdecode(value).strip("/")
        if not is_relative_path(path):
            raise InvalidArgument(f"bad path {path!r}")
        self.pinner.start(path, "pin" if name == PIN else "unpin")

    def status(self) -> dict[str, Any]:
        """The status but for pins and background tasks (`get` adds them). Blocking."""
        cfg = self.cfg
        requests = self._requests()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "mountpoint": str(cfg.mountpoint),
            "started": self.started,
            "link": self._link(),
            "read_only": cfg.read_only,
            "endpoint_url": redact_url(cfg.endpoint_url),
            "sources": [s.uri for s in cfg.sources],
            "manifests": [m.uri for m in cfg.manifests],
            "manifest_failures": self._manifest_failures(),
            "cache": _with_hit_ratio({"dir": str(cfg.cache_dir), "limit": cfg.cache_size,
                                      **self._cache_usage()}),
            "requests": requests,
            "requests_per_second": round(sum(requests.values())
                                         / max(1.0, time.time() - self.started), 2),
            "uploads": self._uploads(),
        }

    def _uploads(self) -> dict[str, Any]:
        """The upload queue: pending files and bytes, oldest age, failures, conflicts.
        Blocking (the journal)."""
        if self.uploads is None:
            return {"files": 0, "bytes": 0, "uploading": 0, "oldest_age": None, "failures": [],
                    "retrying": [], "conflicts": []}
        return {**self.uploads.status(), "online": self._link()["state"] == "online"}


def _with_hit_ratio(cache: dict[str, Any]) -> dict[str, Any]:
    """The share of blocks read from the cache (None before any was read)."""
    hits, misses = cache.get("hits", 0), cache.get("misses", 0)
    return {**cache, "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None}


def queue_summary(queue: dict[str, Any]) -> dict[str, Any]:
    """The upload queue for a reader who is not an owner: counts, no keys or errors."""
    shown = {k: v for k, v in queue.items() if k not in PER_KEY}
    return {**shown, **{k: [] for k in PER_KEY}, "restricted": True,
            "hidden": {k: len(queue.get(k, [])) for k in PER_KEY}}


def status_summary(status: dict[str, Any]) -> dict[str, Any]:
    """The status for a reader who is not an owner: what is chosen here, nothing else
    (a field added to the status later stays the owners' until it is listed here)."""
    link, cache = status["link"], status["cache"]
    tasks = status.get("supervisor")
    return {
        "restricted": True,
        **{k: status[k] for k in ("version", "pid", "mountpoint", "started", "read_only")},
        "link": {"state": link["state"], "since": link["since"], "recent_errors": []},
        "cache": {k: cache[k] for k in ("limit", "used", "pinned", "disk_full", "pinned_over_limit",
                                        "hit_ratio") if k in cache},
        "uploads": queue_summary(status["uploads"]),
        "pins": [], "hidden": {"pins": len(status.get("pins", []))},
        **({"supervisor": {"kinds": tasks.get("kinds", {}), "recent_failures": []}}
           if tasks is not None else {}),
    }


def _job_ids(value: bytes) -> list[int]:
    """The job ids of a discard request: decimal numbers separated by spaces."""
    try:
        ids = [int(word) for word in value.decode("ascii").split()]
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument(f"bad job ids {value[:32]!r}") from None
    if len(ids) > DISCARD_MAX:
        raise InvalidArgument(f"more than {DISCARD_MAX} job ids")
    return ids


def _seconds(value: bytes) -> float:
    """The idle wait's bound: a number of seconds, at most IDLE_WAIT_MAX."""
    try:
        seconds = float(value.decode("ascii").strip() or IDLE_WAIT_MAX)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument(f"bad number of seconds {value[:32]!r}") from None
    if math.isnan(seconds) or seconds < 0:
        raise InvalidArgument(f"bad number of seconds {value[:32]!r}")
    return min(seconds, IDLE_WAIT_MAX)
