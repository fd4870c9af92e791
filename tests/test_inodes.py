"""The inode table (fs/inodes.py): one ino per (namespace, ref, kind) while the kernel
holds it, the same inodes through a rename, a new one for a name that was replaced."""
from __future__ import annotations

from s3fuse.fs.inodes import ROOT_INODE, InodeTable


def test_one_inode_per_namespace_ref_and_kind() -> None:
    table = InodeTable()
    file = table.remember(table.ensure(0, "d/a", False))
    assert table.ensure(0, "d/a", False) is file
    assert table.ensure(0, "d/a", True).ino != file.ino  # a path that changed kind
    assert table.ensure(1, "d/a", False).ino != file.ino  # another namespace
    assert table.get(file.ino) is file and table.get(ROOT_INODE).is_root


def test_forgotten_inodes_are_dropped_and_a_new_lookup_gets_a_new_one() -> None:
    table = InodeTable()
    node = table.remember(table.ensure(0, "f", False))
    table.forget(node.ino, 1)
    assert table.get(node.ino) is None
    assert table.ensure(0, "f", False).ino != node.ino
    table.forget(ROOT_INODE, 5)
    assert table.get(ROOT_INODE) is not None


def test_rename_keeps_the_inodes_of_the_subtree_and_detaches_the_target() -> None:
    table = InodeTable()
    moved = [table.remember(table.ensure(0, ref, is_dir))
             for ref, is_dir in (("a", True), ("a/x", False), ("a/s", True), ("a/s/y", False))]
    kept = table.remember(table.ensure(0, "ab", False))
    target = table.remember(table.ensure(0, "b", True))
    table.rename(0, "a", "b")
    assert [n.ref for n in moved] == ["b", "b/x", "b/s", "b/s/y"]
    assert all(table.ensure(0, n.ref, n.is_dir) is n for n in moved)
    assert kept.ref == "ab" and table.ensure(0, "ab", False) is kept
    assert target.detached and table.get(target.ino) is target  # the kernel still holds it
    table.forget(target.ino, 1)
    assert table.get(target.ino) is None
