"""Figures for docs/reliability.md: tests record what they measured into one JSON file.

Set S3FUSE_RELIABILITY_REPORT=/path/report.json (e.g. `make test
PYTEST_ARGS=...` or in CI) and every recording test merges its section into it;
unset, recording does nothing. Sections are keyed by test name, so reruns overwrite.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any


def record(section: str, figures: dict[str, Any]) -> None:
    target = os.environ.get("S3FUSE_RELIABILITY_REPORT")
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[section] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


class ProcSampler:
    """Samples a process's RSS, open fds and threads from /proc (the daemon's cost)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[dict[str, int]] = []

    def sample(self) -> dict[str, int]:
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        targets = [self._target(fd) for fd in os.listdir(f"/proc/{self.pid}/fd")]
        row = {"rss_kib": int(fields["VmRSS"].split()[0]),
               "hwm_kib": int(fields["VmHWM"].split()[0]),
               "threads": int(fields["Threads"]),
               "fds": len(targets),
               "spare_fds": sum(map(_spare, targets)),
               "db_fds": sum(map(_database, targets))}
        self.samples.append(row)
        return row

    def _target(self, fd: str) -> Path | None:
        """What descriptor `fd` points at (None once closed meanwhile)."""
        try:
            return Path(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
        except OSError:
            return None

    def peak(self, name: str) -> int:
        return max(s[name] for s in self.samples)


def _spare(target: Path | None) -> bool:
    """An empty staging file made ahead for new files (upload/staging.py SPARES: a pool of
    up to 64 open ones, refilled at half): held on purpose, not leaked."""
    try:
        return target is not None and target.parent.name == "staging" and target.stat().st_size == 0
    except OSError:  # removed meanwhile, or not a file (a socket, a pipe)
        return False


def _database(target: Path | None) -> bool:
    """A block cache's SQLite file: diskcache opens one connection per thread that touches
    it (database, -wal and -shm), so these follow the most worker threads it ever had."""
    return target is not None and target.name.startswith("cache.db")
