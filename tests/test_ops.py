"""Operations called directly under pytest-trio, over in-process moto."""
from __future__ import annotations

import ctypes
import errno
from types import SimpleNamespace
import os
import stat
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import itertools

import pyfuse3
import pytest
import trio

from s3fuse.config import Config, parse_source
from s3fuse.daemon import Components, build
from s3fuse.fs import dirent
from s3fuse.fs import ops as ops_module
from s3fuse.fs.inodes import ROOT_INODE
from tests.conftest import Backend

_ids = itertools.count()


@pytest.fixture
def parts(moto_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          request: pytest.FixtureRequest) -> Iterator[Components]:
    """Components over a moto server bucket named 'bkt' (shown as top-level dir 'bkt');
    parametrize indirectly with {"read_only": True} for a read-only mount, with
    {"posix_metadata": False} for one that never HEADs for POSIX metadata."""
    client = moto_backend.client
    bucket = f"ops-{next(_ids)}"
    client.create_bucket(Bucket=bucket)
    for key, body in {"a.txt": b"alpha", "d/b.txt": b"bravo", "d/e/f": b"deep",
                      "clash": b"x", "clash/in": b"y"}.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    for var, value in moto_backend.env().items():
        monkeypatch.setenv(var, value)
    options = getattr(request, "param", {})
    cfg = Config(mountpoint=tmp_path / "mnt", sources=(parse_source(f"s3://{bucket}", "bkt"),),
                 cache_dir=tmp_path / "cache", endpoint_url=moto_backend.endpoint,
                 region="us-east-1", metadata_ttl=60,
                 read_only=options.get("read_only", False),
                 posix_metadata=options.get("posix_metadata", True))
    with ExitStack() as stack:
        yield build(cfg, stack)


DOTS = (b".", b"..")


class Collector:
    def __init__(self, capacity: int = 1000):
        self.capacity = capacity
        self.names: list[str] = []
        self.entries: dict[str, tuple[int, int, int]] = {}  # name -> (node id, d_ino, mode)
        self.offset = 0  # where the next readdir goes on
        self.dots: list[tuple[str, int, int]] = []  # (name, ino, offset) of "." and ".."


@pytest.fixture
def readdir_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    def reply(token: Collector, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if name in DOTS:  # counted apart (test_readdir_starts_with_dot_entries)
            token.dots.append((os.fsdecode(name), attrs.st_ino, next_id))
            token.offset = next_id
            return True
        if len(token.names) >= token.capacity:
            return False
        token.offset = next_id
        token.names.append(os.fsdecode(name))
        token.entries[os.fsdecode(name)] = (attrs.st_ino, dirent_ino(attrs), attrs.st_mode)
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)


async def lookup_path(ops, *names: str) -> pyfuse3.EntryAttributes:  # type: ignore[no-untyped-def]
    ino = ROOT_INODE
    attrs = None
    for name in names:
        attrs = await ops.lookup(ino, name.encode())
        ino = attrs.st_ino
    return attrs


async def test_lookup_getattr_read(parts: Components):
    ops = parts.ops
    attrs = await lookup_path(ops, "bkt", "d", "b.txt")
    assert attrs.st_size == 5 and attrs.st_mode & 0o777 == 0o644  # writable bucket source
    again = await lookup_path(ops, "bkt", "d", "b.txt")
    assert again.st_ino == attrs.st_ino                           # stable while remembered
    assert ops.inodes.get(attrs.st_ino).lookups == 2
    info = await ops.open(attrs.st_ino, os.O_RDONLY)
    assert await ops.read(info.fh, 0, 100) == b"bravo"
    assert info.keep_cache is False
    await ops.release(info.fh)
    info = await ops.open(attrs.st_ino, os.O_RDONLY)
    assert info.keep_cache is True                                # same ETag: keep page cache
    await ops.forget([(attrs.st_ino, 2)])
    assert ops.inodes.get(attrs.st_ino) is None


async def test_block_sizes_files_for_writes_directories_for_readdir(parts: Components):
    """A file's st_blksize is max_write (cp writes in pieces that size); a directory's is
    what glibc reads it in, since pyfuse3 zeroes a reply buffer of the size the kernel
    asks for at every readdir, and the kernel asks for glibc's."""
    assert (await lookup_path(parts.ops, "bkt", "d", "b.txt")).st_blksize == 1 << 20
    assert (await lookup_path(parts.ops, "bkt", "d")).st_blksize == ops_module.DIR_BLKSIZE
    assert 32 << 10 <= ops_module.DIR_BLKSIZE < 1 << 20  # glibc's minimum; not max_write


async def test_negative_lookup_is_cached_not_an_error(parts: Components,
                                                      monkeypatch: pytest.MonkeyPatch):
    """Cached by the kernel until the listing that lacks the name goes stale, not for a
    whole TTL from the lookup: a key added meanwhile showed to `ls` (the new listing) but
    not to `stat` (the negative entry), and `ls -l` printed `?????????`."""
    attrs = await lookup_path(parts.ops, "bkt", "missing")
    assert attrs.st_ino == 0 and 59 < attrs.entry_timeout <= 60  # the listing just made
    root_miss = await parts.ops.lookup(ROOT_INODE, b"nope")
    assert root_miss.st_ino == 0
    listed = ops_module.time.time()
    monkeypatch.setattr(ops_module.time, "time", lambda: listed + 45)  # the time module's
    later = await lookup_path(parts.ops, "bkt", "missing")
    assert later.st_ino == 0 and 14 < later.entry_timeout <= 15


def dirent_ino(attrs: pyfuse3.EntryAttributes) -> int:
    """The inode number the entry's dirent lists (`st_ino` reads the node id)."""
    assert dirent.NAME_ONLY and dirent._OFFSET is not None
    return ctypes.c_uint64.from_address(id(attrs) + dirent._OFFSET + 24).value


async def test_readdir_of_unknown_metadata_lists_names_only(parts: Components,
                                                           readdir_collector: None):
    """Entries whose POSIX metadata the first stat HEADs go out with node id 0: the
    kernel keeps no inode of them and the daemon makes none. Their dirent shows the
    inode the kernel already has, else UNKNOWN_INO; the first stat is a lookup."""
    ops = parts.ops
    d = await lookup_path(ops, "bkt")
    a = await lookup_path(ops, "bkt", "a.txt")
    before = len(ops.inodes)
    fh = await ops.opendir(d.st_ino)
    token = Collector()
    await ops.readdir(fh, 0, token)
    await ops.releasedir(fh)
    assert len(ops.inodes) == before
    assert token.entries == {
        "a.txt": (a.st_ino, a.st_ino, a.st_mode),  # HEADed by its lookup: known
        "clash": (0, dirent.UNKNOWN_INO, stat.S_IFDIR), "d": (0, dirent.UNKNOWN_INO, stat.S_IFDIR)}
    looked_up = await lookup_path(ops, "bkt", "d")
    assert looked_up.st_ino and looked_up.attr_timeout == pytest.approx(60, abs=1)
    assert len(ops.inodes) == before + 1
    held = ops.inodes.remember(ops.inodes.ensure(0, "clash", True))  # the kernel holds it
    fh = await ops.opendir(d.st_ino)
    token = Collector()
    await ops.readdir(fh, 0, token)
    await ops.releasedir(fh)
    assert token.entries["clash"] == (0, held.ino, stat.S_IFDIR)
    assert token.entries["d"] == (looked_up.st_ino, looked_up.st_ino, looked_up.st_mode)


async def test_readdir_hands_out_inodes_where_pyfuse3_is_not_recognised(
        parts: Components, readdir_collector: None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ops_module, "NAME_ONLY", False)
    ops = parts.ops
    d = await lookup_path(ops, "bkt")
    before = len(ops.inodes)
    fh = await ops.opendir(d.st_ino)
    token = Collector()
    await ops.readdir(fh, 0, token)
    await ops.releasedir(fh)
    assert len(ops.inodes) == before + 3
    assert all(node_id == d_ino != 0 for node_id, d_ino, _ in token.entries.values())


@pytest.mark.parametrize("parts", [{"posix_metadata": False}], indirect=True)
async def test_readdir_counts_only_accepted_entries(parts: Components, readdir_collector: None):
    ops = parts.ops
    d = await lookup_path(ops, "bkt")
    fh = await ops.opendir(d.st_ino)
    token = Collector(capacity=2)
    await ops.readdir(fh, 0, token)
    assert token.names == ["a.txt", "clash"]
    before = len(ops.inodes)
    token2 = Collector(capacity=10)
    await ops.readdir(fh, token.offset, token2)
    assert token2.names == ["d"] and token2.dots == []
    assert len(ops.inodes) == before + 1
    assert token2.entries["d"][:2] == (ops.inodes.find(0, "d", True).ino,) * 2
    await ops.releasedir(fh)
    clash = await lookup_path(ops, "bkt", "clash")
    assert clash.st_mode & 0o040000                                # the directory wins


@pytest.mark.parametrize("parts", [{"posix_metadata": False}], indirect=True)
async def test_readdir_sends_files_as_names_only_to_a_walk_that_does_not_stat_them(
        parts: Components, readdir_collector: None):
    """Known attributes go out for the files of a listing only while the walk looks its
    files up (fs/listingshape.py): the first file of a listing is a name only (node id 0),
    and once it went unlooked-up every file is, until one is looked up; a directory
    where that happened gets attributes for all. Directories always get theirs."""
    ops = parts.ops

    async def listing(*path: str) -> Collector:
        fh = await ops.opendir((await lookup_path(ops, *path)).st_ino)
        token = Collector()
        await ops.readdir(fh, 0, token)
        await ops.releasedir(fh)
        return token

    top = await listing("bkt")
    assert top.entries["a.txt"][:2] == (0, dirent.UNKNOWN_INO)    # the sentinel
    assert top.entries["clash"][0] and top.entries["d"][0]        # directories: attributes
    d = await listing("bkt", "d")                                 # a.txt was not looked up
    assert d.entries["b.txt"][:2] == (0, dirent.UNKNOWN_INO)
    assert d.entries["e"][0] != 0
    b = await lookup_path(ops, "bkt", "d", "b.txt")               # stat'ed after its listing
    assert b.st_ino and b.st_size == 5
    d = await listing("bkt", "d")
    assert d.entries["b.txt"] == (b.st_ino, b.st_ino, b.st_mode)
    top = await listing("bkt")
    assert top.entries["a.txt"][:2] == (0, dirent.UNKNOWN_INO)    # a sentinel again
    e = await listing("bkt", "d", "e")
    assert e.entries["f"][:2] == (0, dirent.UNKNOWN_INO)


async def test_readdir_starts_with_dot_entries(parts: Components, readdir_collector: None):
    """`ls -a` shows "." and ".." (s3fs and rclone send them): first, with the inodes of
    the directory and its parent, and a readdir resumed between them goes on right."""
    ops = parts.ops
    bucket = await lookup_path(ops, "bkt")
    d = await lookup_path(ops, "bkt", "d")
    fh = await ops.opendir(d.st_ino)
    whole = Collector()
    await ops.readdir(fh, 0, whole)
    assert whole.dots == [(".", d.st_ino, 1), ("..", bucket.st_ino, 2)]
    assert whole.names == ["b.txt", "e"]
    resumed = Collector()
    await ops.readdir(fh, 1, resumed)
    assert resumed.dots == [("..", bucket.st_ino, 2)] and resumed.names == ["b.txt", "e"]
    await ops.releasedir(fh)
    top = Collector()
    fh = await ops.opendir(ROOT_INODE)
    await ops.readdir(fh, 0, top)
    assert top.dots == [(".", ROOT_INODE, 1), ("..", ROOT_INODE, 2)]
    await ops.releasedir(fh)


@pytest.mark.parametrize("parts", [{"read_only": True}], indirect=True)
async def test_writes_are_erofs_when_read_only_and_nothing_but_fuseerror_escapes(
        parts: Components, monkeypatch: pytest.MonkeyPatch):
    ops = parts.ops
    d = await lookup_path(ops, "bkt")
    assert (await lookup_path(ops, "bkt", "a.txt")).st_mode & 0o222 == 0  # shown read-only
    for call in (ops.mkdir(d.st_ino, b"x", 0o755, None), ops.unlink(d.st_ino, b"a.txt", None),
                 ops.create(d.st_ino, b"n", 0o644, os.O_WRONLY, None)):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        assert info.value.errno == errno.EROFS
    f = await lookup_path(ops, "bkt", "a.txt")
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.open(f.st_ino, os.O_WRONLY)
    assert info.value.errno == errno.EROFS

    async def explode(*args: object) -> None:
        raise ZeroDivisionError("bug")
    monkeypatch.setattr(parts.root.get(0), "stat", explode)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getattr(f.st_ino)
    assert info.value.errno == errno.EIO
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getattr(987654)
    assert info.value.errno == errno.ESTALE


async def test_xattrs_and_control(parts: Components):
    ops = parts.ops
    f = await lookup_path(ops, "bkt", "d", "e", "f")
    names = await ops.listxattr(f.st_ino)
    assert set(names) == {b"user.s3.uri", b"user.s3.etag", b"user.s3fuse.cached", b"user.s3fuse.pinned"}
    assert await ops.getxattr(f.st_ino, b"user.s3fuse.pinned") == b"0"
    assert (await ops.getxattr(f.st_ino, b"user.s3.uri")).endswith(b"/d/e/f")
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getxattr(f.st_ino, b"user.nope")
    assert info.value.errno == pyfuse3.ENOATTR
    status = await ops.getxattr(ROOT_INODE, b"user.s3fuse.status")
    assert b'"link"' in status and b"testing" not in status     # never credentials


async def test_dot_and_dotdot_lookups(parts: Components):
    ops = parts.ops
    d = await lookup_path(ops, "bkt", "d")
    e = await ops.lookup(d.st_ino, b"e")
    assert (await ops.lookup(e.st_ino, b"..")).st_ino == d.st_ino
    assert (await ops.lookup(e.st_ino, b".")).st_ino == e.st_ino


async def test_writes_reach_open_readers_and_o_append_goes_at_the_end(parts: Components):
    """A read handle follows what this mount writes into its file (`tail -f`); an O_APPEND
    write goes at the daemon's end whatever offset the kernel computed from its size, and
    the kernel is told to drop what readers of the file cached (fs/coherence.py)."""
    ops = parts.ops
    ino = (await lookup_path(ops, "bkt", "a.txt")).st_ino
    reader = await ops.open(ino, os.O_RDONLY)
    assert await ops.read(reader.fh, 0, 100) == b"alpha"
    writer = await ops.open(ino, os.O_WRONLY | os.O_APPEND)
    assert writer.direct_io and ops.page_dropper.due == {ino}  # the readers' pages go
    ops.page_dropper.due.clear()
    assert await ops.write(writer.fh, 0, b"+1") == 2           # offset 0: the kernel's idea
    assert ops.page_dropper.due == {ino}
    assert await ops.read(reader.fh, 0, 100) == b"alpha+1"
    await ops.flush(writer.fh)
    await ops.release(writer.fh)
    assert await ops.read(reader.fh, 5, 100) == b"+1"
    second = await ops.open(ino, os.O_WRONLY | os.O_APPEND)
    assert await ops.write(second.fh, 3, b"+2") == 2
    await ops.release(second.fh)
    assert await ops.read(reader.fh, 0, 100) == b"alpha+1+2"
    await ops.release(reader.fh)
    fresh = await ops.open(ino, os.O_RDONLY)
    assert await ops.read(fresh.fh, 0, 100) == b"alpha+1+2"
    await ops.release(fresh.fh)


async def test_an_open_racing_a_rename_over_its_file_gets_one_whole_version(
        parts: Components, monkeypatch: pytest.MonkeyPatch):
    """A reader looked `f` up just before a write-then-rename replaced it (editors, pip,
    git): its open reached the old inode while the rename was moving the bytes, and read
    the new file through the old inode's page cache, cut at the old size. The open waits
    for the rename and, the inode having lost its name, reads the new file whole, past
    the page cache; a lookup racing the rename answers for the file the inode is.
    Now that open answers ESTALE, on which the kernel looks the path up again and opens
    the new file's own inode (through the page cache: it can be mapped shared, where a
    direct_io handle failed np.load(mmap_mode='r') with ENODEV)."""
    ops, bkt = parts.ops, (await lookup_path(parts.ops, "bkt")).st_ino
    for name, body in (("f", b"old"), ("t", b"the new version")):
        info, _ = await ops.create(bkt, name.encode(), 0o100644, os.O_WRONLY, None)
        await ops.write(info.fh, 0, body)
        await ops.flush(info.fh)
        await ops.release(info.fh)
    old_ino = (await ops.lookup(bkt, b"f")).st_ino
    started, go = trio.Event(), trio.Event()
    tree = ops._ns(ops._node(bkt))
    rename = tree.rename

    async def slow_rename(*args: Any, **kwargs: Any) -> Any:
        started.set()
        await go.wait()
        return await rename(*args, **kwargs)

    monkeypatch.setattr(tree, "rename", slow_rename)
    opened: list[pyfuse3.FileInfo] = []
    looked: list[pyfuse3.EntryAttributes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.rename, bkt, b"t", bkt, b"f", 0, None)
        await started.wait()

        async def open_old() -> None:
            with pytest.raises(pyfuse3.FUSEError) as stale:
                await ops.open(old_ino, os.O_RDONLY)
            assert stale.value.errno == errno.ESTALE
            # the kernel's retry: the path looked up again, then its inode opened
            again = await ops.lookup(bkt, b"f")
            opened.append(await ops.open(again.st_ino, os.O_RDONLY))

        async def look() -> None:
            looked.append(await ops.lookup(bkt, b"f"))
        nursery.start_soon(open_old)
        nursery.start_soon(look)
        await trio.sleep(0.05)
        assert not opened and not looked  # they wait for the rename
        go.set()
    [info], [entry] = opened, looked
    assert not info.direct_io  # the new file's own inode: its page cache is its own
    assert await ops.read(info.fh, 0, 100) == b"the new version"
    assert entry.st_size == len(b"the new version") and entry.st_ino != old_ino
    await ops.release(info.fh)
    reader = SimpleNamespace(pid=4242, uid=0, gid=0)
    with pytest.raises(pyfuse3.FUSEError) as stale:  # a path walk ended before the rename
        await ops.open(old_ino, os.O_RDONLY, reader)
    assert stale.value.errno == errno.ESTALE
    # the kernel's retry met another rename: past the page cache, never the error again
    late = await ops.open(old_ino, os.O_RDONLY, reader)
    assert late.direct_io and await ops.read(late.fh, 0, 100) == b"the new version"
    await ops.release(late.fh)


def test_stale_opens_tell_the_kernels_retry_from_a_first_try() -> None:
    from s3fuse.fs.renames import RETRY_WINDOW, StaleOpens
    now = [100.0]
    opens = StaleOpens(clock=lambda: now[0])
    assert opens.first(7, 1, "f")            # answered ESTALE
    assert not opens.first(7, 1, "f")        # its retry: opened past the page cache
    assert opens.first(7, 1, "f")            # a new try later: ESTALE again
    assert opens.first(8, 1, "f") and opens.first(7, 1, "g")  # another process, another path
    now[0] += RETRY_WINDOW + 0.1
    assert opens.first(7, 1, "f")            # too late to be a retry
    opens.opened(7, 1, "f")                  # the retry found the new file's inode
    assert opens.first(7, 1, "f")            # the next open meeting a rename: a first try


async def test_log_lines_name_paths_with_single_slashes(parts: Components):
    """A name under a source's root was logged as `/bkt//name`."""
    ops = parts.ops
    bkt = (await lookup_path(ops, "bkt")).st_ino
    d = (await lookup_path(ops, "bkt", "d")).st_ino
    assert ops.describe("lookup", bkt, b"name") == "/bkt/name"
    assert ops.describe("getattr", bkt) == "/bkt"
    assert ops.describe("lookup", d, b"b.txt") == "/bkt/d/b.txt"
    assert ops.describe("getattr", ROOT_INODE) == "/"


async def test_the_kernel_keeps_an_entry_for_what_is_left_of_its_ttl(parts: Components):
    """A readdirplus or lookup reply gave the kernel a full metadata TTL whatever the age
    of the listing it came from: a change made elsewhere showed up to twice the TTL late
    (`ls -l` every 0.1 s, TTL 3: 5.8 s; a helper's finding)."""
    import dataclasses
    import time as clock
    ops = parts.ops
    looked = await lookup_path(ops, "bkt", "a.txt")
    ttl = ops.cfg.metadata_ttl
    assert looked.entry_timeout == pytest.approx(ttl, abs=1)  # just listed: all of it
    node = ops._node(looked.st_ino)
    entry = await ops._entry(node)
    aged = dataclasses.replace(entry, checked_at=clock.time() - (ttl - 2))
    assert ops._ttl_left(node, aged) == pytest.approx(2, abs=0.5)
    assert ops._ttl_left(node, dataclasses.replace(entry, checked_at=clock.time() - 2 * ttl)) == 0
    assert ops._ttl_left(node, dataclasses.replace(aged, etag="")) == ttl  # our own version
