"""pyfuse3.Operations: a protocol adapter from FUSE requests to namespaces.

No S3 or cache logic lives here: it resolves inodes, asks the namespace, and
turns entries into attributes. Every handler sits behind the error boundary.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import pyfuse3

from ..config import Config
from ..errors import (InvalidArgument, IsADirectory, NotADirectory, NotFound, NotPermitted,
                      ReadOnly, TooBigToRename)
from ..model import Entry, Ref
from ..names import join
from ..tree.base import DirStream, FileSource, Namespace, SnapshotDir
from ..tree.root import RootTree
from .boundary import fuse_handler
from .inodes import ROOT_INODE, InodeTable, Node

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
READDIR_PAGE = 256
STATE_XATTRS = frozenset({"user.s3fuse.cached", "user.s3fuse.pinned"})
KEEP_CACHE_MEMORY = 100_000  # inodes whose last-opened version we remember


def utf8_name(name: bytes) -> str | None:
    """A name from the kernel as text, or None when its bytes are not UTF-8: S3 keys and
    our SQLite stores hold only UTF-8, so such a name can never exist there (and must
    not reach them: SQLite refuses the lone surrogates os.fsdecode would make)."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(slots=True)
class DirHandle:
    node: Node
    stream: DirStream


@dataclass(slots=True)
class FileHandle:
    node: Node
    source: FileSource
    paged: bool = False  # counted in S3Operations._paged (reads through the page cache)


@dataclass(slots=True)
class PagedVersion:
    """The S3 version whose pages the kernel may cache for an inode, while read handles
    on it are open (see S3Operations.open)."""

    etag: str
    size: int
    mtime_ns: int
    handles: int = 0


HANDLE_OPS = frozenset({"readdir", "releasedir", "read", "release", "flush", "write", "fsync"})


class ControlPlane:
    """What the root's xattrs expose (status, pid, ...); implemented in control.py."""

    def names(self) -> list[str]: ...

    async def get(self, name: str) -> bytes: ...

    async def set(self, name: str, value: bytes) -> None: ...

    def pinned(self, path: str) -> bool: ...


class S3Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, root: RootTree, cfg: Config, control: ControlPlane | None = None):
        super().__init__()
        self.root = root
        self.cfg = cfg
        self.control = control
        self.inodes = InodeTable()
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._fh = itertools.count(1)
        self._versions: OrderedDict[int, str] = OrderedDict()  # ino -> version last opened
        self._paged: dict[int, PagedVersion] = {}  # ino -> version of its open cached handles
        self._told: OrderedDict[int, str] = OrderedDict()  # ino -> version whose size the kernel has
        self._started_ns = time.time_ns()  # mtime of directories S3 has no date for

    # ------------------------------------------------------------ helpers

    def describe(self, op: str, *args: Any) -> str:
        """A human path for log lines, from a handler's first argument (inode or handle)."""
        if not args or not isinstance(args[0], int):
            return "?"
        if op in HANDLE_OPS:
            handle = self._files.get(args[0]) or self._dirs.get(args[0])
            node = handle.node if handle else None
        else:
            node = self.inodes.get(args[0])
        if node is None:
            return f"#{args[0]}"
        if node.is_root:
            return "/"
        where = "/" + join(self.root.get(node.ns).name, self._ns(node).describe(node.ref))
        if len(args) > 1 and isinstance(args[1], bytes):
            where = join(where, os.fsdecode(args[1]))
        return where

    def _node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _ns(self, node: Node) -> Namespace:
        return self.root.get(node.ns)

    def _attrs(self, node: Node, entry: Entry, writable: bool) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.cfg.metadata_ttl
        a.attr_timeout = self.cfg.metadata_ttl
        strip = 0 if writable else 0o222
        if node.is_dir:
            a.st_mode = stat.S_IFDIR | (self.cfg.dir_mode & ~strip)
            a.st_nlink = 2
            a.st_size = 0
        else:
            a.st_mode = stat.S_IFREG | (self.cfg.file_mode & ~strip)
            a.st_nlink = 1
            a.st_size = entry.size
            paged = self._paged.get(node.ino)
            if (paged is not None and entry.etag and entry.etag != paged.etag
                    and not self._has_writer(node.ino)):  # a writer's appends need the true size
                # Handles of an older version still read through the page cache: the kernel
                # must not learn the new size (a smaller one would cut their reads short,
                # a new mtime would drop their pages). Shown once they are closed.
                entry = Entry(entry.name, False, paged.size, paged.mtime_ns, paged.etag)
                a.st_size = entry.size
            if entry.etag:
                self._tell(node.ino, entry.etag)
        a.st_uid = self.cfg.uid
        a.st_gid = self.cfg.gid
        a.st_blksize = 1 << 20  # cp and friends write 1 MiB at a time (= max_write)
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = entry.mtime_ns or self._started_ns
        return a

    def _has_writer(self, ino: int) -> bool:
        return any(h.node.ino == ino and getattr(h.source, "writable", False)
                   for h in self._files.values())

    def _tell(self, ino: int, etag: str) -> None:
        """Remember which version's size and mtime the kernel was last given for `ino`
        (the reply goes out right after, with no await in between)."""
        if self._told.get(ino) != etag:
            self._told[ino] = etag
            if len(self._told) > KEEP_CACHE_MEMORY:
                self._told.popitem(last=False)

    def _writable(self, node: Node) -> bool:
        if node.is_root:  # the owner must be able to set the control xattrs (pin, unpin)
            return True
        return self._ns(node).writable and not self.cfg.read_only

    def _ensure(self, ns_index: int, ref: Ref, is_dir: bool) -> Node:
        return self.inodes.ensure(ns_index, ref, is_dir, self.root.get(ns_index).inode_base)

    def _top(self, ns_index: int) -> Node:
        return self._ensure(ns_index, self.root.get(ns_index).root, True)

    async def _entry(self, node: Node) -> Entry:
        if node.is_root:
            return Entry("", True)
        try:
            if node.detached:
                raise NotFound(f"{node.ref}: removed")
            entry = await self._ns(node).stat(node.ref)
        except NotFound:
            entry = self._open_entry(node)  # removed or renamed while open: fstat still works
            if entry is None:
                raise
        if entry.is_dir != node.is_dir:
            raise NotFound(f"{self.describe('stat', node.ino)} changed kind")
        return entry

    def _open_entry(self, node: Node) -> Entry | None:
        """The entry of a file known only through an open handle (its name is gone)."""
        for handle in self._files.values():
            if handle.node.ino == node.ino:
                name = str(node.ref).rpartition("/")[2]
                return Entry(name, False, handle.source.size, time.time_ns(), "", time.time())
        return None

    async def _child(self, parent: Node, name: str) -> tuple[Node, Entry] | None:
        if parent.is_root:
            index = await self.root.find(name)
            if index is None:
                return None
            return self._top(index), Entry(name, True)
        if not parent.is_dir:
            raise NotADirectory(self.describe("lookup", parent.ino))
        found = await self._ns(parent).lookup(parent.ref, name)
        if found is None:
            return None
        ref, entry = found
        return self._ensure(parent.ns, ref, entry.is_dir), entry

    def _parent(self, node: Node) -> Node:
        if node.is_root:
            return node
        ns = self._ns(node)
        if node.ref == ns.root:
            return self._node(ROOT_INODE)
        return self._ensure(node.ns, ns.parent(node.ref), True)

    # ------------------------------------------------------------ lookups

    @fuse_handler("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text = utf8_name(name)
        if text is None:  # no key, manifest path or member can be named by these bytes
            found = None
        elif text in (".", ".."):
            node = parent if text == "." else self._parent(parent)
            found: tuple[Node, Entry] | None = (node, await self._entry(node))
        else:
            found = await self._child(parent, text)
        if found is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.cfg.metadata_ttl
            return negative
        node, entry = found
        self.inodes.remember(node)
        return self._attrs(node, entry, self._writable(node))

    @fuse_handler("forget")
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @fuse_handler("getattr")
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        return self._attrs(node, await self._entry(node), self._writable(node))

    # ------------------------------------------------------------ directories

    @fuse_handler("opendir")
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise NotADirectory(self.describe("opendir", inode))
        if node.is_root:
            stream: DirStream = SnapshotDir([(e.name, e) for e in await self.root.entries()])
        else:
            stream = await self._ns(node).opendir(node.ref)
        fh = next(self._fh)
        self._dirs[fh] = DirHandle(node, stream)
        return fh

    async def _dir_node(self, parent: Node, ref: Ref, entry: Entry) -> Node | None:
        if not parent.is_root:
            return self._ensure(parent.ns, ref, entry.is_dir)
        index = await self.root.find(entry.name)
        return None if index is None else self._top(index)

    @fuse_handler("readdir")
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        while True:
            page = await handle.stream.page(start_id, READDIR_PAGE)
            if not page:
                return
            for next_id, ref, entry in page:
                start_id = next_id
                node = await self._dir_node(handle.node, ref, entry)
                if node is None:
                    continue
                told = self._told.get(node.ino)
                attrs = self._attrs(node, entry, self._writable(node))
                if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), attrs, next_id):
                    self.inodes.discard_if_unreferenced(node)
                    if told is not None:        # not sent: the kernel still has the old one
                        self._told[node.ino] = told
                    else:
                        self._told.pop(node.ino, None)
                    return
                self.inodes.remember(node)

    @fuse_handler("releasedir")
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ------------------------------------------------------------ files

    @fuse_handler("open")
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            source: FileSource = await self._writable_ns(node).open_write(
                node.ref, truncate=bool(flags & os.O_TRUNC))
            self._versions.pop(inode, None)
            return pyfuse3.FileInfo(fh=self._new_handle(node, source))
        entry = await self._entry(node)
        source = await self._ns(node).open(node.ref)
        paged = self._paged.get(inode)
        if ((paged is not None and entry.etag != paged.etag) or source.size != entry.size
                or (entry.etag and self._told.get(inode, entry.etag) != entry.etag)):
            # Another version is open on this inode and its pages are in the kernel's page
            # cache, shared by every handle of the inode, or the kernel holds another
            # version's size (told by a lookup racing this open, or the entry changed while
            # opening), which would cut reads short: this handle bypasses the page cache (direct I/O reads are not clamped
            # to the kernel's size), so no reader ever gets a blend or a cut version.
            return pyfuse3.FileInfo(fh=self._new_handle(node, source), direct_io=True)
        fh = self._new_handle(node, source)
        if entry.etag:
            if paged is None:
                paged = self._paged[inode] = PagedVersion(entry.etag, entry.size, entry.mtime_ns)
            paged.handles += 1
            self._files[fh].paged = True
        keep = self._versions.get(inode) == source.version
        self._versions[inode] = source.version
        self._versions.move_to_end(inode)
        if len(self._versions) > KEEP_CACHE_MEMORY:
            self._versions.popitem(last=False)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @fuse_handler("read")
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await handle.source.read(off, size)

    @fuse_handler("release")
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.paged:
            paged = self._paged.get(handle.node.ino)
            if paged is not None:
                paged.handles -= 1
                if paged.handles <= 0:
                    del self._paged[handle.node.ino]
        if handle is not None and hasattr(handle.source, "close"):
            await handle.source.close()

    @fuse_handler("flush")
    async def flush(self, fh: int) -> None:
        """close(2): a file written through this handle is journalled and queued."""
        handle = self._files.get(fh)
        if handle is not None and hasattr(handle.source, "flush"):
            await handle.source.flush()

    # ------------------------------------------------------------ xattrs

    async def _xattrs(self, node: Node, state: bool = True) -> dict[str, bytes]:
        """The node's xattrs; `state` adds cached/pinned, which costs an open and a cache
        lookup per block, so only when those are asked for (or listed)."""
        if node.is_root:
            return {}
        ns = self._ns(node)
        values = await ns.xattrs(node.ref, await self._entry(node))
        if state and not node.is_dir:
            source = await ns.open(node.ref)
            values["user.s3fuse.cached"] = b"1" if await source.cached() else b"0"
            if self.control is not None:
                path = join(ns.name, ns.describe(node.ref))
                values["user.s3fuse.pinned"] = b"1" if self.control.pinned(path) else b"0"
        return values

    @fuse_handler("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        node = self._node(inode)
        key = os.fsdecode(name)
        if node.is_root and self.control is not None and key in self.control.names():
            return await self.control.get(key)
        if not key.startswith("user."):  # security.*, system.posix_acl_*: asked per file by ls
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        value = (await self._xattrs(node, state=key in STATE_XATTRS)).get(key)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @fuse_handler("listxattr")
    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        node = self._node(inode)
        names = list(await self._xattrs(node, state=False))
        if not node.is_root and not node.is_dir:
            names += sorted(STATE_XATTRS)
        if node.is_root and self.control is not None:
            names += self.control.names()
        return [n.encode() for n in names]

    @fuse_handler("setxattr")
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        node = self._node(inode)
        key = os.fsdecode(name)
        if node.is_root and self.control is not None and key in self.control.names():
            await self.control.set(key, value)
            return
        self._writable_ns(node)
        raise pyfuse3.FUSEError(errno.ENOTSUP)  # S3 user metadata is not writable through us

    @fuse_handler("removexattr")
    async def removexattr(self, inode: int, name: bytes, ctx: Any = None) -> None:
        self._writable_ns(self._node(inode))
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # ------------------------------------------------------------ filesystem

    @fuse_handler("statfs")
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = data.f_bfree = data.f_bavail = 1 << 40  # 4 PiB: S3 has no quota to show
        data.f_files = data.f_ffree = data.f_favail = 1 << 32
        data.f_namemax = 255
        return data

    # ------------------------------------------------------------ writes

    def _writable_ns(self, node: Node) -> Namespace:
        """The namespace of `node` if it takes writes (EROFS otherwise)."""
        if node.is_root:
            raise NotPermitted("the mount root shows the sources: write inside one of them")
        ns = self._ns(node)
        if not ns.writable or self.cfg.read_only:
            raise ReadOnly(self.describe("write", node.ino))
        return ns

    def _child_path(self, parent: Node, name: bytes) -> tuple[Namespace, str]:
        ns = self._writable_ns(parent)
        if not parent.is_dir:
            raise NotADirectory(self.describe("lookup", parent.ino))
        text = utf8_name(name)
        if text is None:
            raise InvalidArgument(f"{os.fsdecode(name)!r} is not UTF-8: it cannot be an S3 key")
        return ns, join(parent.ref, text)

    def _new_handle(self, node: Node, source: FileSource) -> int:
        fh = next(self._fh)
        self._files[fh] = FileHandle(node, source)
        return fh

    def _writer(self, fh: int) -> FileSource:
        handle = self._files.get(fh)
        if handle is None or not getattr(handle.source, "writable", False):
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle.source

    @fuse_handler("create")
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._node(parent_inode)
        ns, path = self._child_path(parent, name)
        entry, source = await ns.create(path)
        node = self.inodes.remember(self._ensure(parent.ns, path, False))
        self._versions.pop(node.ino, None)
        return pyfuse3.FileInfo(fh=self._new_handle(node, source)), self._attrs(node, entry, True)

    @fuse_handler("write")
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._writer(fh).write(off, buf)

    @fuse_handler("fsync")
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._files.get(fh)
        if handle is not None and hasattr(handle.source, "fsync"):
            await handle.source.fsync()

    @fuse_handler("setattr")
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        current = self._attrs(node, await self._entry(node), self._writable(node))
        if ((fields.update_mode and stat.S_IMODE(attr.st_mode) != stat.S_IMODE(current.st_mode))
                or (fields.update_uid and attr.st_uid != current.st_uid)
                or (fields.update_gid and attr.st_gid != current.st_gid)):
            raise NotPermitted(f"{self.describe('setattr', inode)}: S3 keeps no owner or mode "
                               "(set --uid/--gid/--file-mode/--dir-mode at mount)")
        if fields.update_size or fields.update_mtime:
            ns = self._writable_ns(node)
            if fields.update_size:
                if node.is_dir:
                    raise IsADirectory(self.describe("truncate", inode))
                if fh is not None and fh in self._files:
                    await self._writer(fh).truncate(attr.st_size)
                else:
                    await ns.truncate(node.ref, attr.st_size)
            if fields.update_mtime:
                await ns.set_mtime(node.ref, attr.st_mtime_ns)
        return self._attrs(node, await self._entry(node), self._writable(node))

    @fuse_handler("mkdir")
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        ns, path = self._child_path(parent, name)
        entry = await ns.mkdir(path)
        node = self.inodes.remember(self._ensure(parent.ns, path, True))
        return self._attrs(node, entry, True)

    @fuse_handler("unlink")
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_inode)
        ns, path = self._child_path(parent, name)
        await ns.unlink(path)
        self.inodes.detach(parent.ns, path, False)

    @fuse_handler("rmdir")
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_inode)
        ns, path = self._child_path(parent, name)
        await ns.rmdir(path)
        self.inodes.detach(parent.ns, path, True)

    @fuse_handler("rename")
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        ns, old = self._child_path(old_parent, name_old)
        if new_parent.ns != old_parent.ns:
            raise TooBigToRename("rename between sources: copy and delete instead")
        _, new = self._child_path(new_parent, name_new)
        if flags & RENAME_EXCHANGE:
            raise InvalidArgument("RENAME_EXCHANGE is not supported on S3")
        await ns.rename(old, new, noreplace=bool(flags & RENAME_NOREPLACE))
        self.inodes.rename(old_parent.ns, old, new)

    async def _not_on_s3(self, inode: int, what: str) -> None:
        self._writable_ns(self._node(inode))
        raise NotPermitted(f"{self.describe(what, inode)}: S3 has no {what}s")

    @fuse_handler("mknod")
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        await self._not_on_s3(parent_inode, "special file")

    @fuse_handler("symlink")
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        await self._not_on_s3(parent_inode, "symlink")

    @fuse_handler("link")
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        await self._not_on_s3(inode, "hard link")
