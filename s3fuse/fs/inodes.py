"""Inode table: ino <-> (namespace index, path, kind), with kernel lookup counts.

An inode lives while the kernel holds a reference (lookup count > 0); `forget`
releases it. The same (namespace, path, kind) maps to the same ino for as long as
the kernel remembers it, and a path that changed kind (file -> dir) gets a new one.
"""
from __future__ import annotations

from dataclasses import dataclass

ROOT_INODE = 1
ROOT_NS = -1


@dataclass(slots=True)
class Node:
    ino: int
    ns: int  # index into RootTree, or ROOT_NS for the mount root
    path: str
    is_dir: bool
    lookups: int = 0

    @property
    def is_root(self) -> bool:
        return self.ns == ROOT_NS

    @property
    def key(self) -> tuple[int, str, bool]:
        return (self.ns, self.path, self.is_dir)


class InodeTable:
    def __init__(self) -> None:
        root = Node(ROOT_INODE, ROOT_NS, "", True, lookups=1)
        self._by_ino: dict[int, Node] = {ROOT_INODE: root}
        self._by_key: dict[tuple[int, str, bool], Node] = {root.key: root}
        self._next = ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Node | None:
        return self._by_ino.get(ino)

    def ensure(self, ns: int, path: str, is_dir: bool) -> Node:
        """The node for (ns, path, kind), created with lookup count 0 if new."""
        key = (ns, path, is_dir)
        node = self._by_key.get(key)
        if node is None:
            node = Node(self._next, ns, path, is_dir)
            self._next += 1
            self._by_ino[node.ino] = node
            self._by_key[key] = node
        return node

    def remember(self, node: Node) -> Node:
        """The kernel got a reference to `node` (a lookup reply or a readdirplus entry)."""
        node.lookups += 1
        return node

    def discard_if_unreferenced(self, node: Node) -> None:
        if node.lookups <= 0 and node.ino != ROOT_INODE:
            self._by_ino.pop(node.ino, None)
            if self._by_key.get(node.key) is node:
                del self._by_key[node.key]

    def forget(self, ino: int, count: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= count
        self.discard_if_unreferenced(node)
