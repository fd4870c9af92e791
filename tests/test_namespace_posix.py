"""POSIX metadata through the FUSE adapter and the bucket namespace, over the in-memory store.

What the adapter builds (the caller's owner, S_ISGID parents, the request's mode, now),
what the namespace hands to write-back for it (WriteBack.open/make_dir with posix,
set_posix, create_special), the errnos POSIX asks for (ENAMETOOLONG, ENOTDIR, E2BIG,
ENODATA, ENOTSUP, EPERM) and directory times moved by entries added or removed.

The write-back side of the metadata API is faked here (RecordingWriteBack records what
the namespace asks and shows it, as the overlay of the write side does), so these tests
check the namespace's half on its own.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import pyfuse3
import pytest

import s3fuse.daemon
from s3fuse.daemon import Components
from s3fuse.fs.ops import attr_changes
from s3fuse.model import Entry
from s3fuse.posix import NO_HEADERS, Posix, to_headers
from s3fuse.store.memory import MemoryStore
from s3fuse.upload.journal import UNKNOWN
from s3fuse.upload.writeback import WriteBack
from tests.test_fake_stack import B, running
from tests.test_ops import lookup_path


class RecordingWriteBack(WriteBack):
    """The write side's metadata API as the design states it, recorded: every call in
    `calls`, the metadata of each key in `stored` (what the pending view shows)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[tuple[Any, ...]] = []
        self.stored: dict[str, Posix] = {}

    async def open(self, bucket: str, key: str, *, truncate: bool, expected: Any,  # type: ignore[override]
                   size: int = 0, read: Any = None, posix: Posix | None = None,
                   mtime_ns: int | None = None) -> Any:
        self.calls.append(("open", key, posix))
        if posix is not None:
            self.stored[key] = posix
        return await super().open(bucket, key, truncate=truncate, expected=expected,
                                  size=size, read=read, mtime_ns=mtime_ns)

    async def make_dir(self, bucket: str, marker: str,  # type: ignore[override]
                       posix: Posix | None = None) -> None:
        self.calls.append(("make_dir", marker, posix))
        if posix is not None:
            self.stored[marker] = posix
        await super().make_dir(bucket, marker)

    async def set_posix(self, bucket: str, key: str, posix: Posix, *, expected: Any, size: int,
                        is_dir: bool = False) -> None:
        self.calls.append(("set_posix", key, posix, expected, size, is_dir))
        self.stored[key] = posix

    async def create_special(self, bucket: str, key: str, body: bytes, posix: Posix,
                             expected: Any) -> None:
        self.calls.append(("create_special", key, body, posix, expected))
        self.stored[key] = posix
        local = await super().open(bucket, key, truncate=True, expected=expected)
        await local.write(0, body)
        await self.release(local)

    def posix(self, bucket: str, key: str) -> Posix | None:
        return self.stored.get(key)

    def last(self, op: str) -> tuple[Any, ...]:
        return [c for c in self.calls if c[0] == op][-1]


def show_stored(tree: Any, writes: RecordingWriteBack) -> None:
    """Entries of the tree show what `writes` stores for them, as the write side's
    pending view does (Entry.posix, and mtime_ns = the stored mtime)."""
    stat_, lookup = tree._stat, tree.lookup

    def shown(path: str, entry: Entry) -> Entry:
        key = tree.keys.dir_prefix(path) if entry.is_dir else tree.keys.key(path)
        posix = writes.stored.get(key)
        if posix is None:
            return entry
        return dataclasses.replace(entry, posix=posix, mtime_ns=posix.mtime_ns or entry.mtime_ns)

    async def stat_shown(path: str) -> Entry:
        return shown(path, await stat_(path))

    async def lookup_shown(path: str, name: str) -> tuple[str, Entry] | None:
        found = await lookup(path, name)
        return None if found is None else (found[0], shown(found[0], found[1]))

    tree._stat, tree.lookup = stat_shown, lookup_shown


@dataclass
class Ctx:
    uid: int = 1000
    gid: int = 1000
    pid: int = 1
    umask: int = 0o022


@dataclass
class Fields:
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


@pytest.fixture
async def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Components]:
    monkeypatch.setattr(s3fuse.daemon, "WriteBack", RecordingWriteBack)
    store = MemoryStore()
    store.create_bucket(B)
    store.put_object(B, "a.txt", b"alpha")
    store.put_object(B, "d/b.txt", b"bravo")
    store.put_object(B, "s3link", b"d/b.txt")  # s3fs's symlink (its headers: RecordingWriteBack)
    async for components in running(tmp_path, store):
        show_stored(components.root.get(0), components.writes)  # type: ignore[arg-type]
        yield components


async def errno_of(call: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await call
    return info.value.errno


def near_now(ns: int | None) -> bool:
    return ns is not None and abs(time.time_ns() - ns) < 60 * 10**9


async def test_new_nodes_carry_the_callers_owner_the_requested_mode_and_now(parts: Components):
    ops, writes = parts.ops, parts.writes
    top = await lookup_path(ops, B)
    ctx = Ctx(uid=1234, gid=567)
    _, attrs = await ops.create(top.st_ino, b"f", stat.S_IFREG | 0o640, os.O_WRONLY, ctx)
    posix = writes.last("open")[2]
    assert (posix.mode, posix.uid, posix.gid) == (stat.S_IFREG | 0o640, 1234, 567)
    assert near_now(posix.mtime_ns) and posix.mtime_ns == posix.ctime_ns == posix.atime_ns
    assert (attrs.st_mode, attrs.st_uid, attrs.st_gid) == (stat.S_IFREG | 0o640, 1234, 567)
    # not uploaded yet: no ETag to show (not an empty user.s3.etag)
    assert b"user.s3.etag" not in await ops.listxattr(attrs.st_ino, ctx)
    assert b"user.s3.uri" in await ops.listxattr(attrs.st_ino, ctx)

    attrs = await ops.mkdir(top.st_ino, b"sub", 0o750, ctx)
    _, marker, posix = writes.last("make_dir")
    assert marker == "sub/" and posix.mode == stat.S_IFDIR | 0o750 and posix.uid == 1234
    assert attrs.st_mode == stat.S_IFDIR | 0o750

    attrs = await ops.symlink(top.st_ino, b"link", b"../some/target", ctx)
    _, key, body, posix, expected = writes.last("create_special")
    assert (key, body, posix.mode, expected) == ("link", b"../some/target", stat.S_IFLNK | 0o777, None)
    assert stat.S_ISLNK(attrs.st_mode) and attrs.st_size == len(b"../some/target")

    attrs = await ops.mknod(top.st_ino, b"fifo", stat.S_IFIFO | 0o600, 0, ctx)
    _, key, body, posix, _ = writes.last("create_special")
    assert (key, body, posix.mode, posix.rdev) == ("fifo", b"", stat.S_IFIFO | 0o600, None)
    assert stat.S_ISFIFO(attrs.st_mode)
    attrs = await ops.mknod(top.st_ino, b"tty", stat.S_IFCHR | 0o600, os.makedev(4, 1), ctx)
    posix = writes.last("create_special")[3]
    assert posix.rdev == os.makedev(4, 1) and to_headers(posix)["rdev"] == str(os.makedev(4, 1))
    assert stat.S_ISCHR(attrs.st_mode) and attrs.st_rdev == os.makedev(4, 1)
    assert await errno_of(ops.mknod(top.st_ino, b"fifo", stat.S_IFIFO | 0o600, 0, ctx)) == errno.EEXIST


async def test_a_setgid_directory_gives_its_group_and_new_directories_inherit_the_bit(
        parts: Components):
    ops, writes = parts.ops, parts.writes
    top = await lookup_path(ops, B)
    await ops.mkdir(top.st_ino, b"shared", 0o2775, Ctx(uid=0, gid=50))
    shared = await lookup_path(ops, B, "shared")
    assert shared.st_mode & stat.S_ISGID and shared.st_gid == 50
    await ops.create(shared.st_ino, b"f", stat.S_IFREG | 0o644, os.O_WRONLY, Ctx(uid=7, gid=8))
    posix = writes.last("open")[2]
    assert (posix.uid, posix.gid, posix.mode & stat.S_ISGID) == (7, 50, 0)
    await ops.mkdir(shared.st_ino, b"inner", 0o755, Ctx(uid=7, gid=8))
    posix = writes.last("make_dir")[2]
    assert posix.gid == 50 and posix.mode == stat.S_IFDIR | stat.S_ISGID | 0o755


async def test_setattr_stores_the_shown_metadata_with_the_request_and_a_new_ctime(
        parts: Components):
    ops, writes, cfg = parts.ops, parts.writes, parts.ops.cfg
    f = await lookup_path(ops, B, "a.txt")
    request = pyfuse3.EntryAttributes()
    request.st_mode = stat.S_IFREG | 0o700
    attrs = await ops.setattr(f.st_ino, request, Fields(update_mode=True), None, Ctx())
    _, key, posix, expected, size, is_dir = writes.last("set_posix")
    # an object without headers: the defaults it showed are stored with the change
    assert (key, expected, size, is_dir) == ("a.txt", parts.store.head(B, "a.txt").etag, 5, False)
    assert (posix.mode, posix.uid, posix.gid) == (stat.S_IFREG | 0o700, cfg.uid, cfg.gid)
    assert near_now(posix.ctime_ns) and posix.mtime_ns == f.st_mtime_ns
    assert attrs.st_mode == stat.S_IFREG | 0o700

    request.st_uid, request.st_gid = 4321, 99
    await ops.setattr(f.st_ino, request, Fields(update_uid=True, update_gid=True), None, Ctx())
    posix = writes.last("set_posix")[2]
    assert (posix.mode, posix.uid, posix.gid) == (stat.S_IFREG | 0o700, 4321, 99)

    request.st_atime_ns, request.st_mtime_ns = 10**18, 2 * 10**18
    attrs = await ops.setattr(f.st_ino, request, Fields(update_atime=True, update_mtime=True),
                              None, Ctx())
    posix = writes.last("set_posix")[2]
    assert (posix.atime_ns, posix.mtime_ns, posix.uid) == (10**18, 2 * 10**18, 4321)
    assert attrs.st_mtime_ns == 2 * 10**18 and attrs.st_atime_ns == 10**18

    calls = len(writes.calls)
    request.st_size = 2
    await ops.setattr(f.st_ino, request, Fields(update_size=True), None, Ctx())
    assert [c[0] for c in writes.calls[calls:]] == ["open"]   # a new version, no copy
    assert writes.calls[calls][2] == posix                    # carrying the metadata


async def test_a_directorys_metadata_goes_on_its_marker_and_the_bucket_top_keeps_it_in_memory(
        parts: Components):
    ops, writes = parts.ops, parts.writes
    d = await lookup_path(ops, B, "d")
    request = pyfuse3.EntryAttributes()
    request.st_mode = stat.S_IFDIR | 0o700
    await ops.setattr(d.st_ino, request, Fields(update_mode=True), None, Ctx())
    _, key, posix, expected, _, is_dir = writes.last("set_posix")
    # d/ has no marker (only d/b.txt): None asks for one to be made with the metadata
    assert (key, posix.mode, expected, is_dir) == ("d/", stat.S_IFDIR | 0o700, None, True)
    top = await lookup_path(ops, B)
    calls = len(writes.calls)
    attrs = await ops.setattr(top.st_ino, request, Fields(update_mode=True), None, Ctx())
    assert stat.S_IMODE(attrs.st_mode) == 0o700 and len(writes.calls) == calls  # nothing stored
    assert stat.S_IMODE((await ops.getattr(top.st_ino)).st_mode) == 0o700


async def test_only_the_six_reserved_names_are_not_stored(parts: Components):
    """design.md reserves user.s3.uri, user.s3.etag, user.s3exchange.id/meta and
    user.s3fuse.cached/pinned, and says every other user.* name is the user's own: a
    forged `user.s3exchange.id` on a bucket file was stored (and read back as
    s3exchange's), `user.s3.note` accepted and dropped (found by an audit)."""
    ops, writes = parts.ops, parts.writes
    f = await lookup_path(ops, B, "a.txt")
    calls = len(writes.calls)
    await ops.setxattr(f.st_ino, b"user.s3exchange.id", b"forged", Ctx())
    assert len(writes.calls) == calls  # accepted, nothing stored
    assert await errno_of(ops.getxattr(f.st_ino, b"user.s3exchange.id", Ctx())) == errno.ENODATA
    await ops.setxattr(f.st_ino, b"user.s3.note", b"mine", Ctx())
    assert writes.last("set_posix")[2].xattr("user.s3.note") == b"mine"
    assert await ops.getxattr(f.st_ino, b"user.s3.note", Ctx()) == b"mine"


async def test_user_xattrs_are_stored_and_shown_with_the_computed_ones(
        parts: Components, caplog: pytest.LogCaptureFixture):
    ops, writes = parts.ops, parts.writes
    f = await lookup_path(ops, B, "a.txt")
    assert await errno_of(ops.getxattr(f.st_ino, b"user.mine", Ctx())) == errno.ENODATA
    assert await errno_of(ops.removexattr(f.st_ino, b"user.mine", Ctx())) == errno.ENODATA
    await ops.setxattr(f.st_ino, b"user.mine", b"\x00value", Ctx())
    posix = writes.last("set_posix")[2]
    assert posix.xattr("user.mine") == b"\x00value" and near_now(posix.ctime_ns)
    assert await ops.getxattr(f.st_ino, b"user.mine", Ctx()) == b"\x00value"
    assert set(await ops.listxattr(f.st_ino, Ctx())) == {
        b"user.mine", b"user.s3.uri", b"user.s3.etag", b"user.s3fuse.cached", b"user.s3fuse.pinned"}
    await ops.removexattr(f.st_ino, b"user.mine", Ctx())
    assert writes.last("set_posix")[2].xattrs == ()

    for name, code in ((b"trusted.x", errno.ENOTSUP), (b"security.x", errno.ENOTSUP),
                       (b"user.a,b", errno.EINVAL), (b"user.c:d", errno.EINVAL), (b"user." + b"x" * 251, errno.ENAMETOOLONG)):
        assert await errno_of(ops.setxattr(f.st_ino, name, b"1", Ctx())) == code, name
    stored = len(writes.calls)
    for name in (b"user.s3.uri", b"user.s3fuse.pinned", b"user.s3fuse.cached"):  # computed:
        await ops.setxattr(f.st_ino, name, b"s3://other/key", Ctx())  # accepted, unchanged
    await ops.removexattr(f.st_ino, b"user.s3.etag", Ctx())
    assert len(writes.calls) == stored
    assert await ops.getxattr(f.st_ino, b"user.s3.uri", Ctx()) == f"s3://{B}/a.txt".encode()
    assert b"user.s3.etag" in await ops.listxattr(f.st_ino, Ctx())

    calls = len(writes.calls)
    with caplog.at_level(logging.WARNING):
        assert await errno_of(ops.setxattr(f.st_ino, b"user.big", b"x" * 2000, Ctx())) == errno.E2BIG
    assert len(writes.calls) == calls
    assert len([r for r in caplog.records if "2 KiB" in r.getMessage()]) == 1


async def test_readlink_reads_the_target_local_or_from_s3(parts: Components):
    ops, writes = parts.ops, parts.writes
    top = await lookup_path(ops, B)
    link = await ops.symlink(top.st_ino, b"here", b"a.txt", Ctx())
    assert await ops.readlink(link.st_ino, Ctx()) == b"a.txt"          # the local bytes
    writes.stored["s3link"] = Posix(mode=stat.S_IFLNK | 0o777, uid=0, gid=0, mtime_ns=1)
    there = await lookup_path(ops, B, "s3link")
    assert stat.S_ISLNK(there.st_mode)
    assert await ops.readlink(there.st_ino, Ctx()) == b"d/b.txt"       # S3's, via the cache
    f = await lookup_path(ops, B, "a.txt")
    assert await errno_of(ops.readlink(f.st_ino, Ctx())) == errno.EINVAL
    assert await errno_of(ops.symlink(top.st_ino, b"a.txt", b"x", Ctx())) == errno.EEXIST


async def test_names_over_255_bytes_are_enametoolong_everywhere(parts: Components):
    ops = parts.ops
    top = await lookup_path(ops, B)
    long, ok = b"n" * 256, b"n" * 255
    for call in (ops.lookup(top.st_ino, long, Ctx()),
                 ops.create(top.st_ino, long, stat.S_IFREG | 0o644, os.O_WRONLY, Ctx()),
                 ops.mkdir(top.st_ino, long, 0o755, Ctx()),
                 ops.symlink(top.st_ino, long, b"t", Ctx()),
                 ops.mknod(top.st_ino, long, stat.S_IFIFO | 0o644, 0, Ctx()),
                 ops.unlink(top.st_ino, long, Ctx()), ops.rmdir(top.st_ino, long, Ctx()),
                 ops.rename(top.st_ino, b"a.txt", top.st_ino, long, 0, Ctx()),
                 ops.rename(top.st_ino, long, top.st_ino, b"b", 0, Ctx()),
                 ops.link(top.st_ino, top.st_ino, long, Ctx())):
        assert await errno_of(call) == errno.ENAMETOOLONG
    info, _ = await ops.create(top.st_ino, ok, stat.S_IFREG | 0o644, os.O_WRONLY, Ctx())
    await ops.release(info.fh)
    assert (await ops.lookup(top.st_ino, ok, Ctx())).st_ino
    # two-byte characters: 128 of them are 256 bytes
    assert await errno_of(ops.mkdir(top.st_ino, "é".encode() * 128, 0o755, Ctx())) == errno.ENAMETOOLONG


async def test_a_file_as_a_path_component_is_enotdir_and_hard_links_are_eperm(
        parts: Components):
    ops = parts.ops
    f = await lookup_path(ops, B, "a.txt")
    top = await lookup_path(ops, B)
    assert await errno_of(ops.lookup(f.st_ino, b"x", Ctx())) == errno.ENOTDIR
    assert await errno_of(ops.mkdir(f.st_ino, b"x", 0o755, Ctx())) == errno.ENOTDIR
    assert await errno_of(ops.create(f.st_ino, b"x", 0o644, os.O_WRONLY, Ctx())) == errno.ENOTDIR
    assert await errno_of(ops.link(f.st_ino, top.st_ino, b"hard", Ctx())) == errno.EPERM


async def test_directory_times_move_when_entries_are_added_or_removed(parts: Components):
    ops, writes = parts.ops, parts.writes
    d = await lookup_path(ops, B, "d")
    start = time.time_ns()
    info, _ = await ops.create(d.st_ino, b"new", stat.S_IFREG | 0o644, os.O_WRONLY, Ctx())
    await ops.release(info.fh)
    made = await ops.getattr(d.st_ino, Ctx())
    assert made.st_mtime_ns >= start and made.st_ctime_ns == made.st_mtime_ns
    await ops.unlink(d.st_ino, b"b.txt", Ctx())
    removed = await ops.getattr(d.st_ino, Ctx())
    assert removed.st_mtime_ns >= made.st_mtime_ns
    request = pyfuse3.EntryAttributes()
    request.st_atime_ns = request.st_mtime_ns = 10**18
    await ops.setattr(d.st_ino, request, Fields(update_atime=True, update_mtime=True), None, Ctx())
    assert writes.last("set_posix")[1] == "d/"
    assert (await ops.getattr(d.st_ino, Ctx())).st_mtime_ns == 10**18  # its own times now


async def test_an_entry_without_headers_shows_the_defaults(parts: Components):
    tree = parts.root.get(0)
    entry = await tree.stat("a.txt")
    assert (entry.posix or NO_HEADERS).mode is None
    f = await lookup_path(parts.ops, B, "a.txt")
    assert f.st_mode == stat.S_IFREG | parts.ops.cfg.file_mode and f.st_uid == parts.ops.cfg.uid


def test_a_chown_to_the_forced_owner_keeps_the_stored_one():
    """--force-owner shows (cfg.uid, cfg.gid) for everything: a chown to them is no change
    (a read-only tree does not refuse it) and stores nothing (`chown -R me: dir` copied
    every object); a chown to anyone else is one, on S3's owner."""
    stored = Posix(mode=stat.S_IFREG | 0o600, uid=1234, gid=1234)
    request = pyfuse3.EntryAttributes()
    request.st_uid, request.st_gid = 65534, 65534
    fields = Fields(update_uid=True, update_gid=True)
    changes = attr_changes(stored, request, fields, (65534, 65534))
    assert (changes.uid, changes.gid, changes.posix) == (None, None, None)  # nothing stored
    changes = attr_changes(stored, request, fields)                # without --force-owner
    assert (changes.uid, changes.gid) == (65534, 65534)
    request.st_uid = 4321
    changes = attr_changes(stored, request, fields, (65534, 65534))
    assert (changes.uid, changes.gid) == (4321, None)
    assert changes.posix is not None and (changes.posix.uid, changes.posix.gid) == (4321, 1234)
