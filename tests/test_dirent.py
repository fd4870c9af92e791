"""fs/dirent.py: name-only readdirplus entries, and the layout check they rest on."""
from __future__ import annotations

import ctypes
import stat

import pyfuse3
import pytest

from s3fuse.fs import dirent


def test_the_installed_pyfuse3_is_recognised() -> None:
    assert dirent.NAME_ONLY and dirent._nodeid_offset() == dirent._OFFSET


def test_a_name_only_entry_has_no_node_id_but_lists_its_inode_and_kind() -> None:
    assert dirent._OFFSET is not None
    for d_ino, kind in ((dirent.UNKNOWN_INO, stat.S_IFREG), (dirent.UNKNOWN_INO, stat.S_IFDIR),
                        (77, stat.S_IFDIR), (dirent.UNKNOWN_INO, stat.S_IFLNK), (78, stat.S_IFIFO)):
        attrs = dirent.name_only(d_ino, kind)
        assert attrs.st_ino == 0  # the node id the kernel reads
        assert ctypes.c_uint64.from_address(id(attrs) + dirent._OFFSET + 24).value == d_ino
        assert attrs.st_mode == kind and attrs.entry_timeout == attrs.attr_timeout == 0


def test_names_with_no_inode_share_one_entry_per_kind() -> None:
    """Made once (readdir_reply copies it); one with an inode is its own."""
    unknown = dirent.UNKNOWN_INO
    assert dirent.name_only(unknown, stat.S_IFREG) is dirent.name_only(unknown, stat.S_IFREG)
    assert dirent.name_only(unknown, stat.S_IFDIR) is not dirent.name_only(unknown, stat.S_IFREG)
    assert dirent.name_only(77, stat.S_IFREG) is not dirent.name_only(77, stat.S_IFREG)


def test_an_unknown_layout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyfuse3 whose EntryAttributes does not keep the node id and the dirent's inode
    where expected: no offset, so readdir keeps handing out inodes."""
    class Elsewhere:
        __slots__ = ("st_ino",)

    monkeypatch.setattr(pyfuse3, "EntryAttributes", Elsewhere)
    assert dirent._nodeid_offset() is None
