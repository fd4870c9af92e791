"""Which files of a listing go out with their attributes, and which as names only.

Why: every readdirplus entry with attributes makes the kernel create a dentry and an
inode, kept until memory pressure. A `find` over a manifest of 10,000,000 entries made
10,000,000 of them (~1 KiB each), and the kernel's inode and dentry hash tables are sized
at boot (65,536 and 131,072 buckets on the bench VM), so each new one walked a longer
chain. On a pyfuse3 file system answering from a dict, `find` took 8.2 us an entry at
200,000 files, 9.4 at 1,000,000 and 15.0 at 4,000,000; with names only, 3.2-3.6 us at
every size. But a walk that stats (`ls -l`, `du`, `rsync`) then looks every file up
instead: `du` over 100,000 manifest entries took 4.4x as long with names only.

So each namespace watches its walk, as the kernel's READDIRPLUS_AUTO watches each
directory. A listing goes out with attributes but for its first file (the *sentinel*,
a name only); if that file is looked up before the next listing starts, the walk stats
and keeps getting attributes (one lookup a directory). If not, the walk only needs
names and types (`find`, `ls`, `ls -R`) and later listings are names only, until a file
of one of them is looked up. A listing that sent no file (a directory of directories)
tells nothing and changes nothing. A directory where a file was looked up gets
attributes from then on (a second `ls -l` past the timeout renews its entries in the
readdir).
"""
from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

#: Directories remembered as stat'ed into (~100 bytes each); the oldest marked goes first.
CAPACITY = 4096


class Shape(enum.Enum):
    ATTRS = "attributes"        # every file with its attributes
    SENTINEL = "sentinel"       # the first file a name only, the others with attributes
    NAMES = "names"             # every file a name only


@dataclass(slots=True)
class _Walk:
    """What one namespace's walk looks like: the last listing that sent a file as a name
    only, and whether a file of it was looked up since."""

    names: bool = False
    watched: int | None = None
    looked: bool = False


class ListingShapes:
    """The shape of each listing, from the lookups that followed the listings before."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._stated: OrderedDict[int, None] = OrderedDict()
        self._walks: dict[int, _Walk] = {}

    def opened(self, ns: int, dir_ino: int) -> Shape:
        """A listing of directory `dir_ino` of namespace `ns` starts: its shape. The
        listing watched before it is judged now, unless it is this directory's own."""
        if dir_ino in self._stated:
            return Shape.ATTRS
        walk = self._walks.get(ns)
        if walk is None:
            walk = self._walks[ns] = _Walk()
        if walk.watched is not None and walk.watched != dir_ino:
            walk.names = walk.names or not walk.looked
            walk.watched = None
        return Shape.NAMES if walk.names else Shape.SENTINEL

    def sent_name(self, ns: int, dir_ino: int) -> None:
        """A listing of `dir_ino` (not ATTRS) sent its first file as a name only: watch
        whether a file of it is looked up before the next listing."""
        walk = self._walks.get(ns)
        if walk is not None:
            walk.watched, walk.looked = dir_ino, False

    def looked_up(self, ns: int, dir_ino: int) -> None:
        """A file of directory `dir_ino` was looked up."""
        if dir_ino in self._stated:
            self._stated.move_to_end(dir_ino)
        else:
            self._stated[dir_ino] = None
            if len(self._stated) > self._capacity:
                self._stated.popitem(last=False)
        walk = self._walks.get(ns)
        if walk is not None and walk.watched == dir_ino:
            walk.looked, walk.names = True, False
