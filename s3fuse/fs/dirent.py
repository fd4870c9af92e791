"""Readdirplus entries that give the kernel a name and a type, but no inode.

pyfuse3 answers every readdir as readdirplus, and each entry of a readdirplus reply
hands the kernel an inode it keeps (a lookup reference) until it forgets it; the
daemon keeps a node for it all that time. For an entry whose attributes are not known
yet (a bucket object whose POSIX metadata its first stat HEADs, so its attributes go
out with timeout 0) that inode buys nothing: the next stat sends a lookup anyway.
A `find` or `ls` of a 1,000,000-key directory made a million of them.

The kernel reads an entry whose node id is 0 as a name only ("the userspace
filesystem did not want to return attributes/handle for this entry",
fs/fuse/readdir.c, fuse_direntplus_link): it lists the name with the dirent's inode
number and type and creates nothing. pyfuse3's `EntryAttributes.st_ino` sets the
node id and the dirent's inode number together, so `name_only` clears the node id in
place, at the offset `_nodeid_offset` finds and checks once. Where pyfuse3's layout is
not the expected one, `NAME_ONLY` is False and readdir hands out inodes as before.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import stat
import struct

import pyfuse3

log = logging.getLogger(__name__)

#: The dirent inode number of a name the daemon has no inode for yet: libfuse's
#: FUSE_UNKNOWN_INO, what its high-level API (s3fs) lists every name with.
UNKNOWN_INO = 0xFFFFFFFF

_MARK = 0x5A17C0DE0BADF00D
_STAT_INO_AFTER_NODEID = 24  # fuse_entry_param: ino, generation, then struct stat: st_dev, st_ino


def _nodeid_offset() -> int | None:
    """Where an EntryAttributes keeps its fuse_entry_param.ino, or None if the object
    does not look as expected: the mark set through `st_ino` must appear exactly twice
    (the node id, then the dirent's st_ino 24 bytes on), and clearing the first must
    clear what `st_ino` reads and nothing else."""
    probe = pyfuse3.EntryAttributes()
    probe.st_ino = _MARK
    raw = ctypes.string_at(id(probe), probe.__sizeof__())
    mark = struct.pack("=Q", _MARK)
    first = raw.find(mark)
    second = raw.find(mark, first + 1)
    if (first < 0 or second != first + _STAT_INO_AFTER_NODEID
            or raw.find(mark, second + 1) >= 0):
        return None
    ctypes.c_uint64.from_address(id(probe) + first).value = 0
    after = ctypes.string_at(id(probe), probe.__sizeof__())
    if probe.st_ino != 0 or after[second:second + 8] != mark or after[:first] != raw[:first]:
        return None
    return first


try:
    _OFFSET = _nodeid_offset()
except (TypeError, ValueError, OverflowError, AttributeError) as exc:  # a pyfuse3 we do not know
    log.debug("readdir entries keep their inodes: %s", exc)
    _OFFSET = None

NAME_ONLY = _OFFSET is not None


def name_only(d_ino: int, kind: int) -> pyfuse3.EntryAttributes:
    """A readdirplus entry listing a name as inode `d_ino` of type `kind` (S_IFDIR,
    S_IFREG, S_IFLNK, ...: the dirent's d_type, which `find -type` and `os.scandir` trust
    without a stat), with no node id: the kernel keeps nothing of it. Only when NAME_ONLY.
    Shared for UNKNOWN_INO: never change what it returns."""
    return _unknown(kind) if d_ino == UNKNOWN_INO else _name_only(d_ino, kind)


@functools.cache
def _unknown(kind: int) -> pyfuse3.EntryAttributes:
    """The entry of a name with no inode yet, one per type, made once: most names a listing
    gives are those, and readdir_reply copies an entry into its reply (making one per name
    cost 0.6 us, about an eighth of readdir's time per name in a cold `find`)."""
    return _name_only(UNKNOWN_INO, kind)


def _name_only(d_ino: int, kind: int) -> pyfuse3.EntryAttributes:
    assert _OFFSET is not None
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = d_ino
    attrs.st_mode = kind
    attrs.entry_timeout = attrs.attr_timeout = 0
    ctypes.c_uint64.from_address(id(attrs) + _OFFSET).value = 0
    return attrs
