"""Inode table: ino <-> (namespace index, ref, kind), with kernel lookup counts.

Dynamic namespaces (buckets) get their nodes made here: one lives while the kernel
holds a reference (lookup count > 0) and `forget` releases it. Its number is a hash of
the namespace's name, the path and the kind (`natural_ino`), so a path keeps its number
after the kernel forgot it (memory pressure, `drop_caches`, the inode cap) and across
remounts: POSIX wants a file's number to stay while the file does (pjdfstest
`rename/10.t` failed under memory pressure when numbers were counted up), and tools
key their caches by it (`git`'s index, backup tools, `rsync`). A number taken by a live
node of another path, and a node renamed (it keeps its number), are remembered by path
when forgotten (`KEPT_MAX`); a path that changed kind (file -> dir) or a new file where a
removed one is still open gets another number.

Indexed namespaces (manifests) number their nodes themselves: their inodes are
computed (STATIC_START and above) and never stored, so a million-entry manifest
costs no memory here.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator

from ..tree.contract import STATIC_SHIFT, STATIC_START, static_base
from ..util.shrink import RemovalCounter
from .dirent import UNKNOWN_INO

ROOT_INODE = 1
ROOT_NS = -1
#: Dynamic inodes lie in [FIRST_DYNAMIC, DYNAMIC_END): FIRST_DYNAMIC + 2 * slot + is_dir.
#: Below 2**32: a 32-bit program's stat() fails with EOVERFLOW past it.
FIRST_DYNAMIC = ROOT_INODE + 1
DYNAMIC_END = 1 << 32
_SLOTS = (DYNAMIC_END - FIRST_DYNAMIC) >> 1
#: Numbers never given to a node: the root's and the one readdir lists unknown names with.
_RESERVED = frozenset({0, ROOT_INODE, UNKNOWN_INO})
#: Forgotten nodes whose number is not their path's natural one, remembered by path (~200
#: bytes each; renames and hash collisions are rare): past it the oldest are renumbered.
KEPT_MAX = 8192
#: Hashes tried for one path before giving up (2**31 slots: never reached in practice).
ATTEMPTS_MAX = 1000


@dataclass(slots=True)
class Node:
    ino: int
    ns: int  # index into RootTree, or ROOT_NS for the mount root
    ref: Hashable
    is_dir: bool
    lookups: int = 0
    detached: bool = False  # its name was removed or replaced: only open handles reach it
    invalidated: bool = False  # the kernel was asked to drop its entry (fs/inodecap.py)
    #: The entry of an open file when its name went (unlink, rename over it): what fstat
    #: and fchmod of its handles see and change then (fs/ops.py `_keep_open`)
    kept: Any = None

    @property
    def is_root(self) -> bool:
        return self.ns == ROOT_NS


def computed_ino(base: int, ref: int, is_dir: bool) -> int:
    """The inode of a node of an indexed namespace (tree/contract.py `inode_base`)."""
    return base + (ref << 1) + is_dir


def natural_ino(ns_name: str, ref: Hashable, is_dir: bool, attempt: int = 0) -> int:
    """The number path `ref` of the namespace called `ns_name` gets in every mount, unless
    a live node of another path holds it (then `attempt` 1, 2, ... are tried). A keyed
    hash, not `hash()`: Python salts that per process."""
    text = ref if isinstance(ref, str) else repr(ref)
    digest = hashlib.blake2b(f"{ns_name}\0{text}".encode("utf-8", "surrogatepass"),
                             digest_size=8, salt=attempt.to_bytes(8, "little")).digest()
    return FIRST_DYNAMIC + ((int.from_bytes(digest, "little") % _SLOTS) << 1) + is_dir


class InodeTable:
    """Nodes by ino, and by (namespace, kind) then ref: one dict per namespace and kind
    rather than a (ns, ref, kind) tuple per node, 64 bytes less per inode (a readdirplus of
    a 1,000,000-key directory makes as many)."""

    def __init__(self, ns_name: Callable[[int], str] = str) -> None:
        root = Node(ROOT_INODE, ROOT_NS, "", True, lookups=1)
        self._by_ino: dict[int, Node] = {ROOT_INODE: root}
        self._by_ref: dict[tuple[int, bool], dict[Hashable, Node]] = {(ROOT_NS, True): {"": root}}
        self._ns_name = ns_name  # what a namespace's numbers are hashed with
        self._unnatural: set[int] = set()  # live nodes numbered otherwise than natural_ino
        self._kept: OrderedDict[tuple[int, bool, Hashable], int] = OrderedDict()  # forgotten ones
        #: ... and those of the last mount (`restore`), by namespace name until looked up
        self._restored: dict[tuple[str, bool, str], int] = {}
        self._removals = RemovalCounter()
        #: Moves on at every rename and removal: `renumbered` may differ (fs/renumbered.py
        #: looks again only then)
        self.changes = 0
        self.on_new: Callable[[], None] | None = None  # called for each dynamic node made
        self.on_gone: Callable[[int], None] | None = None  # ... and with each one let go

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Node | None:
        if ino >= STATIC_START:
            ns = (ino >> STATIC_SHIFT) - 1
            offset = ino - static_base(ns)
            return Node(ino, ns, offset >> 1, bool(offset & 1))
        return self._by_ino.get(ino)

    def ensure(self, ns: int, ref: Hashable, is_dir: bool, base: int | None = None) -> Node:
        """The node for (ns, ref, kind); new dynamic nodes start with lookup count 0."""
        if base is not None:
            assert isinstance(ref, int) and 0 <= ref < STATIC_START >> 2
            return Node(computed_ino(base, ref, is_dir), ns, ref, is_dir)
        refs = self._by_ref.get((ns, is_dir))
        if refs is None:
            refs = self._by_ref[(ns, is_dir)] = {}
        node = refs.get(ref)
        if node is None:
            ino, natural = self._number(ns, ref, is_dir)
            node = Node(ino, ns, ref, is_dir)
            self._by_ino[ino] = node
            refs[ref] = node
            if not natural:
                self._unnatural.add(ino)
            if self.on_new is not None:
                self.on_new()
        return node

    def _number(self, ns: int, ref: Hashable, is_dir: bool) -> tuple[int, bool]:
        """The number a new node of (ns, ref, kind) gets, and whether it is the natural
        one: the one it had when last forgotten if it was not (no longer remembered: the
        node holds it now), else the first free hash."""
        kept = self._kept.pop((ns, is_dir, ref), None)
        if kept is not None and kept not in self._by_ino:
            return kept, False
        name = self._ns_name(ns)
        if self._restored and isinstance(ref, str):
            kept = self._restored.pop((name, is_dir, ref), None)
            if kept is not None and kept not in self._by_ino:
                return kept, False
        for attempt in range(ATTEMPTS_MAX):
            ino = natural_ino(name, ref, is_dir, attempt)
            if ino not in self._by_ino and ino not in _RESERVED:
                return ino, attempt == 0
        raise RuntimeError(f"no free inode number for {ref!r} after {ATTEMPTS_MAX} tries")

    def find(self, ns: int, ref: Hashable, is_dir: bool) -> Node | None:
        """The dynamic node of (ns, ref, kind) if there is one; never makes one."""
        refs = self._by_ref.get((ns, is_dir))
        return None if refs is None else refs.get(ref)

    def known_ino(self, ns: int, ref: Hashable, is_dir: bool, base: int | None) -> int | None:
        """The inode of (ns, ref, kind) if it is computed (`base`) or a node exists;
        never makes one."""
        if base is not None:
            return computed_ino(base, ref, is_dir)  # type: ignore[arg-type]
        node = self.find(ns, ref, is_dir)
        return None if node is None else node.ino

    def remember(self, node: Node) -> Node:
        """The kernel got a reference to `node` (a lookup reply or a readdirplus entry).
        One whose entry was invalidated and is looked up again becomes the newest."""
        node.lookups += 1
        if node.invalidated:
            node.invalidated = False
            if self._by_ino.get(node.ino) is node:
                del self._by_ino[node.ino]
                self._by_ino[node.ino] = node
        return node

    def oldest_first(self) -> Iterator[Node]:
        """The dynamic nodes, the longest known (or longest since invalidated) first; do
        not change the table while iterating."""
        return iter(self._by_ino.values())

    def discard_if_unreferenced(self, node: Node) -> None:
        if node.lookups <= 0 and node.ino != ROOT_INODE and node.ino < STATIC_START:
            unnatural = node.ino in self._unnatural
            self._gone(node.ino)
            refs = self._by_ref.get((node.ns, node.is_dir), {})
            if refs.get(node.ref) is node:
                del refs[node.ref]
                if unnatural:  # its path gets this number back
                    self._keep((node.ns, node.is_dir, node.ref), node.ino)

    def _keep(self, key: tuple[int, bool, Hashable], ino: int) -> None:
        self._kept.pop(key, None)
        self._kept[key] = ino
        if len(self._kept) > KEPT_MAX:
            self._kept.popitem(last=False)

    def forget(self, ino: int, count: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= count
        self.discard_if_unreferenced(node)

    def detach(self, ns: int, ref: Hashable, is_dir: bool) -> None:
        """The name is gone: a new file there gets a new inode; the old one lives on
        (for open handles) until the kernel forgets it."""
        self.changes += 1
        self._kept.pop((ns, is_dir, ref), None)  # a new file there is another file
        if self._restored and isinstance(ref, str):
            self._restored.pop((self._ns_name(ns), is_dir, ref), None)
        node = self._by_ref.get((ns, is_dir), {}).pop(ref, None)
        if node is None:
            return
        node.detached = True
        if node.lookups <= 0:
            self._gone(node.ino)

    def _gone(self, ino: int) -> None:
        """The kernel holds `ino` no more: the number is free again (for its path, or
        another's after a removal)."""
        if self._by_ino.pop(ino, None) is None:
            return
        self._unnatural.discard(ino)
        if self._removals.removed_one(len(self._by_ino)):
            self._compact()
        if self.on_gone is not None:
            self.on_gone(ino)

    def _compact(self) -> None:
        """Copy the tables, sized for what they hold now (util/shrink.py); the order of
        `_by_ino` (oldest first) is kept."""
        self._by_ino = dict(self._by_ino)
        for key, refs in self._by_ref.items():
            self._by_ref[key] = dict(refs)

    def renumbered(self) -> list[tuple[str, bool, str, int]]:
        """(namespace name, is_dir, path, number) of every path whose number is not its
        natural one (renamed: live, remembered, or restored and not looked up since), at
        most KEPT_MAX, the newest last: what the next mount restores (fs/renumbered.py)."""
        found: list[tuple[str, bool, str, int]] = [
            (name, is_dir, ref, ino) for (name, is_dir, ref), ino in self._restored.items()]
        found += [(self._ns_name(ns), is_dir, ref, ino)
                  for (ns, is_dir, ref), ino in self._kept.items() if isinstance(ref, str)]
        for ino in self._unnatural:
            node = self._by_ino.get(ino)
            if node is not None and not node.detached and isinstance(node.ref, str):
                found.append((self._ns_name(node.ns), node.is_dir, node.ref, ino))
        return found[-KEPT_MAX:]

    def restore(self, numbers: list[tuple[str, bool, str, int]]) -> None:
        """The numbers a previous mount's renames gave (`renumbered`): each path gets
        its own again at its first lookup, unless a live node holds it then."""
        for name, is_dir, ref, ino in numbers[-KEPT_MAX:]:
            if (FIRST_DYNAMIC <= ino < DYNAMIC_END and ino not in _RESERVED
                    and (ino - FIRST_DYNAMIC) & 1 == is_dir):
                self._restored[(name, is_dir, ref)] = ino

    def rename(self, ns: int, old: str, new: str) -> None:
        """Move the nodes of `old` and everything below it to `new` (same inodes, now
        not their paths' natural ones), and the numbers remembered for them."""
        for is_dir in (False, True):
            self.detach(ns, new, is_dir)  # an overwritten target
        # a directory renamed through the kernel is a node it holds; a file has nothing
        # below it, and is looked up by name instead of scanning every node (`rsync -a`
        # renames every file it writes)
        tree = old in self._by_ref.get((ns, True), {})
        below = old + "/"

        def moves(ref: Hashable) -> bool:
            return isinstance(ref, str) and (ref == old or (tree and ref.startswith(below)))
        kept = ([k for k in self._kept if k[0] == ns and moves(k[2])] if tree
                else [k for k in ((ns, False, old), (ns, True, old)) if k in self._kept])
        for key in kept:
            self._kept[(ns, key[1], new + key[2][len(old):])] = self._kept.pop(key)
        if self._restored:
            name = self._ns_name(ns)
            for restored in [k for k in self._restored if k[0] == name and moves(k[2])]:
                self._restored[(name, restored[1], new + restored[2][len(old):])] = \
                    self._restored.pop(restored)
        for is_dir in (False, True):
            refs = self._by_ref.get((ns, is_dir), {})
            moving = ([node for ref, node in refs.items() if moves(ref)] if tree
                      else [refs[old]] if old in refs else [])
            for node in moving:
                del refs[node.ref]
            for node in moving:
                node.ref = new + node.ref[len(old):]
                refs[node.ref] = node
                self._unnatural.add(node.ino)
