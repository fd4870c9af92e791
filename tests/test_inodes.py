"""The inode table (fs/inodes.py): one ino per (namespace, ref, kind) while the kernel
holds it, the same inodes through a rename, a new one for a name that was replaced, and
a path's number kept after the kernel forgot it (and across mounts)."""
from __future__ import annotations

import pytest

from s3fuse.fs import inodes
from s3fuse.fs.dirent import UNKNOWN_INO
from s3fuse.fs.inodes import DYNAMIC_END, ROOT_INODE, InodeTable


def test_one_inode_per_namespace_ref_and_kind() -> None:
    table = InodeTable()
    file = table.remember(table.ensure(0, "d/a", False))
    assert table.ensure(0, "d/a", False) is file
    assert table.ensure(0, "d/a", True).ino != file.ino  # a path that changed kind
    assert table.ensure(1, "d/a", False).ino != file.ino  # another namespace
    assert table.get(file.ino) is file and table.get(ROOT_INODE).is_root


def test_forgotten_inodes_are_dropped_and_a_new_lookup_gets_the_same_number() -> None:
    """The kernel forgets inodes under memory pressure; the file is still there, so its
    number must not change (pjdfstest rename/10.t saw it change after a rename)."""
    table = InodeTable()
    node = table.remember(table.ensure(0, "f", False))
    table.forget(node.ino, 1)
    assert table.get(node.ino) is None
    again = table.ensure(0, "f", False)
    assert again is not node and again.ino == node.ino
    table.forget(ROOT_INODE, 5)
    assert table.get(ROOT_INODE) is not None


def test_numbers_depend_on_the_namespace_name_and_path_only() -> None:
    """Another mount (another table, namespaces in another order) gives the same numbers;
    every number is a dynamic one, never the root's."""
    names = {0: "bucket-a", 1: "bucket-b"}
    first, second = InodeTable(names.__getitem__), InodeTable({0: "bucket-b", 1: "bucket-a"}.__getitem__)
    for ref, is_dir in (("", True), ("d", True), ("d/f", False), ("d/f", True), ("é\udcff", False)):
        ino = first.ensure(0, ref, is_dir).ino
        assert second.ensure(1, ref, is_dir).ino == ino
        assert first.ensure(1, ref, is_dir).ino != ino
        assert ROOT_INODE < ino < DYNAMIC_END and ino != UNKNOWN_INO
        assert ino & 1 == is_dir


def test_a_taken_number_makes_the_next_path_try_again_and_keep_its_number(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two paths hashing alike: the second gets its next hash, and gets that one back
    after a forget even once the first is gone; reserved numbers are never given."""
    def colliding(ns_name: str, ref: object, is_dir: bool, attempt: int = 0) -> int:
        return (UNKNOWN_INO, 1000, 1002, 1004)[attempt] if ref != "x" else 1000
    monkeypatch.setattr(inodes, "natural_ino", colliding)
    table = InodeTable()
    first = table.remember(table.ensure(0, "x", False))
    second = table.remember(table.ensure(0, "y", False))
    assert (first.ino, second.ino) == (1000, 1002)  # UNKNOWN_INO skipped, 1000 taken
    table.forget(second.ino, 1)
    table.forget(first.ino, 1)
    assert table.remember(table.ensure(0, "y", False)).ino == 1002
    assert table.ensure(0, "x", False).ino == 1000


def test_a_renamed_node_keeps_its_number_after_a_forget_and_a_replaced_name_does_not(
        ) -> None:
    table = InodeTable()
    moved = table.remember(table.ensure(0, "a/f", False))
    table.remember(table.ensure(0, "a/s", True))  # a directory renamed is held by the kernel
    child = table.remember(table.ensure(0, "a/s/g", False))
    table.rename(0, "a/f", "b/f")
    table.rename(0, "a/s", "c/s")
    table.forget(moved.ino, 1)
    table.forget(child.ino, 1)
    assert table.ensure(0, "b/f", False).ino == moved.ino  # not the hash of b/f
    table.remember(table.ensure(0, "c", True))
    table.rename(0, "c", "d")  # what was remembered under c/ moves along
    assert table.ensure(0, "d/s/g", False).ino == child.ino
    # a new file at the old name, while the renamed one is known: another number
    assert table.ensure(0, "a/f", False).ino != moved.ino
    # unlinked and made again: the name now names another file
    node = table.remember(table.ensure(0, "b/f", False))
    table.detach(0, "b/f", False)
    assert table.ensure(0, "b/f", False).ino != node.ino  # the old one is still open
    table.forget(node.ino, 1)


def test_numbers_kept_for_forgotten_renamed_nodes_are_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inodes, "KEPT_MAX", 3)
    table = InodeTable()
    nodes = [table.remember(table.ensure(0, f"a{i}", False)) for i in range(5)]
    for i, node in enumerate(nodes):
        table.rename(0, f"a{i}", f"b{i}")
        table.forget(node.ino, 1)
    assert [table.ensure(0, f"b{i}", False).ino == nodes[i].ino for i in range(5)] == [
        False, False, True, True, True]


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


def test_numbers_renames_gave_are_kept_for_the_next_mount(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An editor's save (write `.a.swp`, rename it over `a.txt`) and rsync's temporary
    files leave paths numbered otherwise than by their path: the next mount with the same
    cache dir gives them the same numbers (git's index, backup tools)."""
    from s3fuse.fs import renumbered
    table = InodeTable(lambda ns: f"ns{ns}")
    old = table.remember(table.ensure(0, "a.txt", False))
    swap = table.remember(table.ensure(0, ".a.swp", False))
    table.rename(0, ".a.swp", "a.txt")   # over a.txt: its node is detached
    moved = table.remember(table.ensure(0, "d/x", False))
    table.rename(0, "d/x", "d/y")
    table.forget(moved.ino, 1)           # forgotten: remembered by path
    plain = table.remember(table.ensure(0, "plain", False))
    renumbered.save(table, tmp_path)
    assert (tmp_path / "inodes.json").stat().st_mode & 0o777 == 0o600

    later = InodeTable(lambda ns: f"ns{ns}")
    renumbered.restore(later, tmp_path)
    assert later.ensure(0, "a.txt", False).ino == swap.ino != old.ino
    assert later.ensure(0, "d/y", False).ino == moved.ino
    assert later.ensure(0, "plain", False).ino == plain.ino  # natural: nothing to keep
    assert later.ensure(0, ".a.swp", False).ino != swap.ino  # held by a.txt now
    removed = InodeTable(lambda ns: f"ns{ns}")
    renumbered.restore(removed, tmp_path)
    removed.detach(0, "a.txt", False)    # removed before its lookup: a new file is another
    assert removed.ensure(0, "a.txt", False).ino == old.ino


def test_an_unreadable_numbers_file_is_ignored(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    from s3fuse.fs import renumbered
    (tmp_path / "inodes.json").write_text('{"version": 1, "numbers": [["ns0", false]]}')
    table = InodeTable(lambda ns: f"ns{ns}")
    renumbered.restore(table, tmp_path)
    assert "cannot be read" in caplog.text
    assert table.ensure(0, "f", False).ino == inodes.natural_ino("ns0", "f", False)


async def test_numbers_are_saved_while_mounted_so_a_crash_keeps_them(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The numbers are written a few seconds after a rename, not only at the unmount: a
    daemon killed later (no unmount) leaves them for the next mount."""
    import trio

    from s3fuse.fs import renumbered
    table = InodeTable(lambda ns: f"ns{ns}")
    writes: list[int] = []
    real = renumbered._write

    def counted(cache_dir, numbers):  # type: ignore[no-untyped-def]
        writes.append(len(numbers))
        real(cache_dir, numbers)
    monkeypatch.setattr(renumbered, "_write", counted)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(renumbered.keep_saved, table, tmp_path, 0.01)
        await trio.sleep(0.05)
        assert writes == []                       # nothing renamed: nothing written
        swap = table.remember(table.ensure(0, ".a.swp", False))
        table.rename(0, ".a.swp", "a.txt")
        with trio.fail_after(10):
            while not writes:
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        assert writes == [1]                      # written once, not at every look
        nursery.cancel_scope.cancel()
    later = InodeTable(lambda ns: f"ns{ns}")      # the next mount, after a crash
    renumbered.restore(later, tmp_path)
    assert later.ensure(0, "a.txt", False).ino == swap.ino
