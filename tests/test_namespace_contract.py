"""The namespace contract (tree/base.py): one protocol, refusals inherited, nothing probed.

Every namespace answers every operation the kernel can ask for; read-only ones refuse
changes through ReadOnlyNamespace (EROFS; the mount root: EPERM); what no namespace
does answers once (hard links: EPERM), and a bucket refuses the attributes it does not
store (reserved names: EPERM, other namespaces: ENOTSUP). The FUSE adapter asks the
namespace for the cached and pinned state instead of opening a handle, and closes every
handle it opened.
"""
from __future__ import annotations

import ast
import errno
import inspect
import os
from pathlib import Path
from typing import Any, Callable

import pyfuse3
import pytest
import trio

import s3fuse.fs.ops
import s3fuse.tree.root
from s3fuse.config import Config, parse_manifest, parse_source
from s3fuse.errors import S3FuseError
from s3fuse.fs.inodes import ROOT_INODE
from s3fuse.fs.ops import S3Operations
from s3fuse.model import Entry, Ref
from s3fuse.posix import Posix
from s3fuse.tree.contract import AttrChanges, Namespace, ReadOnlyNamespace
from s3fuse.tree.sources import SnapshotDir
from s3fuse.tree.bucket import BucketTree, ReadOnlyBucketTree
from s3fuse.tree.manifest import ManifestTree
from s3fuse.tree.root import MountRoot, RootTree

SOURCES = Path(s3fuse.fs.ops.__file__).parent


def bucket(cls: type[BucketTree] = BucketTree) -> BucketTree:
    return cls(parse_source("s3://bkt"), None, None, None, ttl=60,  # type: ignore[arg-type]
               list_limiter=trio.CapacityLimiter(1))


def manifest(tmp_path: Path) -> ManifestTree:
    return ManifestTree(parse_manifest("s3://bkt/m/manifest.jsonl"), None, None, tmp_path,  # type: ignore[arg-type]
                        ttl=60, limiter=trio.CapacityLimiter(1), shards=None)  # type: ignore[arg-type]


FILE = Posix(mode=0o100644, uid=0, gid=0, mtime_ns=1, ctime_ns=1, atime_ns=1)


def changes(ns: Namespace, ref: Ref) -> list[Callable[[], Any]]:
    """Every change the kernel can ask of a namespace, on `ref` (a directory)."""
    return [lambda: ns.create(ref, "n", FILE), lambda: ns.open_write(ref, False),
            lambda: ns.setattr(ref, AttrChanges(size=0), None),
            lambda: ns.setattr(ref, AttrChanges(mtime_ns=1, posix=FILE), None),
            lambda: ns.mkdir(ref, "d", FILE.replace(mode=0o40755)), lambda: ns.unlink(ref, "f"),
            lambda: ns.rmdir(ref, "d"), lambda: ns.rename(ref, "a", ref, "b"),
            lambda: ns.symlink(ref, "l", "t", FILE.replace(mode=0o120777)),
            lambda: ns.mknod(ref, "p", FILE.replace(mode=0o10644)), lambda: ns.link(ref, ref, "h"),
            lambda: ns.setxattr(ref, "user.x", b"1", FILE.with_xattr("user.x", b"1")),
            lambda: ns.removexattr(ref, "user.x", FILE)]


async def errno_of(call: Callable[[], Any]) -> int:
    with pytest.raises(S3FuseError) as info:
        await call()
    return info.value.errno


def test_every_namespace_implements_the_whole_contract():
    for cls in (BucketTree, ReadOnlyBucketTree, ManifestTree, MountRoot):
        assert issubclass(cls, Namespace) and not inspect.isabstract(cls), cls
    for cls in (ReadOnlyBucketTree, ManifestTree, MountRoot):
        assert issubclass(cls, ReadOnlyNamespace) and not cls.__dict__.get("create"), cls


async def test_read_only_namespaces_refuse_every_change(tmp_path: Path):
    root = MountRoot(RootTree([], store=None, meta=None, ttl=60))  # type: ignore[arg-type]
    for ns, ref, code in ((bucket(ReadOnlyBucketTree), "", errno.EROFS),
                          (manifest(tmp_path), 0, errno.EROFS), (root, "", errno.EPERM)):
        assert not ns.writable or ns is root
        for call in changes(ns, ref):
            assert await errno_of(call) == code, (ns, call)
        # owner and mode: refused as the rest (chmod on a read-only fs: EROFS); atime: nothing
        assert await errno_of(lambda: ns.setattr(ref, AttrChanges(mode=0o600), None)) == code
        await ns.setattr(ref, AttrChanges(atime_ns=5), None)


async def test_what_a_bucket_does_not_store_is_refused_before_anything_is_asked():
    ns = bucket()
    assert ns.writable
    for call, code in ((lambda: ns.link("f", "", "h"), errno.EPERM),
                       (lambda: ns.setxattr("f", "trusted.x", b"1", FILE), errno.ENOTSUP),
                       (lambda: ns.setxattr("f", "security.x", b"1", FILE), errno.ENOTSUP),
                       (lambda: ns.setxattr("f", 'user.a,"b', b"1", FILE), errno.EINVAL)):
        assert await errno_of(call) == code, call


async def test_a_change_of_a_computed_attribute_is_accepted_and_changes_nothing():
    """`cp -a`, `mv` and `rsync -X` copy or remove the computed attributes listxattr shows:
    accepted, nothing asked or stored (the namespace has no store here: any call would fail)."""
    ns = bucket()
    for name in ("user.s3.uri", "user.s3.etag", "user.s3fuse.cached", "user.s3fuse.pinned"):
        await ns.setxattr("f", name, b"s3://elsewhere/x", FILE)
        await ns.removexattr("f", name, FILE)


def test_no_operation_is_discovered_by_probing():
    for path in (*SOURCES.glob("*.py"), Path(s3fuse.tree.root.__file__)):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("hasattr", "getattr"), f"{path.name}:{node.lineno}"


class Handle:
    def __init__(self, log: list[str]):
        self.size, self.version, self._log = 4, "e1", log

    async def read(self, offset: int, size: int) -> bytes:
        return b"data"[offset:offset + size]

    async def fsync(self) -> None:
        self._log.append("fsync")

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None:
        progress(self.size)

    async def close(self) -> None:
        self._log.append("close")


class OneFile(ReadOnlyNamespace):
    """A read-only namespace holding one file "f", recording what the adapter asks."""

    name = "one"
    root: Ref = ""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def lookup(self, ref: Ref, name: str) -> tuple[Ref, Entry] | None:
        return ("f", Entry("f", False, 4, 1, "e1")) if name == "f" else None

    async def opendir(self, ref: Ref) -> SnapshotDir:
        return SnapshotDir([("f", Entry("f", False, 4, 1, "e1"))])

    async def stat(self, ref: Ref) -> Entry:
        return Entry("", True) if ref == "" else Entry("f", False, 4, 1, "e1")

    async def open(self, ref: Ref) -> Handle:
        self.calls.append("open")
        return Handle(self.calls)

    def parent(self, ref: Ref) -> Ref:
        return ""

    def describe(self, ref: Ref) -> str:
        return str(ref)

    async def cached(self, ref: Ref) -> bool:
        self.calls.append("cached")
        return True

    async def xattrs(self, ref: Ref) -> dict[str, bytes]:
        return {"user.s3.uri": f"s3://one/{ref}".encode()}


async def test_the_adapter_asks_state_of_the_namespace_and_closes_every_handle(tmp_path: Path):
    ns = OneFile()
    tree = RootTree([ns], store=None, meta=None, ttl=60)  # type: ignore[arg-type]
    tree.use_pins(lambda path: path == "one/f")
    ops = S3Operations(tree, Config(mountpoint=tmp_path / "mnt", cache_dir=tmp_path / "cache"))
    top = await ops.lookup(ROOT_INODE, b"one")
    f = await ops.lookup(top.st_ino, b"f")
    assert f.st_mode & 0o222 == 0                                  # read-only: shown so
    for _ in range(3):
        assert await ops.getxattr(f.st_ino, b"user.s3fuse.cached") == b"1"
        assert await ops.getxattr(f.st_ino, b"user.s3fuse.pinned") == b"1"
    assert ns.calls == ["cached"] * 3                              # no handle was opened
    assert set(await ops.listxattr(f.st_ino)) == {b"user.s3.uri", b"user.s3fuse.cached",
                                                  b"user.s3fuse.pinned"}
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.open(f.st_ino, os.O_WRONLY)
    assert info.value.errno == errno.EROFS
    ns.calls.clear()
    info = await ops.open(f.st_ino, os.O_RDONLY)
    assert await ops.read(info.fh, 0, 10) == b"data"
    await ops.fsync(info.fh, False)
    await ops.flush(info.fh)                                       # a reader: nothing to queue
    await ops.release(info.fh)
    assert ns.calls == ["open", "fsync", "close"]
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.mkdir(ROOT_INODE, b"x", 0o755, None)              # the root: EPERM
    assert info.value.errno == errno.EPERM
