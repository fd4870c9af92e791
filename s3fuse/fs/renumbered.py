"""The numbers renames gave, kept from one mount to the next (with the same cache dir).

A file's inode number comes from its path, and a renamed file keeps its number (POSIX);
what a rename kept lived in memory, so after a remount every file an editor saved by
renaming over it, or `rsync` wrote (a temporary file, then a rename), had another number
than before: `git diff-index` reported such files modified, and backup tools that key by
inode read them again. The unmount writes those numbers here (at most KEPT_MAX, the
newest); the next mount gives each path its number again at its first lookup. While
mounted, the file is also written SAVE_INTERVAL after the numbers change (`keep_saved`), so
a crash or a power loss loses at most the renames of those last seconds (their paths then
get their natural numbers, as before). Ignored when unreadable.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import trio

from ..util.atomic import write_atomically
from .inodes import InodeTable

log = logging.getLogger(__name__)

FILE = "inodes.json"
VERSION = 1
#: Seconds between looks at the numbers while mounted (written only when they changed).
SAVE_INTERVAL = 10.0


def restore(table: InodeTable, cache_dir: Path) -> None:
    """Give `table` the numbers the last mount with `cache_dir` wrote, if any."""
    path = cache_dir / FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != VERSION:
            return
        numbers = [(str(name), bool(is_dir), str(ref), int(ino))
                   for name, is_dir, ref, ino in data["numbers"]]
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("%s cannot be read (%s): renamed files get their paths' numbers", path, exc)
        return
    table.restore(numbers)


def save(table: InodeTable, cache_dir: Path) -> None:
    """Write what `table` renumbered for the next mount (at the unmount)."""
    _write(cache_dir, table.renumbered())


async def keep_saved(table: InodeTable, cache_dir: Path, interval: float = SAVE_INTERVAL) -> None:
    """While mounted: write the numbers `interval` seconds after they changed (a service
    task). The table is read on the loop (it is not thread-safe), the file written in a
    thread."""
    seen, written = table.changes, sorted(table.renumbered())  # the file: the last mount's
    while True:
        await trio.sleep(interval)
        if table.changes == seen:  # no rename or removal since: nothing to look at
            continue
        seen, numbers = table.changes, table.renumbered()
        if sorted(numbers) != written:  # (live renamed nodes come in set order)
            await trio.to_thread.run_sync(_write, cache_dir, numbers)
            written = sorted(numbers)


def _write(cache_dir: Path, numbers: list[tuple[str, bool, str, int]]) -> None:
    path = cache_dir / FILE
    try:
        write_atomically(path, json.dumps({"version": VERSION, "numbers": numbers})
                         .encode("utf-8"), 0o600, durable=True)
    except OSError as exc:  # a full or gone cache disk: the next mount numbers by path
        log.warning("cannot write %s (%s): renamed files get their paths' numbers at the "
                    "next mount", path, exc.strerror or exc)
