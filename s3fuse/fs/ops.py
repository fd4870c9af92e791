"""pyfuse3.Operations: a protocol adapter from FUSE requests to namespaces.

Each handler decodes the request (inode -> namespace and ref, bytes -> names), calls
the namespace's contract (tree/contract.py) and encodes the reply (entries -> attributes).
No S3, cache or page-cache logic lives here: page-cache coherence is fs/pagecache.py,
handle tables fs/handles.py, inodes fs/inodes.py. Every handler sits behind the error
boundary (fs/boundary.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import stat
import time
from typing import Any, Sequence

import pyfuse3
import trio

from ..config import Config
from ..errors import NameTooLong, NotADirectory, NotFound, StaleObject
from ..model import Entry, Ref
from ..posix import NO_HEADERS, Posix, clamp_time
from ..names import MAX_NAME_BYTES, join
from ..tree.contract import AttrChanges, Namespace, WriteHandle
from ..tree.root import ROOT_HIDDEN_BITS, ControlPlane, MountRoot, RootTree
from .boundary import fuse_handler
from .coherence import PageDropper
from .dirent import NAME_ONLY, UNKNOWN_INO, name_only
from .handles import HandleTable, OpenDir
from .inodecap import InodeCap
from .inodes import ROOT_INODE, InodeTable, Node
from .listingshape import ListingShapes, Shape
from .pagecache import Opened, PageCache, told_memory_for
from .renames import RenamesInFlight, StaleOpens
from .setid import SetIdGuard, privileged, setid_bits, write_only

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
READDIR_PAGE = 256
#: st_blksize of a directory: glibc reads a directory in buffers of max(st_blksize, 32 KiB)
#: (up to 1 MiB), the kernel asks readdirplus for that many bytes, and pyfuse3 callocs a
#: reply buffer of that size at every call: at 1 MiB (max_write, the files' st_blksize)
#: 13 us or more a readdir (page faults when the heap was trimmed), most of it for small
#: directories that fill 20 KiB. 128 KiB (~800 entries a reply, 5 us) instead of 32 KiB
#: (~200, 2.6 us): a big directory then takes a quarter of the readdir calls.
DIR_BLKSIZE = 128 << 10
#: readdir offsets taken by "." and ".." before a directory stream's own.
DOT_ENTRIES = 2
CACHED = "user.s3fuse.cached"
PINNED = "user.s3fuse.pinned"
STATE_XATTRS = (CACHED, PINNED)
HANDLE_OPS = frozenset({"readdir", "releasedir", "read", "release", "flush", "write", "fsync"})


def caller(ctx: Any) -> int | None:
    """The uid of the process behind a request (None when called without a context)."""
    return None if ctx is None else ctx.uid


def short_name(name: bytes) -> bytes:
    """A name from the kernel, refused with ENAMETOOLONG over 255 bytes (FUSE passes up
    to 1024; no S3 key component or s3fs xattr name here may be longer)."""
    if len(name) > MAX_NAME_BYTES:
        raise NameTooLong(f"{os.fsdecode(name[:40])!r}...: a name is at most 255 bytes")
    return name


def utf8_name(name: bytes) -> str | None:
    """A name from the kernel as text, or None when its bytes are not UTF-8: S3 keys and
    our SQLite stores hold only UTF-8, so such a name can never exist there (and must
    not reach them: SQLite refuses the lone surrogates os.fsdecode would make)."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def existing_name(name: bytes) -> str:
    """The name of something that must exist: bytes that are not UTF-8 name nothing."""
    text = utf8_name(short_name(name))
    if text is None:
        raise NotFound(f"{os.fsdecode(name)!r}: not UTF-8, so no key has this name")
    return text


def new_name(name: bytes) -> str:
    """A name to create: lone surrogates stand for bytes that are not UTF-8, and the
    namespace refuses what it cannot hold (EINVAL)."""
    return os.fsdecode(short_name(name))


class S3Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, root: RootTree, cfg: Config, control: ControlPlane | None = None):
        super().__init__()
        self.root = root
        self.cfg = cfg
        self.top = MountRoot(root, control)
        self.inodes = InodeTable(lambda ns: self.root.get(ns).name)
        self.handles = HandleTable()
        self.pages = PageCache(told_memory=told_memory_for(cfg.max_inodes))
        self.inode_cap = InodeCap(self.inodes, cfg.max_inodes, self._held_parent,
                                  self.handles.open_inos, pyfuse3.invalidate_entry)
        self.inodes.on_new = self.inode_cap.grew
        self.inodes.on_gone = self.pages.forget
        self.shapes = ListingShapes()
        self.setid = SetIdGuard()
        self.page_dropper = PageDropper(lambda ino: pyfuse3.invalidate_inode(ino, False))
        self.renames = RenamesInFlight()
        self.stale_opens = StaleOpens()
        self._started_ns = time.time_ns()  # mtime of directories S3 has no date for

    # ------------------------------------------------------------ decoding

    def describe(self, op: str, *args: Any) -> str:
        """A human path for log lines, from a handler's first argument (inode or handle)."""
        if not args or not isinstance(args[0], int):
            return "?"
        node = self.handles.node(args[0]) if op in HANDLE_OPS else self.inodes.get(args[0])
        if node is None:
            return f"#{args[0]}"
        if node.is_root:
            return "/"
        inside = self._ns(node).describe(node.ref)  # '' at a source's own root
        where = "/" + self.root.get(node.ns).name + (f"/{inside}" if inside else "")
        if len(args) > 1 and isinstance(args[1], bytes):
            where = join(where, os.fsdecode(args[1]))
        return where

    def _node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if not node.is_dir:
            raise NotADirectory(self.describe("lookup", ino))
        return node

    def _ns(self, node: Node) -> Namespace:
        return self.top if node.is_root else self.root.get(node.ns)

    def _ensure(self, parent: Node, ref: Ref, is_dir: bool) -> Node:
        """The node of `ref` found under `parent`; under the mount root, `ref` is the index
        of a source and the node is that source's top directory."""
        if parent.is_root:
            ns = self.root.get(ref)  # type: ignore[arg-type]
            return self.inodes.ensure(ref, ns.root, True, ns.inode_base)  # type: ignore[arg-type]
        return self.inodes.ensure(parent.ns, ref, is_dir, self.root.get(parent.ns).inode_base)

    def _node_for(self, parent: Node, ref: Ref, entry: Entry) -> Node:
        """The node `parent`'s lookup or readdir gives `ref` (whose entry is `entry`). A
        file that another S3 version replaced while handles of the old one read through
        its page cache gets a node of its own, as a file renamed over does: the old inode
        keeps the old size and pages for those handles, and `stat`, new opens and maps see
        the new version's (the kernel keeps one size per inode: `ls -l` and fstat of a new
        descriptor showed the old size for as long as an old handle stayed open, and
        `tail -F` never saw the file replaced)."""
        node = self._ensure(parent, ref, entry.is_dir)
        if not node.is_dir and self.pages.outdated(node.ino, entry):
            self.inodes.detach(node.ns, node.ref, False)
            node = self._ensure(parent, ref, False)
        return node

    def _parent(self, node: Node) -> Node:
        if node.is_root:
            return node
        ns = self._ns(node)
        if node.ref == ns.root:
            return self._node(ROOT_INODE)
        return self.inodes.ensure(node.ns, ns.parent(node.ref), True, ns.inode_base)

    def inode_status(self) -> dict[str, int]:
        """What `s3fuse status` shows of the inodes: held, the cap, invalidated so far."""
        return {"held": len(self.inodes), "cap": self.cfg.max_inodes,
                "invalidated": self.inode_cap.invalidated}

    def _held_parent(self, node: Node) -> int | None:
        """The inode of `node`'s parent directory, if the kernel holds one (inodecap.py)."""
        parent = self.inodes.find(node.ns, self._ns(node).parent(node.ref), True)
        return None if parent is None else parent.ino

    async def _entry(self, node: Node, for_change: bool = False) -> Entry:
        """The entry of `node`; asked again when a rename of its path ran meanwhile (the
        answer may be the other file's: fs/renames.py). `for_change`: the node is about
        to be changed (Namespace.stat_for_change)."""
        return await self.renames.answer(node.ns, lambda: node.ref,
                                         lambda: self._entry_now(node, for_change))

    async def _entry_now(self, node: Node, for_change: bool = False) -> Entry:
        try:
            if node.detached:
                raise NotFound(f"{node.ref}: removed")
            ns = self._ns(node)
            entry = await (ns.stat_for_change(node.ref) if for_change else ns.stat(node.ref))
        except NotFound:
            entry = self._open_entry(node)  # removed or renamed while open: fstat still works
            if entry is None:
                raise
        if entry.is_dir != node.is_dir:
            raise NotFound(f"{self.describe('stat', node.ino)} changed kind")
        return entry

    def _open_entry(self, node: Node) -> Entry | None:
        """The entry of a file known only through an open handle (its name is gone): as it
        was when the name went (`_keep_open`), at the handle's size."""
        found = self.handles.open_on(node.ino)
        if found is None:
            return None
        if isinstance(node.kept, Entry):
            return dataclasses.replace(node.kept, size=found.handle.size, etag="")
        name = str(node.ref).rpartition("/")[2]
        return Entry(name, False, found.handle.size, time.time_ns(), "", time.time())

    async def _keep_open(self, parent: Node, name: str) -> None:
        """A file about to lose its name (unlink, a rename over it) that a handle has open
        keeps its entry for that handle: fstat showed the mount's default mode, and fchmod
        changed whatever file next took the name (or failed ENOENT)."""
        node = self.inodes.find(parent.ns, join(str(parent.ref), name), False) \
            if isinstance(parent.ref, str) else None
        if node is not None and self.handles.open_on(node.ino) is not None:
            with contextlib.suppress(NotFound):
                node.kept = await self._entry(node)

    # ------------------------------------------------------------ encoding

    def _strip(self, node: Node) -> int:
        """Permission bits a node never shows: write bits in a read-only tree, and the
        mount root's hidden ones."""
        strip = 0 if self._ns(node).writable else 0o222
        return strip | ROOT_HIDDEN_BITS if node.is_root else strip

    def _mode(self, node: Node, strip: int) -> int:
        """The mount's default mode of a node (objects without stored metadata); `strip`:
        _strip(node)."""
        if node.is_dir:
            return stat.S_IFDIR | (self.cfg.dir_mode & ~strip)
        return stat.S_IFREG | (self.cfg.file_mode & ~strip)

    def _posix(self, node: Node, entry: Entry) -> Posix:
        """Every POSIX attribute `node` shows: what its object stores (entry.posix), the
        mount's defaults (--uid/--gid/--file-mode/--dir-mode) for the rest. The mtime is
        entry.mtime_ns (the stored one, else LastModified); the type is the node's (a
        directory stays one whatever a header says)."""
        mode, uid, gid, mtime, ctime, atime, rdev = self._shown(node, entry)
        return Posix(mode=mode, uid=uid, gid=gid, mtime_ns=mtime, ctime_ns=ctime,
                     atime_ns=atime, rdev=rdev,
                     xattrs=entry.posix.xattrs if entry.posix is not None else ())

    async def _mode_now(self, node: Node) -> int:
        """The mode `node` shows (its type and permission bits)."""
        return self._shown(node, await self._entry(node))[0]

    def _shown(self, node: Node, entry: Entry) -> tuple[int, int, int, int, int, int, int]:
        """_posix's fields as a tuple (mode, uid, gid, mtime, ctime, atime, rdev): every
        lookup and readdirplus entry needs them, and a tuple costs a fifth of a Posix."""
        stored = entry.posix or NO_HEADERS
        strip = self._strip(node)
        default = self._mode(node, strip)
        if stored.mode is None or node.is_root:
            mode = default
        else:
            kind = stored.file_type if not node.is_dir else stat.S_IFDIR
            if kind is None or kind == stat.S_IFDIR and not node.is_dir:
                kind = stat.S_IFMT(default)
            mode = kind | (stat.S_IMODE(stored.mode) & ~strip)
        # the stored mtime when there is one (0 too: 1970-01-01), else LastModified or now
        mtime = (entry.mtime_ns if entry.mtime_ns or stored.mtime_ns is not None
                 else self._started_ns)
        return (mode, self.cfg.uid if stored.uid is None else stored.uid,
                self.cfg.gid if stored.gid is None else stored.gid, mtime,
                mtime if stored.ctime_ns is None else stored.ctime_ns,
                mtime if stored.atime_ns is None else stored.atime_ns, stored.rdev or 0)

    def _unknown(self, node: Node, entry: Entry) -> bool:
        """Are `entry`'s POSIX metadata still to be looked up (a readdir entry, or a lookup
        that could not ask S3)? Then the kernel must not keep these attributes: it asks
        again (lookup, getattr), which looks them up (tree/bucket/posixheads.py)."""
        if entry.posix is not None or node.is_root:
            return False
        ns = self._ns(node)
        return ns.posix_lookups and node.ref != ns.root

    def _ttl_left(self, node: Node, entry: Entry) -> float:
        """How long the kernel may keep `entry`: what is left of the metadata TTL since S3
        was last asked about it (a listing or a HEAD). A full TTL for an entry of an old
        listing (`ls -l` answered from it by readdirplus) let a change made elsewhere show
        up to twice the TTL late. Directories and this mount's own versions: the full TTL."""
        ttl = self.cfg.metadata_ttl
        if node.is_dir or not entry.etag or entry.checked_at <= 0:
            return ttl
        return min(ttl, max(0.0, ttl - (time.time() - entry.checked_at)))

    def _attrs(self, node: Node, entry: Entry, tell: bool = True) -> pyfuse3.EntryAttributes:
        """`entry` as attributes; `tell`: the reply goes out right after (no await between),
        so the page cache may record what the kernel now holds."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        ttl = 0.0 if self._unknown(node, entry) else self._ttl_left(node, entry)
        a.entry_timeout = ttl
        a.attr_timeout = ttl
        if node.is_dir:
            a.st_nlink = 2
            a.st_size = 0
            a.st_blksize = DIR_BLKSIZE
        else:
            entry = self.pages.shown(node.ino, entry)
            if tell:
                self.pages.told(node.ino, entry)
            a.st_nlink = 0 if node.detached else 1  # unlinked while open: no name left
            a.st_size = entry.size
            a.st_blksize = 1 << 20  # cp and friends write 1 MiB at a time (= max_write)
        a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns, a.st_ctime_ns, a.st_atime_ns, \
            a.st_rdev = self._shown(node, entry)
        if self.cfg.force_owner:  # shown only: a change stores on what S3 holds (_posix)
            a.st_uid, a.st_gid = self.cfg.uid, self.cfg.gid
        a.st_blocks = (a.st_size + 511) // 512
        return a

    async def _new_posix(self, parent: Node, mode: int, ctx: Any, rdev: int = 0) -> Posix:
        """The metadata of a node the caller makes in `parent`: its type and mode (the
        kernel applied the umask), the caller's uid and gid (the parent's gid when the
        parent has S_ISGID, which a new directory inherits), every time now."""
        uid = self.cfg.uid if ctx is None else ctx.uid
        gid = self.cfg.gid if ctx is None else ctx.gid
        above = self._posix(parent, await self._entry(parent))
        if above.mode is not None and above.mode & stat.S_ISGID:
            gid = above.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        now = time.time_ns()
        return Posix(mode=mode, uid=uid, gid=gid, mtime_ns=now, ctime_ns=now, atime_ns=now,
                     rdev=rdev or None)

    def _created(self, parent: Node, ref: Ref, entry: Entry) -> pyfuse3.EntryAttributes:
        node = self.inodes.remember(self._ensure(parent, ref, entry.is_dir))
        return self._attrs(node, entry)

    # ------------------------------------------------------------ lookups

    @fuse_handler("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text = utf8_name(short_name(name))
        found: tuple[Node, Entry] | None = None
        if text in (".", ".."):
            node = parent if text == "." else self._parent(parent)
            found = (node, await self._entry(node))
        elif text is not None:  # else no key, manifest path or member can be named so
            if not parent.is_dir:
                raise NotADirectory(self.describe("lookup", parent_inode))
            child = await self._looked_up(parent, text)
            if child is not None:
                found = (self._node_for(parent, child[0], child[1]), child[1])
        if found is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self._ns(parent).negative_ttl(parent.ref,
                                                                   self.cfg.metadata_ttl)
            return negative
        node, entry = found
        self.inodes.remember(node)
        if not node.is_dir:
            self.shapes.looked_up(parent.ns, parent.ino)
        return self._attrs(node, entry)

    async def _looked_up(self, parent: Node, name: str) -> tuple[Ref, Entry] | None:
        """`parent/name` looked up; again when a rename of that path ran meanwhile: the
        answer may be the file that had the name, given to the inode that has it now."""
        return await self.renames.answer(parent.ns, lambda: join(str(parent.ref), name),
                                         lambda: self._ns(parent).lookup(parent.ref, name))

    @fuse_handler("forget")
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @fuse_handler("getattr")
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        return self._attrs(node, await self._entry(node))

    # ------------------------------------------------------------ directories

    @fuse_handler("opendir")
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = self._dir(inode)
        stream = await self._ns(node).opendir(node.ref)
        shape = self.shapes.opened(node.ns, node.ino) if NAME_ONLY and not node.is_root \
            else Shape.ATTRS
        return self.handles.add_dir(node, stream, shape)

    def _dots(self, node: Node) -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
        """The "." and ".." entries of `node` (`ls -a` lists them; s3fs and rclone send
        them too). Only their inode and type are read: the kernel keeps no lookup
        reference and no attributes of them from a readdirplus reply."""
        dots = []
        for name, ino in ((b".", node.ino), (b"..", self._parent_ino(node))):
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = ino
            attrs.st_mode = stat.S_IFDIR | 0o755
            attrs.entry_timeout = attrs.attr_timeout = 0
            dots.append((name, attrs))
        return dots

    def _parent_ino(self, node: Node) -> int:
        """The inode of `node`'s parent, not made for this alone if the kernel has none."""
        parent = self._parent(node)
        self.inodes.discard_if_unreferenced(parent)
        return parent.ino

    @fuse_handler("readdir")
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        handle = self.handles.dir(fh)
        if start_id < DOT_ENTRIES:  # offsets 1 and 2 are "." and ".."; the stream's follow
            for offset, (name, attrs) in enumerate(self._dots(handle.node), 1):
                if offset > start_id and not pyfuse3.readdir_reply(token, name, attrs, offset):
                    return
            start_id = DOT_ENTRIES
        start_id -= DOT_ENTRIES
        while True:
            page = await handle.stream.page(start_id, READDIR_PAGE,
                                            attrs=handle.shape is not Shape.NAMES)
            if not page:
                return
            names_only = self._names_only(handle.node)
            base = self._ns(handle.node).inode_base
            for next_id, ref, entry in page:
                start_id = next_id
                file_named = handle.shape is not Shape.ATTRS and not entry.is_dir
                if file_named or (names_only and entry.posix is None):
                    if not pyfuse3.readdir_reply(token, os.fsencode(entry.name),
                                                 self._name_only(handle.node, ref, entry, base),
                                                 next_id + DOT_ENTRIES):
                        return
                    if file_named and not handle.sent_name:
                        self._sent_first_name(handle)
                    continue
                node = self._node_for(handle.node, ref, entry)
                attrs = self._attrs(node, entry, tell=False)
                if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), attrs,
                                             next_id + DOT_ENTRIES):
                    self.inodes.discard_if_unreferenced(node)
                    return
                if not node.is_dir:
                    self.pages.told(node.ino, self.pages.shown(node.ino, entry))
                self.inodes.remember(node)

    def _names_only(self, parent: Node) -> bool:
        """Do entries of `parent` whose metadata is unknown go out as names only
        (fs/dirent.py)? Their attributes would have timeout 0 (`_unknown`): the kernel
        looks each up at its first stat whether or not it holds an inode for it."""
        return NAME_ONLY and not parent.is_root and self._ns(parent).posix_lookups

    def _name_only(self, parent: Node, ref: Ref, entry: Entry,
                   base: int | None) -> pyfuse3.EntryAttributes:
        """A name-only readdir entry: listed with its inode when it is computed (`base`:
        the namespace's inode_base) or the kernel already has one (so `ls -i` agrees with
        `stat`), else UNKNOWN_INO; and with its type when its metadata is known (a symlink,
        a FIFO), else as a regular file: an object's listing says no more, and a d_type
        unknown would make `find -type f` stat, and so HEAD, every object."""
        ino = self.inodes.known_ino(parent.ns, ref, entry.is_dir, base)
        kind = (stat.S_IFDIR if entry.is_dir
                else entry.posix is not None and entry.posix.file_type or stat.S_IFREG)
        return name_only(UNKNOWN_INO if ino is None else ino, kind)

    def _sent_first_name(self, handle: OpenDir) -> None:
        """The first file of a shaped listing went out as a name only: the walk watches
        this listing, and a sentinel listing sends its other files with attributes."""
        handle.sent_name = True
        self.shapes.sent_name(handle.node.ns, handle.node.ino)
        if handle.shape is Shape.SENTINEL:
            handle.shape = Shape.ATTRS

    @fuse_handler("releasedir")
    async def releasedir(self, fh: int) -> None:
        self.handles.pop_dir(fh)

    # ------------------------------------------------------------ files

    @fuse_handler("open")
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        # renamed over (or removed) since the kernel found this inode by its path
        # (fs/renames.py): ESTALE, on which the kernel looks the path up again and opens
        # the new file's inode; its retry, if it meets another rename, opens the file now
        # there past the page cache (the kernel holds the old file's size and pages)
        await self.renames.settled(node.ns, node.ref)
        moved, pid = node.detached, (0 if ctx is None else ctx.pid)
        if not moved:
            self.stale_opens.opened(pid, node.ns, node.ref)
        elif self.stale_opens.first(pid, node.ns, node.ref):
            raise pyfuse3.FUSEError(errno.ESTALE)
        ns = self._ns(node)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            root = privileged(caller(ctx))
            direct = moved or (write_only(flags)
                               and (root or not setid_bits(await self._mode_now(node))))
            writer = await ns.open_write(node.ref, truncate=bool(flags & os.O_TRUNC))
            return self._opened_writer(node, writer, direct, root, bool(flags & os.O_APPEND))
        entry = await ns.stat(node.ref) if moved else await self._entry(node)
        handle = await ns.open(node.ref)
        opened = (Opened(direct_io=True) if moved
                  else self.pages.open_read(inode, entry, handle.size, handle.version))
        if opened.refresh_attrs:  # before the reply: its first read past the size asks again
            await self._drop_kernel_attrs(inode)
        return pyfuse3.FileInfo(fh=self.handles.add_file(node, handle, opened),
                                direct_io=opened.direct_io, keep_cache=opened.keep_cache)

    async def _drop_kernel_attrs(self, ino: int) -> None:
        """Have the kernel ask for `ino`'s attributes again (attributes only: no page is
        dropped, so nothing waits on writeback). Replies to requests sent before it are
        then ignored by the kernel too (it bumps the inode's `attr_version`)."""
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, True)
        except OSError as exc:  # the kernel let go of it meanwhile: nothing to drop
            log.debug("attributes of inode %d not dropped: %s", ino, exc)

    @fuse_handler("read")
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        try:
            return await self.handles.reader(fh).read(off, size)
        except StaleObject:
            # S3 holds another version now: the kernel's size is the old one's, asked
            # again at the next stat (the namespace dropped its entry: ObjectSource)
            found = self.handles.file(fh)
            if found is not None:
                await self._drop_kernel_attrs(found.node.ino)
            raise

    @fuse_handler("write")
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        found, writer = self.handles.open_writer(fh)
        if self.setid.due(fh):  # fs/setid.py: the kernel leaves it to us for direct writes
            await self._clear_setid(fh)
        ino = found.node.ino
        past_readers = found.opened.direct_io and self.pages.read_cached(ino)
        if not found.append and not past_readers:
            return await writer.write(off, buf)
        end = writer.size
        written = await writer.write(off, buf, found.append)
        if past_readers or (found.append and off != end):
            # readers' pages miss these bytes, or the kernel's size lags behind ours
            self.page_dropper.changed(ino)
        return written

    async def _clear_setid(self, fh: int) -> None:
        """Clear the set-id bits of the file a direct handle writes, as the kernel does
        before a write through the page cache, and drop the kernel's copy of its mode."""
        node = self.handles.file(fh).node  # type: ignore[union-attr]
        shown = self._posix(node, await self._entry(node, for_change=True))
        mode = shown.mode or 0
        if setid_bits(mode):
            cleared = mode & ~setid_bits(mode)
            changes = AttrChanges(mode=stat.S_IMODE(cleared),
                                  posix=shown.replace(mode=cleared, ctime_ns=time.time_ns()))
            await self._ns(node).setattr(node.ref, changes, None)
            await self._drop_kernel_attrs(node.ino)
        self.setid.cleared(node.ino)

    @fuse_handler("flush")
    async def flush(self, fh: int) -> None:
        """close(2): a file written through this handle is journalled and queued."""
        found = self.handles.file(fh)
        if found is not None and found.writer is not None:
            await found.writer.flush()

    @fuse_handler("fsync")
    async def fsync(self, fh: int, datasync: bool) -> None:
        found = self.handles.file(fh)
        if found is not None:
            await found.handle.fsync()

    @fuse_handler("release")
    async def release(self, fh: int) -> None:
        found = self.handles.pop_file(fh)
        self.setid.released(fh)
        if found is not None:
            self.pages.release(found.node.ino, found.opened)
            await found.handle.close()
            if found.writer is not None and found.writer.dropped:
                # its version failed (ENOSPC) and was dropped: the kernel's size and pages
                # are that version's; S3's (or the last queued one) shows again
                await self._drop_kernel_attrs(found.node.ino)
                self.page_dropper.changed(found.node.ino)

    # ------------------------------------------------------------ xattrs

    @fuse_handler("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        node = self._node(inode)
        key = os.fsdecode(name)
        if not key.startswith("user."):  # security.*, system.posix_acl_*: not supported here.
            # ENOTSUP, not ENODATA: `ls -l` then stops asking for the whole mount (coreutils
            # remembers an unsupported device) instead of two more requests per file
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if node.is_root:  # the control plane: who asks matters
            return await self.top.control_get(key, caller(ctx))
        ns = self._ns(node)
        if key in STATE_XATTRS and not node.is_dir:
            state = await ns.cached(node.ref) if key == CACHED else ns.pinned(node.ref)
            return b"1" if state else b"0"
        return await ns.getxattr(node.ref, key)

    @fuse_handler("listxattr")
    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        node = self._node(inode)
        if not node.is_dir and not node.is_root:
            # the kernel answers ENODATA for user.* attributes of anything but a file or a
            # directory: a symlink or FIFO listing ours failed `rsync -aX` and `getfattr -d`
            if not stat.S_ISREG(await self._mode_now(node)):
                return []
        names = await self._ns(node).listxattr(node.ref)
        if not node.is_dir:
            names += STATE_XATTRS
        return [n.encode() for n in names]

    @fuse_handler("setxattr")
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        """A user attribute stored with the object (the namespace refuses the reserved
        and other namespaces' names); ctime moves."""
        node = self._node(inode)
        key = os.fsdecode(short_name(name))
        if node.is_root:  # the control plane: who asks matters
            await self.top.control_set(key, value, caller(ctx))
            return
        await self._ns(node).setxattr(node.ref, key, value,
                                      await self._xattr_changed(node, key, value))

    @fuse_handler("removexattr")
    async def removexattr(self, inode: int, name: bytes, ctx: Any = None) -> None:
        node = self._node(inode)
        key = os.fsdecode(short_name(name))
        await self._ns(node).removexattr(node.ref, key, await self._xattr_changed(node, key, None))

    async def _xattr_changed(self, node: Node, key: str, value: bytes | None) -> Posix:
        """The metadata `node` stores once `key` is set to `value` (None: removed): what
        it shows, the attribute changed, ctime now."""
        shown = self._posix(node, await self._entry(node, for_change=True))
        return shown.with_xattr(key, value).replace(ctime_ns=time.time_ns())

    # ------------------------------------------------------------ filesystem

    @fuse_handler("statfs")
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = data.f_bfree = data.f_bavail = 1 << 40  # 4 PiB: S3 has no quota to show
        data.f_files = data.f_ffree = data.f_favail = 1 << 32
        data.f_namemax = 255
        return data

    # ------------------------------------------------------------ changes

    @fuse_handler("create")
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._dir(parent_inode)
        text = new_name(name)
        posix = await self._new_posix(parent, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        ref, entry, writer = await self._ns(parent).create(parent.ref, text, posix)
        node = self.inodes.remember(self._ensure(parent, ref, False))
        root = privileged(caller(ctx))
        direct = write_only(flags) and (root or not setid_bits(mode))
        return (self._opened_writer(node, writer, direct, root, bool(flags & os.O_APPEND)),
                self._attrs(node, entry))

    def _opened_writer(self, node: Node, writer: WriteHandle, direct: bool,
                       root: bool, append: bool) -> pyfuse3.FileInfo:
        """The reply to an open or create for writing; `direct`: past the page cache;
        `root`: its opener keeps set-id bits when writing (fs/setid.py); `append`: O_APPEND,
        which the daemon applies (the kernel's size may lag behind the file's)."""
        if self.pages.read_cached(node.ino):  # their pages may be an older version's
            self.page_dropper.changed(node.ino)
        fh = self.handles.add_file(node, writer, self.pages.open_write(node.ino, direct),
                                   writer, append)
        if direct and not root:
            self.setid.opened(fh, node.ino)  # a set-id bit set later: its writes clear it
        return pyfuse3.FileInfo(fh=fh, direct_io=direct)

    @fuse_handler("setattr")
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        shown = self._posix(node, await self._entry(node, for_change=True))
        changes = attr_changes(shown, attr, fields,
                               (self.cfg.uid, self.cfg.gid) if self.cfg.force_owner else None)
        if node.detached:  # through a handle of a file whose name is gone: nothing in S3
            return await self._set_unnamed(node, changes, fh)
        handle = None
        if changes.size is not None and fh is not None and self.handles.file(fh) is not None:
            handle = self.handles.writer(fh)  # ftruncate: through that handle
        if changes.size is not None:
            self.pages.wrote_here(inode)  # open readers follow it (a truncate by path too)
            if self.pages.read_cached(inode):
                self.page_dropper.changed(inode)
        await self._ns(node).setattr(node.ref, changes, handle)
        if changes.posix is not None and changes.posix.mode is not None:
            self.setid.mode_set(inode, changes.posix.mode)
        return self._attrs(node, await self._entry(node))

    async def _set_unnamed(self, node: Node, changes: AttrChanges,
                           fh: int | None) -> pyfuse3.EntryAttributes:
        """fchmod, fchown, futimens, ftruncate of an open file whose name is gone: its
        bytes change through the handle, its metadata in what the handles see (S3 has
        neither any more, and the name may be another file's now)."""
        entry = self._open_entry(node)
        if entry is None:
            raise NotFound(f"{node.ref}: removed")
        if changes.size is not None:
            found = self.handles.file(fh) if fh is not None else None
            if found is None or found.writer is None:
                raise pyfuse3.FUSEError(errno.EBADF)
            await found.writer.truncate(changes.size)
        if changes.posix is not None:
            node.kept = dataclasses.replace(entry, posix=changes.posix)
        return self._attrs(node, await self._entry(node))

    @fuse_handler("mkdir")
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        text = new_name(name)
        posix = await self._new_posix(parent, stat.S_IFDIR | stat.S_IMODE(mode), ctx)
        return self._created(parent, *await self._ns(parent).mkdir(parent.ref, text, posix))

    @fuse_handler("unlink")
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._dir(parent_inode)
        text = existing_name(name)
        await self._keep_open(parent, text)
        ref = await self._ns(parent).unlink(parent.ref, text)
        self.inodes.detach(parent.ns, ref, False)

    @fuse_handler("rmdir")
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._dir(parent_inode)
        ref = await self._ns(parent).rmdir(parent.ref, existing_name(name))
        self.inodes.detach(parent.ns, ref, True)

    @fuse_handler("rename")
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        old_parent, new_parent = self._dir(parent_inode_old), self._dir(parent_inode_new)
        same = new_parent.ns == old_parent.ns
        if same and not flags & RENAME_EXCHANGE:
            await self._keep_open(new_parent, new_name(name_new))  # a file it replaces
        paths = [join(str(parent.ref), name) for parent, name in
                 ((old_parent, existing_name(name_old)), (new_parent, new_name(name_new)))]
        with self.renames.during(old_parent.ns, paths if same else ()):
            old, new = await self._ns(old_parent).rename(
                old_parent.ref, existing_name(name_old), new_parent.ref if same else None,
                new_name(name_new), noreplace=bool(flags & RENAME_NOREPLACE),
                exchange=bool(flags & RENAME_EXCHANGE))
            self.inodes.rename(old_parent.ns, old, new)  # type: ignore[arg-type]

    @fuse_handler("symlink")
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        text = new_name(name)
        posix = await self._new_posix(parent, stat.S_IFLNK | 0o777, ctx)
        ref, entry = await self._ns(parent).symlink(parent.ref, text, os.fsdecode(target), posix)
        return self._created(parent, ref, entry)

    @fuse_handler("readlink")
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        return os.fsencode(await self._ns(node).readlink(node.ref))

    @fuse_handler("mknod")
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        text = new_name(name)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        device = kind in (stat.S_IFCHR, stat.S_IFBLK)
        posix = await self._new_posix(parent, kind | stat.S_IMODE(mode), ctx,
                                      rdev if device else 0)
        ref, entry = await self._ns(parent).mknod(parent.ref, text, posix)
        return self._created(parent, ref, entry)

    @fuse_handler("link")
    async def link(self, inode: int, new_parent_inode: int, new_name_: bytes,
                   ctx: Any) -> pyfuse3.EntryAttributes:
        node, parent = self._node(inode), self._dir(new_parent_inode)
        # the target directory's namespace answers (EPERM, EROFS): no namespace links
        ref, entry = await self._ns(parent).link(node.ref, parent.ref, new_name(new_name_))
        return self._created(parent, ref, entry)


def attr_changes(shown: Posix, attr: pyfuse3.EntryAttributes, fields: Any,
                 forced_owner: tuple[int, int] | None = None) -> AttrChanges:
    """A setattr request as changes: what was asked (a mode, owner or group already shown
    is no change: read-only trees refuse only real ones) and the complete metadata after
    it, `shown` with the request applied and ctime now (None for a size change alone,
    whose new version carries the metadata with its own times). A size change moves the
    mtime too unless the request sets one. `forced_owner`: the (uid, gid) --force-owner
    shows instead of `shown`'s: a chown to them asks for nothing and stores nothing
    (`chown -R me:me` must not copy every object, nor over the owners another machine
    stored)."""
    mode = stat.S_IMODE(attr.st_mode)
    atime_ns, mtime_ns = clamp_time(attr.st_atime_ns), clamp_time(attr.st_mtime_ns)
    uid_shown, gid_shown = forced_owner or (shown.uid, shown.gid)
    new_uid = attr.st_uid if fields.update_uid and attr.st_uid != uid_shown else None
    new_gid = attr.st_gid if fields.update_gid and attr.st_gid != gid_shown else None
    changes = AttrChanges(
        size=attr.st_size if fields.update_size else None,
        mode=mode if fields.update_mode and mode != stat.S_IMODE(shown.mode or 0) else None,
        uid=new_uid,
        gid=new_gid,
        atime_ns=atime_ns if fields.update_atime else None,
        mtime_ns=mtime_ns if fields.update_mtime else None)
    if not (fields.update_mode or fields.update_uid or fields.update_gid
            or fields.update_atime or fields.update_mtime or fields.update_ctime):
        return changes
    if forced_owner is not None and new_uid is None and new_gid is None and not (
            fields.update_mode or fields.update_atime or fields.update_mtime
            or fields.update_size):
        return changes  # a chown to the owner shown: nothing to store, not even a ctime
    now = time.time_ns()
    posix = shown.replace(
        mode=stat.S_IFMT(shown.mode or 0) | mode if fields.update_mode else shown.mode,
        uid=shown.uid if new_uid is None else new_uid,
        gid=shown.gid if new_gid is None else new_gid,
        atime_ns=atime_ns if fields.update_atime else shown.atime_ns,
        mtime_ns=(mtime_ns if fields.update_mtime
                  else now if fields.update_size else shown.mtime_ns),
        ctime_ns=clamp_time(attr.st_ctime_ns) if fields.update_ctime else now)
    return dataclasses.replace(changes, posix=posix)
