"""Uploads of an older incarnation of a name landing after a newer one (MemoryStore, one
upload held in the store until the newer incarnation is in S3).

A file `n` and a directory `n` are two keys (`n` and its marker `n/`) with one name in a
listing, and the queue orders the jobs of one key only: pjdfstest chmod/00.t (create,
unlink, mkdir, rmdir and mknod of one name, under CPU load) had the removal of the old
directory's marker land after the upload of the new file, and the file vanished for
good (chmod, stat and unlink: ENOENT), and the same with the kinds swapped.
"""
from __future__ import annotations

import contextlib
import stat
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
import trio

from s3fuse.errors import NotFound, RemoteError
from s3fuse.cache.overlay import Overlay
from s3fuse.posix import Posix
from s3fuse.store.memory import MemoryStore
from s3fuse.store.protocol import ListPage
from s3fuse.tree.bucket import BucketTree
from s3fuse.tree.contract import AttrChanges
from s3fuse.upload.queue import UploadQueue
from s3fuse.upload.uploader import UploadResult
from s3fuse.upload.writeback import WriteBack
from tests.support.bucketrig import bucket_tree, posix
from tests.test_upload import upload_queue
from tests.test_upload_posix import offline

B = "bkt"


class HeldStore(MemoryStore):
    """A DeleteObject of `held`, or a copy of `held` onto itself (its new metadata), waits
    (in its worker thread) until `release` is set; `listing` runs before each listing."""

    def __init__(self) -> None:
        super().__init__()
        self.held = ""
        self.waiting = threading.Event()
        self.release = threading.Event()
        self.listing: Callable[[str], None] = lambda prefix: None

    def _hold(self, key: str) -> None:
        if key == self.held:
            self.waiting.set()
            self.release.wait(10)

    def delete_object(self, bucket: str, key: str, *, if_match: str | None = None) -> None:
        self._hold(key)
        super().delete_object(bucket, key, if_match=if_match)

    def copy_object(self, bucket: str, source_key: str, key: str, etag: str,
                    **kwargs: Any) -> str:
        if source_key == key:
            self._hold(key)
        return super().copy_object(bucket, source_key, key, etag, **kwargs)

    def list_pages(self, bucket: str, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        self.listing(prefix)
        return super().list_pages(bucket, prefix, delimiter)


@pytest.fixture
def store() -> HeldStore:
    memory = HeldStore()
    memory.create_bucket(B)
    return memory


@pytest.fixture
async def rig(tmp_path: Path, store: HeldStore) -> AsyncIterator[tuple[BucketTree, UploadQueue]]:
    async with bucket_tree(tmp_path, store, B) as made:
        yield made


async def landed(queue: UploadQueue, key: str) -> None:
    """Wait until nothing of `key` is pending any more."""
    with trio.fail_after(10):
        while queue.pending(B, key):
            await queue.changed().wait()


async def removal_held(store: HeldStore, key: str) -> None:
    store.held = key
    with trio.fail_after(10):
        await trio.to_thread.run_sync(store.waiting.wait)


async def make_file(tree: BucketTree) -> None:
    _, _, handle = await tree.create("", "n", posix(stat.S_IFREG))
    await handle.close()


async def test_an_old_directory_removed_after_a_new_file_landed_leaves_the_file(
        rig: tuple[BucketTree, UploadQueue], store: HeldStore) -> None:
    tree, queue = rig
    assert await tree.listdir("") == []  # a fresh stored listing: lookups trust it
    await tree.mkdir("", "n", posix(stat.S_IFDIR, 0o755))
    await landed(queue, "n/")
    await tree.rmdir("", "n")
    await removal_held(store, "n/")  # the marker's removal is on its way
    await make_file(tree)
    await landed(queue, "n")  # the new file is in S3, the overlay let go of it
    store.release.set()
    await landed(queue, "n/")
    assert not (await tree.stat("n")).is_dir
    await tree.setattr("n", AttrChanges(mode=0o111, posix=posix(stat.S_IFREG, 0o111)), None)
    chmodded = (await tree.stat("n")).posix  # chmod/00.t check 63: ENOENT here
    assert chmodded is not None and chmodded.mode == stat.S_IFREG | 0o111


async def test_an_old_file_removed_after_a_new_directory_landed_leaves_the_directory(
        rig: tuple[BucketTree, UploadQueue], store: HeldStore) -> None:
    tree, queue = rig
    assert await tree.listdir("") == []  # a fresh stored listing: lookups trust it
    await make_file(tree)
    await landed(queue, "n")
    await tree.unlink("", "n")
    await removal_held(store, "n")  # the file's removal is on its way
    await tree.mkdir("", "n", posix(stat.S_IFDIR, 0o755))
    await landed(queue, "n/")
    store.release.set()
    await landed(queue, "n")
    assert (await tree.stat("n")).is_dir
    assert [e.name for e in await tree.listdir("")] == ["n"]
    await tree.rmdir("", "n")  # found, and removed


@pytest.mark.parametrize("when", ["listing", "journalling"])
async def test_a_directory_whose_marker_lands_during_its_rename_keeps_its_owner(
        rig: tuple[BucketTree, UploadQueue], store: HeldStore, when: str) -> None:
    """The directory's pending marker lands (its overlay cleared) while the rename lists
    the keys below it, or while it journals the new marker: the new marker keeps the
    owner (pjdfstest rename/09.t, 1 run in 4: a second marker was made from the cleared
    overlay, with no metadata: root's)."""
    tree, queue = rig
    assert await tree.listdir("") == []
    await tree.mkdir("", "d", posix(stat.S_IFDIR, 0o755, owner=65534))
    overlay = tree._pending._overlay
    if when == "listing":
        store.listing = lambda prefix: overlay.clear(B, "d/") if prefix == "d/" else None
    else:
        land_first(queue, lambda: overlay.clear(B, "d/"))
    await tree.rename("", "d", "", "e")
    moved = (await tree.stat("e")).posix
    assert moved is not None and (moved.uid, moved.mode) == (65534, stat.S_IFDIR | 0o755)
    await landed(queue, "e/")
    headers = store.head(B, "e/").metadata
    assert headers is not None and headers.get("uid") == "65534"


async def chmod_held(tree: BucketTree, store: HeldStore) -> None:
    """d/f in S3, listed, then chmodded: its copy onto itself held by the store."""
    store.put_object(B, "d/", b"")
    store.put_object(B, "d/f", b"bytes")
    assert [e.name for e in await tree.listdir("d")] == ["f"]
    store.held = "d/f"
    await tree.setattr("d/f", AttrChanges(mode=0o600, posix=posix(stat.S_IFREG, 0o600)), None)
    with trio.fail_after(10):
        await trio.to_thread.run_sync(store.waiting.wait)  # the chmod's copy is held


async def test_a_file_with_new_metadata_pending_moves_with_its_directory(
        rig: tuple[BucketTree, UploadQueue], store: HeldStore) -> None:
    """A file whose chmod is still on its way (a copy onto itself) is moved with its
    directory, with the new mode (it was left behind under the old name)."""
    tree, queue = rig
    await chmod_held(tree, store)
    await tree.rename("", "d", "", "e")
    store.release.set()
    assert [e.name for e in await tree.listdir("e")] == ["f"]
    mode = (await tree.stat("e/f")).posix
    assert mode is not None and mode.mode == stat.S_IFREG | 0o600
    await landed(queue, "d/f")
    await landed(queue, "e/f")
    assert store.head(B, "e/f").metadata.get("mode") == str(stat.S_IFREG | 0o600)
    with pytest.raises(NotFound):
        store.head(B, "d/f")


async def test_a_file_removed_while_its_directory_is_renamed_stays_removed(
        rig: tuple[BucketTree, UploadQueue], store: HeldStore) -> None:
    """A pending key below the directory (a `chmod` on its way) removed while the rename
    lists S3 is not moved: it was copied to the new name, the removed file back again."""
    tree, _ = rig
    await chmod_held(tree, store)
    overlay = tree._pending._overlay
    store.listing = lambda prefix: overlay.delete(B, "d/f") if prefix == "d/" else None
    await tree.rename("", "d", "", "e")
    store.release.set()
    assert await tree.listdir("e") == []
    assert "e/f" not in store.objects(B)


@contextlib.asynccontextmanager
async def queued_file(tmp_path: Path, data: bytes,
                      meta: Posix) -> AsyncIterator[tuple[UploadQueue, WriteBack]]:
    """A WriteBack whose key "old" waits in the (offline) queue with `data` and `meta`."""
    memory = MemoryStore()
    memory.create_bucket(B)
    async with upload_queue(tmp_path, memory, start=False) as queue:
        writes = WriteBack(queue, queue.staging, Overlay())
        await writes.start()
        offline(memory)
        staging_id, path = await trio.to_thread.run_sync(queue.staging.create)
        await trio.to_thread.run_sync(path.write_bytes, data)
        await queue.submit(B, "old", staging_id, None, meta)
        writes.overlay.file(B, "old", len(data), posix=meta)
        yield queue, writes


def land_first(queue: UploadQueue, landing: Callable[[], None]) -> None:
    """`landing` happens just before the queue journals the next submitted job."""
    submit = queue.submit

    async def landing_first(*args: object) -> int:
        landing()
        return await submit(*args)  # type: ignore[arg-type]

    queue.submit = landing_first  # type: ignore[method-assign]


async def test_an_older_job_of_the_target_landing_during_a_rename_keeps_the_moved_file_shown(
        tmp_path: Path) -> None:
    """rename of a file whose bytes wait in the queue: the target shows the moved file and
    awaits its journal row; an older job of the target (its removal) finishing meanwhile
    must not clear it (the name vanished until the upload landed)."""
    async with queued_file(tmp_path, b"bytes", posix(stat.S_IFREG)) as (queue, writes):
        # a removal of "new", done now
        land_first(queue, lambda: writes._uploaded(B, "new", UploadResult("")))
        assert await writes.move_local(B, "old", "new")
        change = writes.overlay.get(B, "new")
        assert change is not None and not change.deleted and change.size == 5


async def test_an_older_put_of_the_target_landing_during_a_rename_leaves_the_moved_bytes(
        tmp_path: Path) -> None:
    """The target's older upload (a file created there, then renamed over) lands while the
    moved version is being journalled: it must not give the moved change its ETag (reads
    and stats went to the old object: pjdfstest rename/09.t saw the old file's type, EIO)."""
    moved = posix(stat.S_IFLNK, 0o777)
    async with queued_file(tmp_path, b"test", moved) as (queue, writes):
        land_first(queue, lambda: writes._uploaded(
            B, "new", UploadResult("etag-of-the-old-file", size=0)))
        assert await writes.move_local(B, "old", "new")
        change = writes.overlay.get(B, "new")
        assert change is not None and change.etag == "" and change.posix == moved


async def test_a_rename_whose_source_lands_while_it_is_cloned_keeps_its_metadata(
        tmp_path: Path) -> None:
    """The source's upload lands (and its landing clears the overlay) while the rename
    clones its staging file: the moved change keeps the source's metadata (it showed no
    type and no owner: a symlink came back as a regular file of root's)."""
    moved = Posix(mode=stat.S_IFLNK | 0o777, uid=65534, gid=65534, mtime_ns=1, ctime_ns=2,
                  atime_ns=1)
    async with queued_file(tmp_path, b"test", moved) as (queue, writes):
        clone = queue.staging.clone

        def landing_while_cloned(name: str) -> tuple[str, Path]:
            writes.overlay.clear(B, "old")
            return clone(name)

        queue.staging.clone = landing_while_cloned  # type: ignore[method-assign]
        assert await writes.move_local(B, "old", "new")
        change = writes.overlay.get(B, "new")
        assert change is not None and change.posix == moved


class OverlapStore(MemoryStore):
    """Records a directory marker stored while an object below that directory is (PUT or
    copy): SeaweedFS then loses the marker (it makes the missing parent over it)."""

    def __init__(self) -> None:
        super().__init__()
        self.latency_writes = 0.06  # past burst.BURST_GAP: its removals make no burst
        self._writing: dict[str, int] = {}
        self._guard = threading.Lock()
        self.overlaps: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def _storing(self, key: str) -> Iterator[None]:
        parent = key.rstrip("/").rpartition("/")[0] + "/"
        with self._guard:
            for other in self._writing:
                other_parent = other.rstrip("/").rpartition("/")[0] + "/"
                if other == parent or other_parent == key:
                    self.overlaps.append((other, key))
            self._writing[key] = self._writing.get(key, 0) + 1
        try:
            time.sleep(self.latency_writes)
            yield
        finally:
            with self._guard:
                self._writing[key] -= 1
                if not self._writing[key]:
                    del self._writing[key]

    def put_object(self, bucket: str, key: str, body: Any, **kwargs: Any) -> str:
        with self._storing(key):
            return super().put_object(bucket, key, body, **kwargs)

    def copy_object(self, bucket: str, source_key: str, key: str, etag: str,
                    **kwargs: Any) -> str:
        with self._storing(key):
            return super().copy_object(bucket, source_key, key, etag, **kwargs)


async def test_a_directory_marker_is_never_stored_beside_an_object_below_it(
        tmp_path: Path) -> None:
    """`mkdir` then files written in it, and a directory renamed key by key (its copies
    run in the rename itself, and its new markers are queued after them): no marker goes
    to S3 while an object of its directory does (tests/test_write_mount.py lost `newdir/`
    on SeaweedFS once). The `mkdir` half fails without the queue's rule, the rename half
    without the rename queueing its markers last (its copies are 60 ms apart, as over a
    network: no burst of removals holds the marker's upload back)."""
    store = OverlapStore()
    store.create_bucket(B)
    moved = ["old/", "old/sub/", "old/sub/y"] + [f"old/x{i}" for i in range(8)]
    for key in moved:  # 8 copies of 60 ms, each a removal: no burst holds the uploads
        store.put_object(B, key, b"" if key.endswith("/") else b"bytes")
    async with bucket_tree(tmp_path, store, B) as (tree, queue):
        await tree.mkdir("", "d", posix(stat.S_IFDIR, 0o755))
        for name in ("a", "b", "c"):
            _, _, handle = await tree.create("d", name, posix(stat.S_IFREG))
            await handle.close()
        await tree.rename("", "old", "", "new")
        for key in ["d/", "d/a", "d/b", "d/c"] + [k.replace("old/", "new/") for k in moved]:
            await landed(queue, key)
    assert store.overlaps == []
    for key in ["d/"] + [k.replace("old/", "new/") for k in moved]:
        store.head(B, key)  # NotFound if lost


class AnsweredEarlyStore(MemoryStore):
    """A listing whose answer S3 gave before `listing(prefix)` ran: its pages are read
    first (as S3 answered), then the hook runs, then they are handed over."""

    def __init__(self) -> None:
        super().__init__()
        self.listing: Callable[[str], None] = lambda prefix: None

    def list_pages(self, bucket: str, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        pages = list(super().list_pages(bucket, prefix, delimiter))
        self.listing(prefix)
        return iter(pages)


async def test_a_listing_answered_before_the_marker_landed_keeps_the_directory_owner(
        tmp_path: Path) -> None:
    """`mkdir`, `chown`, `chmod 1777` (one queued marker job), then a listing of the
    directory that S3 answered just before the marker arrived, stored just after its
    landing was learned: it cannot tell that the directory has no marker. It used to
    record "no marker, no headers", and the directory showed the mount's defaults (root,
    0755) until its next listing: pjdfstest-paced renames into it failed with EACCES."""
    store = AnsweredEarlyStore()
    store.create_bucket(B)
    async with bucket_tree(tmp_path, store, B) as (tree, queue):
        assert await tree.listdir("") == []
        await tree.mkdir("", "d", posix(stat.S_IFDIR, 0o1777, owner=65534))
        seen: list[str] = []

        def land_first(prefix: str) -> None:
            if prefix == "d/":
                seen.append(prefix)
                trio.from_thread.run(landed, queue, "d/")
        store.listing = land_first
        assert await tree.listdir("d") == []
        assert seen == ["d/"]  # the directory was listed, answered before the landing
        shown = (await tree.stat("d")).posix
        assert shown is not None and (shown.uid, shown.mode) == (65534, stat.S_IFDIR | 0o1777)
    assert store.head(B, "d/").metadata.get("uid") == "65534"


@pytest.mark.parametrize("remove", ["unlink", "rename over"])
async def test_a_close_journalling_while_its_name_is_removed_succeeds_and_stays_removed(
        rig: tuple[BucketTree, UploadQueue], store: HeldStore,
        monkeypatch: pytest.MonkeyPatch, remove: str) -> None:
    """`>> f` closing while another process ran `rm f` (or renamed a file over it): the
    removal unlinked the file in the middle of its close's journalling, the close failed
    with EIO (IllegalTransition) and the version, journalled after the removal, landed
    as `f.s3fuse-conflict-*` (a helper's run: ~30 EIO and 2 conflict copies in 10 s)."""
    tree, queue = rig
    entered, go = trio.Event(), trio.Event()
    submit = queue.submit

    async def held_submit(bucket: str, key: str, *args: Any, **kwargs: Any) -> int:
        if key == "f":
            entered.set()
            await go.wait()
        return await submit(bucket, key, *args, **kwargs)

    monkeypatch.setattr(queue, "submit", held_submit)
    _, _, handle = await tree.create("", "f", posix(stat.S_IFREG))
    await handle.write(0, b"appended\n")
    if remove == "rename over":
        _, _, other = await tree.create("", "t", posix(stat.S_IFREG))
        await other.write(0, b"new\n")
        await other.close()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle.close)  # flush and release: the close of `>> f`
        await entered.wait()
        if remove == "unlink":
            nursery.start_soon(tree.unlink, "", "f")
        else:
            nursery.start_soon(tree.rename, "", "t", "", "f")
        await trio.sleep(0.05)  # the removal waits for the close's journalling
        go.set()
    await landed(queue, "f")
    await landed(queue, "t")
    in_s3 = store.objects(B)
    assert not any("conflict" in key for key in in_s3), sorted(in_s3)
    if remove == "unlink":
        assert "f" not in in_s3
    else:
        assert sorted(in_s3) == ["f"] and in_s3["f"] == b"new\n"


async def names(tree: BucketTree, path: str) -> list[str]:
    return sorted(entry.name for entry in await tree.listdir(path))


async def test_a_directory_rename_cut_short_leaves_both_trees_listed_again(
        rig: tuple[BucketTree, UploadQueue], store: HeldStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon killed in the middle of `mv src dst` (or an error part-way) left S3 with
    both trees half-moved, and the stored listings showed `src` whole and no `dst` until
    the metadata TTL: the copies made looked lost. The listings go stale first."""
    tree, _ = rig
    for i in range(6):
        store.put_object(B, f"src/x{i}", f"file {i}".encode())
    assert await names(tree, "") == ["src"] and len(await names(tree, "src")) == 6
    copied = 0
    copy = store.copy_object

    def dying_copy(bucket: str, source_key: str, key: str, etag: str, **kwargs: Any) -> str:
        nonlocal copied
        if copied == 3:
            raise RemoteError("the daemon is killed here")
        copied += 1
        return copy(bucket, source_key, key, etag, **kwargs)

    monkeypatch.setattr(store, "copy_object", dying_copy)
    with pytest.raises(RemoteError):
        await tree.rename("", "src", "", "dst")
    assert await names(tree, "") == ["dst", "src"]
    moved, left = await names(tree, "dst"), await names(tree, "src")
    assert len(moved) == 3 and sorted(moved + left) == [f"x{i}" for i in range(6)]
