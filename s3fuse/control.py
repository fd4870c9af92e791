"""The control plane: status and commands through xattrs on the mount root.

`s3fuse status` and `s3fuse umount` talk to a running daemon by reading
`user.s3fuse.*` xattrs of the mountpoint, so there is no socket to secure and no
hidden file in the tree. Values are JSON or plain text; never credentials.

`user.s3fuse.idle` is for tests and scripts that must wait for background work: setting
it to a number of seconds blocks until the daemon is idle (see idle.py) or that time has
passed; reading it answers the current state at once (so `getfattr -d` never blocks).
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
from .errors import InvalidArgument, ReadOnly
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
UPLOADS = "user.s3fuse.uploads"  # get: the upload queue (JSON), polled by `s3fuse sync`
RETRY = "user.s3fuse.retry"      # set: queue the permanently failed uploads again
IDLE = "user.s3fuse.idle"        # set SECONDS: wait (that long at most) until idle; get: state
IDLE_WAIT_MAX = 600.0


class Control:
    """Root xattrs: status, pid, and pin jobs."""

    def __init__(self, cfg: Config, *, cache_usage: Callable[[], dict[str, Any]],
                 requests: Callable[[], dict[str, int]], link: Callable[[], dict[str, Any]],
                 pinner: Pinner, uploads: UploadQueue | None = None, started: float | None = None,
                 supervisor: Supervisor | None = None, idle: Idle | None = None):
        self.cfg = cfg
        self.pinner = pinner
        self.uploads = uploads
        self.supervisor = supervisor
        self.idle = idle
        self._cache_usage = cache_usage
        self._requests = requests
        self._link = link
        self.started = time.time() if started is None else started

    def names(self) -> list[str]:
        return [STATUS, PID, JOBS, PIN, UNPIN, UPLOADS, RETRY] + ([IDLE] if self.idle else [])

    async def get(self, name: str) -> bytes:
        if name == PID:
            return str(os.getpid()).encode()
        if name == JOBS:
            return json.dumps(self.pinner.jobs()).encode()
        if name in (PIN, UNPIN):
            return json.dumps(self.pinner.pins()).encode()
        if name in (UPLOADS, RETRY):
            return json.dumps(await trio.to_thread.run_sync(self._uploads)).encode()
        if name == IDLE and self.idle is not None:
            return json.dumps(await self.idle.state(), sort_keys=True).encode()
        status = await trio.to_thread.run_sync(self.status)  # cache use, the upload journal
        status["pins"] = self.pinner.pins()  # read on the trio thread, where they change
        if self.supervisor is not None:
            status["supervisor"] = self.supervisor.status()
        return json.dumps(status, sort_keys=True).encode()

    async def set(self, name: str, value: bytes) -> None:
        if name == RETRY and self.uploads is not None:
            count = await self.uploads.retry_failed()
            log.info("%d failed upload(s) queued again on request", count)
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
            "cache": {"dir": str(cfg.cache_dir), "limit": cfg.cache_size, **self._cache_usage()},
            "requests": self._requests(),
            "uploads": self._uploads(),
        }

    def _uploads(self) -> dict[str, Any]:
        """The upload queue: pending files and bytes, oldest age, failures, conflicts.
        Blocking (the journal)."""
        if self.uploads is None:
            return {"files": 0, "bytes": 0, "uploading": 0, "oldest_age": None, "failures": [],
                    "retrying": [], "conflicts": []}
        return {**self.uploads.status(), "online": self._link()["state"] == "online"}


def _seconds(value: bytes) -> float:
    """The idle wait's bound: a number of seconds, at most IDLE_WAIT_MAX."""
    try:
        seconds = float(value.decode("ascii").strip() or IDLE_WAIT_MAX)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument(f"bad number of seconds {value[:32]!r}") from None
    if math.isnan(seconds) or seconds < 0:
        raise InvalidArgument(f"bad number of seconds {value[:32]!r}")
    return min(seconds, IDLE_WAIT_MAX)
