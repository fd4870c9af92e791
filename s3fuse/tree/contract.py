"""The contract every namespace (bucket, manifest, the mount root) implements, and its handles.

One contract so the FUSE adapter asks, never probes: a namespace answers every
read, write and metadata operation the kernel can ask for, and read-only ones
inherit their refusals from one base (ReadOnlyNamespace). This module only states
the contract (Namespace, the handle protocols, AttrChanges, inode numbering); the
ready-made handles namespaces hand out live in tree/sources.py.

A namespace names its nodes with opaque, hashable refs: a bucket uses relative paths
("" is its top directory), a manifest uses the rowids of its SQLite index. The FUSE
layer maps inodes to (namespace, ref) and never needs to know what kind of namespace
answers. A namespace with `inode_base` set numbers its own inodes
(ino = base + ref*2 + is_dir), so a million-entry manifest needs no inode table.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..errors import (InvalidArgument, NoAttribute, NotPermitted, NotSupported, ReadOnly,
                      S3FuseError)
from ..model import Entry, Ref
from ..names import join
from ..posix import Posix

log = logging.getLogger(__name__)

STATIC_SHIFT = 41
STATIC_START = 1 << STATIC_SHIFT


def static_base(ns_index: int) -> int:
    """The inode base of an indexed namespace (refs below 2**39; ino = base + 2*ref + is_dir)."""
    return (ns_index + 1) << STATIC_SHIFT


class FileHandle(Protocol):
    """An open file as one handle sees it. Every handle is closed exactly once (the FUSE
    release), whatever it holds: a staging file's fd, a user of a local file, nothing."""

    size: int
    version: str  # changes whenever the content may have changed (keep_cache decision)

    async def read(self, offset: int, size: int) -> bytes | memoryview: ...

    async def fsync(self) -> None: ...

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None: ...

    async def close(self) -> None: ...


class WriteHandle(FileHandle, Protocol):
    """A handle opened for writing (create, or open with O_WRONLY/O_RDWR/O_TRUNC)."""

    async def write(self, offset: int, data: bytes, append: bool = False) -> int:
        """Write at `offset`, or with `append` at the end of the newest bytes (O_APPEND)."""

    async def truncate(self, size: int) -> None: ...

    async def flush(self) -> None: ...

    @property
    def dropped(self) -> bool:
        """Was its last version dropped, never to be uploaded (a write failed: ENOSPC)?
        Then what the kernel holds of the file (size, pages) is that version's."""


class DirStream(Protocol):
    """An open directory: pages of (offset of the next entry, ref, entry), stable offsets.
    `attrs` false: the caller sends the page's files as names only (a walk that stats
    none), so what a file's attributes would need beyond its name and type may be left
    out (a manifest's HEAD for a line without size or ETag)."""

    async def page(self, start: int, limit: int,
                   attrs: bool = True) -> Sequence[tuple[int, Ref, Entry]]: ...


@dataclass(frozen=True, slots=True)
class AttrChanges:
    """What one setattr changes (None: leave it); mode is the permission bits only.

    `posix` is the node's complete metadata after the change, built by the FUSE adapter
    from what it shows plus the request (ctime now): what a namespace that stores POSIX
    metadata keeps. None when only the size changes (the new version's upload carries
    the metadata with its own mtime and ctime). The single fields say what was asked,
    for namespaces that refuse (a read-only one refuses owner and mode with EPERM)."""

    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    posix: Posix | None = None


def no_pins(path: str) -> bool:
    return False


class Namespace(ABC):
    """Every operation the kernel can ask of a tree of names, in one contract.

    Refs are opaque to callers; writes name their target as (parent ref, name) and
    return the refs they made or removed, so the FUSE adapter never builds a ref. New
    nodes and metadata changes come with their complete POSIX metadata (`Posix`: type,
    mode, owner, times, rdev, user xattrs), built by the adapter from the caller and the
    request, so a namespace stores it and never decides owners or defaults. What no
    namespace does answers here, once (hard links: EPERM; by default symlink/mknod:
    EPERM and user xattr writes: ENOTSUP); read-only namespaces inherit EROFS for every
    change from ReadOnlyNamespace.
    """

    name: str
    root: Ref
    #: Shows write permission bits (the kernel checks them before any change).
    writable: bool = True
    #: Numbers its own inodes (ino = inode_base + 2*ref + is_dir; refs are ints).
    indexed: bool = False
    inode_base: int | None = None
    #: Entries with unknown POSIX metadata (posix None) get it on lookup/stat: readdir
    #: replies for them must not be cached by the kernel (a bucket tree, unless disabled).
    posix_lookups: bool = False
    #: Is a mount-relative path pinned? Set by RootTree from the pinner.
    pin_covers: Callable[[str], bool] = staticmethod(no_pins)

    # ------------------------------------------------------------ reads

    @abstractmethod
    async def lookup(self, ref: Ref, name: str) -> tuple[Ref, Entry] | None: ...

    @abstractmethod
    async def opendir(self, ref: Ref) -> DirStream: ...

    @abstractmethod
    async def stat(self, ref: Ref) -> Entry: ...

    async def stat_for_change(self, ref: Ref) -> Entry:
        """`stat` of a node about to be changed (setattr, xattrs, a rewrite): a tree that
        does not look its POSIX metadata up for stats (--no-posix-metadata) does for this."""
        return await self.stat(ref)

    async def top(self) -> Entry:
        """What the mount root shows for this tree's top directory: the defaults, unless
        the tree keeps metadata for it (a prefix source: its marker's)."""
        return Entry(self.name, True)

    @abstractmethod
    async def open(self, ref: Ref) -> FileHandle: ...

    @abstractmethod
    def parent(self, ref: Ref) -> Ref: ...

    @abstractmethod
    def describe(self, ref: Ref) -> str: ...

    def negative_ttl(self, parent: Ref, ttl: float) -> float:
        """How long the kernel may remember that a name is not in directory `parent`: the
        metadata TTL, or less when the stored listing that said so goes stale sooner."""
        return ttl

    async def readlink(self, ref: Ref) -> str:
        raise InvalidArgument(f"{self.describe(ref)}: not a symbolic link")

    # ------------------------------------------------------------ state

    @abstractmethod
    async def cached(self, ref: Ref) -> bool:
        """Are all the bytes of file `ref` on this disk (no S3 request to read it)?"""

    def pinned(self, ref: Ref) -> bool:
        return self.pin_covers(join(self.name, self.describe(ref)))

    # ------------------------------------------------------------ own user attributes

    @abstractmethod
    async def xattrs(self, ref: Ref) -> dict[str, bytes]:
        """The user attributes this namespace shows on `ref` (user.s3.uri, ...)."""

    async def getxattr(self, ref: Ref, name: str) -> bytes:
        value = (await self.xattrs(ref)).get(name)
        if value is None:
            raise NoAttribute(f"{self.describe(ref)}: no {name}")
        return value

    async def listxattr(self, ref: Ref) -> list[str]:
        return list(await self.xattrs(ref))

    async def setxattr(self, ref: Ref, name: str, value: bytes, posix: Posix) -> None:
        """Set user attribute `name`; `posix`: the node's complete metadata with it set
        (ctime now), as the adapter built it from what it shows."""
        raise NotSupported(f"{self.describe(ref)}: user attributes are not writable here")

    async def removexattr(self, ref: Ref, name: str, posix: Posix) -> None:
        """Remove user attribute `name`; `posix`: the node's metadata without it."""
        raise NotSupported(f"{self.describe(ref)}: user attributes are not writable here")

    # ------------------------------------------------------------ changes

    @abstractmethod
    async def create(self, parent: Ref, name: str,
                     posix: Posix) -> tuple[Ref, Entry, WriteHandle]:
        """A new empty regular file whose metadata is `posix` (type, mode, owner, times)."""

    @abstractmethod
    async def open_write(self, ref: Ref, truncate: bool) -> WriteHandle: ...

    @abstractmethod
    async def setattr(self, ref: Ref, changes: AttrChanges, handle: WriteHandle | None) -> None:
        """Apply `changes` (a truncation through `handle` when the kernel gave one)."""

    @abstractmethod
    async def mkdir(self, parent: Ref, name: str, posix: Posix) -> tuple[Ref, Entry]: ...

    @abstractmethod
    async def unlink(self, parent: Ref, name: str) -> Ref:
        """Remove a file's name; returns the ref that lost it."""

    @abstractmethod
    async def rmdir(self, parent: Ref, name: str) -> Ref: ...

    @abstractmethod
    async def rename(self, old_parent: Ref, old_name: str, new_parent: Ref | None, new_name: str,
                     *, noreplace: bool = False, exchange: bool = False) -> tuple[Ref, Ref]:
        """Move a name; `new_parent` None: the target is in another namespace (EXDEV).
        Returns (old ref, new ref)."""

    async def symlink(self, parent: Ref, name: str, target: str,
                      posix: Posix) -> tuple[Ref, Entry]:
        """A symbolic link to `target`; `posix`: S_IFLNK|0777, the caller's owner, now."""
        raise NotPermitted(f"{self._child(parent, name)}: no symbolic links here")

    async def mknod(self, parent: Ref, name: str, posix: Posix) -> tuple[Ref, Entry]:
        """A fifo, socket or device node (type bits of posix.mode, posix.rdev)."""
        raise NotPermitted(f"{self._child(parent, name)}: no special files here")

    async def link(self, ref: Ref, new_parent: Ref, new_name: str) -> tuple[Ref, Entry]:
        raise NotPermitted(f"{self._child(new_parent, new_name)}: hard links are not "
                           "supported (S3 has one name per object; copy the file instead)")

    def _child(self, parent: Ref, name: str) -> str:
        return join(self.describe(parent), name)


class ReadOnlyNamespace(Namespace):
    """A namespace that takes no changes: every one is answered with `refusal` (EROFS).

    Owner and mode changes keep their EPERM (asked first: nobody may change what a
    read-only tree shows) and a time-only change of access time is a no-op, as before."""

    writable = False

    def refusal(self, what: str) -> S3FuseError:
        return ReadOnly(f"{self.name}: {what}: read-only")

    def refuse_owner_and_mode(self, ref: Ref, changes: AttrChanges) -> None:
        """Owner and permission bits of a read-only tree: the mount's defaults, fixed. Refused
        as every other change is (EROFS, as chmod on a read-only file system answers; the
        kernel has already refused a caller who does not own the file with EPERM)."""
        if changes.mode is not None or changes.uid is not None or changes.gid is not None:
            raise self.refusal(f"{self.describe(ref)}: owner and mode are fixed "
                               "(set --uid/--gid/--file-mode/--dir-mode at mount)")

    async def create(self, parent: Ref, name: str,
                     posix: Posix) -> tuple[Ref, Entry, WriteHandle]:
        raise self.refusal(self._child(parent, name))

    async def open_write(self, ref: Ref, truncate: bool) -> WriteHandle:
        raise self.refusal(self.describe(ref))

    async def setattr(self, ref: Ref, changes: AttrChanges, handle: WriteHandle | None) -> None:
        self.refuse_owner_and_mode(ref, changes)
        if changes.size is not None or changes.mtime_ns is not None:
            raise self.refusal(self.describe(ref))

    async def mkdir(self, parent: Ref, name: str, posix: Posix) -> tuple[Ref, Entry]:
        raise self.refusal(self._child(parent, name))

    async def unlink(self, parent: Ref, name: str) -> Ref:
        raise self.refusal(self._child(parent, name))

    async def rmdir(self, parent: Ref, name: str) -> Ref:
        raise self.refusal(self._child(parent, name))

    async def rename(self, old_parent: Ref, old_name: str, new_parent: Ref | None, new_name: str,
                     *, noreplace: bool = False, exchange: bool = False) -> tuple[Ref, Ref]:
        raise self.refusal(self._child(old_parent, old_name))

    async def symlink(self, parent: Ref, name: str, target: str,
                      posix: Posix) -> tuple[Ref, Entry]:
        raise self.refusal(self._child(parent, name))

    async def mknod(self, parent: Ref, name: str, posix: Posix) -> tuple[Ref, Entry]:
        raise self.refusal(self._child(parent, name))

    async def link(self, ref: Ref, new_parent: Ref, new_name: str) -> tuple[Ref, Entry]:
        raise self.refusal(self._child(new_parent, new_name))

    async def setxattr(self, ref: Ref, name: str, value: bytes, posix: Posix) -> None:
        raise self.refusal(self.describe(ref))

    async def removexattr(self, ref: Ref, name: str, posix: Posix) -> None:
        raise self.refusal(self.describe(ref))
