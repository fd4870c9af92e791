"""Inode table: ino <-> (namespace index, ref, kind), with kernel lookup counts.

Dynamic namespaces (buckets) get inodes allocated here: one lives while the kernel
holds a reference (lookup count > 0) and `forget` releases it. The same
(namespace, ref, kind) maps to the same ino for as long as the kernel remembers
it; a path that changed kind (file -> dir) gets a new one.

Indexed namespaces (manifests) number their nodes themselves: their inodes are
computed (STATIC_START and above) and never stored, so a million-entry manifest
costs no memory here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

from ..tree.contract import STATIC_SHIFT, STATIC_START, static_base
from ..util.shrink import RemovalCounter

ROOT_INODE = 1
ROOT_NS = -1


@dataclass(slots=True)
class Node:
    ino: int
    ns: int  # index into RootTree, or ROOT_NS for the mount root
    ref: Hashable
    is_dir: bool
    lookups: int = 0
    detached: bool = False  # its name was removed or replaced: only open handles reach it
    invalidated: bool = False  # the kernel was asked to drop its entry (fs/inodecap.py)

    @property
    def is_root(self) -> bool:
        return self.ns == ROOT_NS


def computed_ino(base: int, ref: int, is_dir: bool) -> int:
    """The inode of a node of an indexed namespace (tree/contract.py `inode_base`)."""
    return base + (ref << 1) + is_dir


class InodeTable:
    """Nodes by ino, and by (namespace, kind) then ref: one dict per namespace and kind
    rather than a (ns, ref, kind) tuple per node, 64 bytes less per inode (a readdirplus of
    a 1,000,000-key directory makes as many)."""

    def __init__(self) -> None:
        root = Node(ROOT_INODE, ROOT_NS, "", True, lookups=1)
        self._by_ino: dict[int, Node] = {ROOT_INODE: root}
        self._by_ref: dict[tuple[int, bool], dict[Hashable, Node]] = {(ROOT_NS, True): {"": root}}
        self._next = ROOT_INODE + 1
        self._removals = RemovalCounter()
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
            node = Node(self._next, ns, ref, is_dir)
            self._next += 1
            self._by_ino[node.ino] = node
            refs[ref] = node
            if self.on_new is not None:
                self.on_new()
        return node

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
            self._gone(node.ino)
            refs = self._by_ref.get((node.ns, node.is_dir), {})
            if refs.get(node.ref) is node:
                del refs[node.ref]

    def forget(self, ino: int, count: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= count
        self.discard_if_unreferenced(node)

    def detach(self, ns: int, ref: Hashable, is_dir: bool) -> None:
        """The name is gone: a new file there gets a new inode; the old one lives on
        (for open handles) until the kernel forgets it."""
        node = self._by_ref.get((ns, is_dir), {}).pop(ref, None)
        if node is None:
            return
        node.detached = True
        if node.lookups <= 0:
            self._gone(node.ino)

    def _gone(self, ino: int) -> None:
        """The kernel holds `ino` no more: a later node of the same name gets a new one."""
        if self._by_ino.pop(ino, None) is None:
            return
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

    def rename(self, ns: int, old: str, new: str) -> None:
        """Move the nodes of `old` and everything below it to `new` (same inodes)."""
        for is_dir in (False, True):
            self.detach(ns, new, is_dir)  # an overwritten target
        below = old + "/"
        for is_dir in (False, True):
            refs = self._by_ref.get((ns, is_dir), {})
            moving = [node for ref, node in refs.items()
                      if isinstance(ref, str) and (ref == old or ref.startswith(below))]
            for node in moving:
                del refs[node.ref]
            for node in moving:
                node.ref = new + node.ref[len(old):]
                refs[node.ref] = node
