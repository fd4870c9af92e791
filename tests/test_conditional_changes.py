"""Removals and renames never destroy a version written in S3 meanwhile by someone else,
also on servers that ignore conditional headers; multipart cleanup aborts only the
uploads this mount recorded. Over the in-memory store (fast), the condition probe also
over moto, and the offline `rm` replay through a real mount."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any, AsyncIterator, BinaryIO, TypeVar

import pyfuse3
import pytest
import trio

from s3fuse.daemon import Components
from s3fuse.db import Database, Schema
from s3fuse.errors import Offline
from s3fuse.posix import Posix, from_headers
from s3fuse.store.memory import MemoryStore
from s3fuse.upload import Journal
from s3fuse.upload.conditions import PROBE_NAME, Capability, ConditionProbe
from s3fuse.upload.journal import UNKNOWN, _version_1
from tests.test_fake_stack import B, listdir, read_file, readdir_replies, running, write_file
from tests.test_namespace_posix import Ctx, Fields
from tests.test_ops import lookup_path
from tests.test_queue_unit import until
from tests.test_store_contract import moto_store
from tests.test_upload import make_store, upload_queue, write
from tests.test_write_mount import body, keys, sync


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


__all__ = ["readdir_replies"]  # the fake stack's readdir replies, for this module too
CONDITIONS = ["honour", "ignore", "refuse"]
S = TypeVar("S", bound=MemoryStore)


@pytest.fixture(params=CONDITIONS)
def conditions(request: pytest.FixtureRequest) -> str:
    """How the server answers conditional headers (MemoryStore's fault modes)."""
    return request.param


@pytest.fixture
def store(conditions: str) -> MemoryStore:
    memory = MemoryStore(conditions=conditions)  # type: ignore[arg-type]
    memory.create_bucket(B)
    for key, data in {"a.txt": b"alpha", "d/b.txt": b"bravo", "d/e/f": b"deep"}.items():
        memory.put_object(B, key, data)
    return memory


@pytest.fixture
async def parts(tmp_path: Path, store: MemoryStore) -> AsyncIterator[Components]:
    async for components in running(tmp_path, store):
        await listdir(components, B)
        await listdir(components, B, "d")  # what the user saw: the ETags of this listing
        # the listings asked for ahead finished: none answers after a test takes S3 away
        # (a late success would bring the link back online, and an upload meant to be
        # held offline would be tried, kept as sent, and never superseded)
        assert (await components.control.idle.wait(10))["idle"]
        yield components


def offline_once(store: MemoryStore, operation: str, key: str) -> None:
    """The next `operation` on `key` finds S3 gone, and it stays gone until reachable again."""
    def gone(what: str) -> Offline:
        store.reachable = False
        return Offline(f"{what}: S3 unreachable (injected)")
    store.fail(operation, error=gone, prefix=key)


async def back_online(parts: Components, store: MemoryStore) -> dict[str, Any]:
    store.reachable = True
    return await parts.writes.queue.sync(timeout=10)


async def test_offline_rm_replayed_after_a_newer_version_keeps_it(
        parts: Components, store: MemoryStore, caplog: Any) -> None:
    store.reachable = False
    root = (await lookup_path(parts.ops, B)).st_ino
    await parts.ops.unlink(root, b"a.txt", None)          # journalled while offline
    assert await listdir(parts, B) == ["d"]
    newer = store.replace(B, "a.txt", b"theirs, newer")    # someone else, meanwhile
    status = await back_online(parts, store)
    assert store.objects(B)["a.txt"] == b"theirs, newer"
    [event] = status["conflicts"]
    assert event["kind"] == "kept-remote" and event["uri"] == f"s3://{B}/a.txt"
    assert event["conflict_uri"] is None and status["failures"] == []
    assert await read_file(parts, B, "a.txt") == b"theirs, newer"  # shown again
    assert store.head(B, "a.txt").etag == newer
    assert caplog.text.count("changed in S3 since it was removed here") == 1
    assert not any(PROBE_NAME in key for key in store.objects(B))


async def test_rm_of_an_unchanged_or_gone_key_removes_it(parts: Components,
                                                         store: MemoryStore) -> None:
    d = (await lookup_path(parts.ops, B, "d")).st_ino
    root = (await lookup_path(parts.ops, B)).st_ino
    await lookup_path(parts.ops, B, "a.txt")               # seen (its metadata looked up)
    await parts.ops.unlink(d, b"b.txt", None)
    store.delete_object(B, "a.txt")                        # gone since: fine
    await parts.ops.unlink(root, b"a.txt", None)
    status = await parts.writes.queue.sync(timeout=10)
    assert status["conflicts"] == [] and status["failures"] == []
    assert store.objects(B) == {"d/e/f": b"deep"}


@pytest.fixture
async def markers(tmp_path: Path, store: MemoryStore) -> AsyncIterator[Components]:
    """`parts` with two empty directories of markers `m/` and `n/`, listed (seen)."""
    store.put_object(B, "m/", b"")
    store.put_object(B, "n/", b"")
    async for components in running(tmp_path, store):
        assert await listdir(components, B) == ["a.txt", "d", "m", "n"]
        assert await listdir(components, B, "m") == [] == await listdir(components, B, "n")
        yield components


async def test_offline_rmdir_replayed_after_its_marker_was_rewritten_keeps_it(
        markers: Components, store: MemoryStore) -> None:
    """The marker's ETag comes from the listing of the directory itself (ListObjectsV2 of
    `m/` returns `m/`): its removal is conditional on it, like a file's."""
    root = (await lookup_path(markers.ops, B)).st_ino
    store.reachable = False
    await markers.ops.rmdir(root, b"m", None)              # journalled while offline
    await markers.ops.rmdir(root, b"n", None)
    assert await listdir(markers, B) == ["a.txt", "d"]
    store.replace(B, "m/", b"their marker, newer")         # someone else, meanwhile
    status = await back_online(markers, store)
    assert store.objects(B)["m/"] == b"their marker, newer"
    assert "n/" not in store.objects(B)                    # unchanged: removed
    [event] = status["conflicts"]
    assert event["kind"] == "kept-remote" and event["uri"] == f"s3://{B}/m/"
    assert status["failures"] == []


async def test_mv_source_changed_before_its_removal_is_kept(parts: Components,
                                                             store: MemoryStore) -> None:
    offline_once(store, "DeleteObject", "a.txt")           # the source removal waits
    root = (await lookup_path(parts.ops, B)).st_ino
    d = (await lookup_path(parts.ops, B, "d")).st_ino
    await parts.ops.rename(root, b"a.txt", d, b"moved.txt", 0, None)
    await until(lambda: not store.reachable)
    store.replace(B, "a.txt", b"theirs, newer")
    status = await back_online(parts, store)
    assert store.objects(B)["a.txt"] == b"theirs, newer"
    assert store.objects(B)["d/moved.txt"] == b"alpha"      # the version copied
    assert [e["kind"] for e in status["conflicts"]] == ["kept-remote"]


@pytest.mark.parametrize("conditions", ["honour"])
async def test_mv_onto_a_target_changed_since_it_was_seen_is_refused(parts: Components,
                                                                      store: MemoryStore) -> None:
    root = (await lookup_path(parts.ops, B)).st_ino
    d = (await lookup_path(parts.ops, B, "d")).st_ino
    await lookup_path(parts.ops, B, "d", "b.txt")          # seen (its metadata looked up)
    store.replace(B, "d/b.txt", b"theirs, newer")          # changed since
    with pytest.raises(pyfuse3.FUSEError) as info:
        await parts.ops.rename(root, b"a.txt", d, b"b.txt", 0, None)
    assert info.value.errno == errno.ESTALE
    await parts.writes.queue.sync(timeout=10)
    assert store.objects(B) == {"a.txt": b"alpha", "d/b.txt": b"theirs, newer",
                                "d/e/f": b"deep"}


async def test_local_mv_onto_a_target_changed_meanwhile_makes_a_conflict_copy(
        parts: Components, store: MemoryStore) -> None:
    store.reachable = False
    await write_file(parts, "new.txt", b"mine", "d")       # local bytes, queued
    d = (await lookup_path(parts.ops, B, "d")).st_ino
    await parts.ops.rename(d, b"new.txt", d, b"b.txt", 0, None)
    store.replace(B, "d/b.txt", b"theirs, newer")
    status = await back_online(parts, store)
    objects = store.objects(B)
    assert objects["d/b.txt"] == b"theirs, newer" and "d/new.txt" not in objects
    [event] = status["conflicts"]
    assert event["kind"] == "copy"
    assert objects[event["conflict_uri"].removeprefix(f"s3://{B}/")] == b"mine"


@pytest.mark.parametrize("conditions", ["honour"])
async def test_a_removal_superseding_a_new_file_touches_nobody_elses_object(
        parts: Components, store: MemoryStore) -> None:
    store.reachable = False
    store.link.failed("injected")  # known offline: no upload is tried (one that was, and
    # failed, may have landed: it is kept and retried, never superseded; journal.py)
    await write_file(parts, "new.txt", b"mine")             # never uploaded
    root = (await lookup_path(parts.ops, B)).st_ino
    await parts.ops.unlink(root, b"new.txt", None)
    store.replace(B, "new.txt", b"another client's file")
    status = await back_online(parts, store)
    assert store.objects(B)["new.txt"] == b"another client's file"
    assert status["conflicts"] == [] and "DeleteObject" not in store.request_counts()


class HeldPuts(MemoryStore):
    """A PutObject of `held` waits at its start until released: the link can go offline
    between a worker's claim of the upload and its request."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.entered, self.release = threading.Event(), threading.Event()

    def put_object(self, bucket: str, key: str, body: bytes | BinaryIO,
                   **kwargs: Any) -> str:
        if key == self.held:
            self.entered.set()
            self.release.wait(10)
        return super().put_object(bucket, key, body, **kwargs)


async def stocked(tmp_path: Path, store: S,
                  objects: dict[str, bytes]) -> AsyncIterator[tuple[Components, S]]:
    """The fake stack over `store`, its bucket B holding `objects`."""
    store.create_bucket(B)
    for key, body in objects.items():
        store.put_object(B, key, body)
    async for components in running(tmp_path, store):
        yield components, store


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[tuple[Components, HeldPuts]]:
    async for pair in stocked(tmp_path, HeldPuts("new.txt"), {}):
        yield pair


async def test_an_upload_that_found_the_link_gone_before_sending_is_superseded(
        held: tuple[Components, HeldPuts]) -> None:
    parts, store = held
    await write_file(parts, "new.txt", b"mine")                 # online: a worker takes it
    assert await trio.to_thread.run_sync(store.entered.wait, 10)
    store.reachable = False
    store.link.failed("injected")                              # before its PutObject went out
    root = (await lookup_path(parts.ops, B)).st_ino
    await parts.ops.unlink(root, b"new.txt", None)              # journalled behind the taken put
    store.replace(B, "new.txt", b"another client's file")
    store.release.set()                                         # NotSent: nothing of it in S3
    status = await back_online(parts, store)
    assert store.objects(B) == {"new.txt": b"another client's file"}  # kept, no conflict copy
    assert status["conflicts"] == [] and status["files"] == 0 and status["failures"] == []


class NewETagOnCopy(MemoryStore):
    """A copy of an object onto itself (a metadata change) gives it a new ETag, as AWS
    does for a multipart object, or any under SSE-KMS. The first such copy waits at its
    start until released; a copy to another key (a rename's) releases it and goes once it
    is done: the chmod's copy lands between the rename's look and its own copy."""

    def __init__(self) -> None:
        super().__init__()
        self.copying, self.release, self.copied = (threading.Event(), threading.Event(),
                                                   threading.Event())

    def copy_object(self, bucket: str, source_key: str, key: str, etag: str,
                    **kwargs: Any) -> str:
        if source_key != key:
            self.release.set()
            self.copied.wait(10)
            return super().copy_object(bucket, source_key, key, etag, **kwargs)
        first = not self.copying.is_set()
        if first:
            self.copying.set()
            self.release.wait(10)
        super().copy_object(bucket, source_key, key, etag, **kwargs)
        with self._lock:
            copied = self._buckets[bucket][key]
            new = hashlib.md5(copied.etag.encode()).hexdigest() + "-1"
            self._buckets[bucket][key] = dataclasses.replace(copied, etag=new)
        if first:
            self.copied.set()
        return new


@pytest.fixture
async def copying(tmp_path: Path) -> AsyncIterator[tuple[Components, NewETagOnCopy]]:
    async for pair in stocked(tmp_path, NewETagOnCopy(), {"big.bin": b"multipart bytes"}):
        yield pair


async def chmod(parts: Components, ino: int, mode: int) -> None:
    request = pyfuse3.EntryAttributes()
    request.st_mode = stat.S_IFREG | mode
    await parts.ops.setattr(ino, request, Fields(update_mode=True), None, Ctx())


@pytest.mark.parametrize("change", ["rename", "unlink"])
async def test_a_rename_or_removal_right_after_chmod_follows_the_etag_its_copy_made(
        copying: tuple[Components, NewETagOnCopy], change: str) -> None:
    """`chmod 600 f; mv f g` (or `rm f`) with the chmod's copy still in flight: the change
    waits for it and goes from the version it made. Before, a rename copied the version
    before (or failed ESTALE when the chmod's copy had just landed) and its removal of the
    source was refused (412): both names stayed; so did a removal's."""
    parts, store = copying
    writes = parts.writes
    root = (await lookup_path(parts.ops, B)).st_ino
    await chmod(parts, (await lookup_path(parts.ops, B, "big.bin")).st_ino, 0o600)
    assert await trio.to_thread.run_sync(store.copying.wait, 10)   # the chmod's copy is sent
    remove = writes.remove

    async def chmod_lands_first(bucket: str, key: str, expected: Any = UNKNOWN) -> None:
        store.release.set()                      # ... between the unlink's look and its removal
        await trio.to_thread.run_sync(store.copied.wait, 10)
        await until(lambda: not writes.queue.pending(bucket, key))  # its row is done
        await remove(bucket, key, expected)
    writes.remove = chmod_lands_first  # type: ignore[method-assign]

    async def change_it() -> None:
        if change == "rename":
            await parts.ops.rename(root, b"big.bin", root, b"moved.bin", 0, None)
        else:
            await parts.ops.unlink(root, b"big.bin", None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(change_it)
        await trio.sleep(0.1)   # the change waits for the copy in flight
        store.release.set()
    status = await back_online(parts, store)
    assert status["conflicts"] == [] and status["failures"] == [] and status["files"] == 0
    left = store.objects(B)
    if change == "rename":
        assert left == {"moved.bin": b"multipart bytes"}
        assert from_headers(store.head(B, "moved.bin").metadata or {}).mode == stat.S_IFREG | 0o600
        assert await listdir(parts, B) == ["moved.bin"]
    else:
        assert left == {} and await listdir(parts, B) == []


@pytest.fixture
async def file_and_dir(tmp_path: Path) -> AsyncIterator[tuple[Components, MemoryStore]]:
    async for pair in stocked(tmp_path, MemoryStore(), {
            "u": b"a file the directory hides", "u/v": b"the directory's only entry"}):
        yield pair


async def test_emptying_a_directory_that_hides_a_file_makes_no_marker(
        file_and_dir: tuple[Components, MemoryStore]) -> None:
    """`rm u/v` empties `u/`, which hid the file `u`: the file shows once the directory is
    gone, and no `u/` marker is made (on SeaweedFS, whose `u` and `u/` are one entry, its
    PUT destroyed the file)."""
    parts, store = file_and_dir
    assert await listdir(parts, B) == ["u"] and await listdir(parts, B, "u") == ["v"]
    await parts.ops.unlink((await lookup_path(parts.ops, B, "u")).st_ino, b"v", None)
    status = await parts.writes.queue.sync(timeout=10)
    assert status["files"] == 0 and status["failures"] == []
    assert store.objects(B) == {"u": b"a file the directory hides"}


@pytest.fixture
async def marker_with_bytes(tmp_path: Path) -> AsyncIterator[tuple[Components, MemoryStore]]:
    async for pair in stocked(tmp_path, MemoryStore(), {  # S3 lets a `dir/` key have a body
            "kept/": b"MARKER-BYTES", "moved/": b"MORE-BYTES", "moved/f": b"f"}):
        yield pair


async def test_a_marker_with_bytes_is_neither_removed_nor_emptied(
        marker_with_bytes: tuple[Components, MemoryStore], caplog: Any) -> None:
    """`rmdir` deleted such a marker, and `mv` of its directory made an empty one in its
    place: its bytes were gone, and nothing said so."""
    parts, store = marker_with_bytes
    root = (await lookup_path(parts.ops, B)).st_ino
    assert await listdir(parts, B) == ["kept", "moved"]
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await parts.ops.rmdir(root, b"kept", None)
    assert refused.value.errno == errno.ENOTEMPTY
    assert "s3://bkt/kept/ holds 12 bytes: the directory is not removed" in caplog.text
    await parts.ops.rename(root, b"moved", root, b"there", 0, None)
    status = await parts.writes.queue.sync(timeout=10)
    assert status["files"] == 0 and status["failures"] == [] and status["conflicts"] == []
    assert store.objects(B) == {"kept/": b"MARKER-BYTES", "there/": b"MORE-BYTES",
                                "there/f": b"f"}
    assert await listdir(parts, B) == ["kept", "there"]
    assert await listdir(parts, B, "there") == ["f"]


# ------------------------------------------------------------------ the probe


class IgnoresDeleteConditions(MemoryStore):
    """Honours conditional writes, deletes whatever If-Match says."""

    def delete_object(self, bucket: str, key: str, *, if_match: str | None = None) -> None:
        super().delete_object(bucket, key)


@pytest.mark.parametrize("server, expected", [
    (MemoryStore(), Capability(True, True)),
    (MemoryStore(conditions="ignore"), Capability(False, False)),
    (MemoryStore(conditions="refuse"), Capability(False, False)),
    (IgnoresDeleteConditions(), Capability(True, False))])
def test_the_probe_tells_what_the_server_honours(tmp_path: Path, server: MemoryStore,
                                                 expected: Capability) -> None:
    store = server
    store.create_bucket(B)
    store.put_object(B, "dir/kept.txt", b"x")
    probe = ConditionProbe(store, Journal(tmp_path / "journal.sqlite"))
    assert probe.of(B, "dir/sub/file.txt") == expected
    assert probe.of(B, "elsewhere") == expected                    # once per bucket
    assert store.request_counts()["PutObject"] <= 1 + 3
    assert store.objects(B) == {"dir/kept.txt": b"x"}              # the scratch key is gone


def test_offline_during_the_probe_postpones_it(tmp_path: Path) -> None:
    store = MemoryStore()
    store.create_bucket(B)
    probe = ConditionProbe(store, Journal(tmp_path / "journal.sqlite"))
    store.fail("PutObject", error="offline")
    with pytest.raises(Offline):
        probe.of(B, "k")
    assert probe.known(B) is None                                  # never assumed
    store.probe()
    assert probe.of(B, "k") == Capability(True, True)


def test_a_probe_key_we_may_not_write_is_no_answer(tmp_path: Path) -> None:
    store = MemoryStore()
    store.create_bucket(B)
    probe = ConditionProbe(store, Journal(tmp_path / "journal.sqlite"))
    store.fail("PutObject", error="permanent")
    assert probe.of(B, "k") == Capability(False, False)            # HEAD check this time
    assert probe.known(B) is None
    assert probe.of(B, "k") == Capability(True, True)              # probed again


def test_the_probe_over_moto(tmp_path: Path, moto_backend: Any, s3: Any, bucket: str) -> None:
    """moto 5 honours If-Match on DeleteObject and conditional PutObject."""
    probe = ConditionProbe(make_store(tmp_path, moto_backend.endpoint),
                           Journal(tmp_path / "journal.sqlite"))
    assert probe.of(bucket, "some/dir/file") == Capability(True, True)
    assert keys(s3, bucket) == set()


@pytest.mark.seaweedfs
def test_the_probe_over_seaweedfs_trusts_copy_conditions(tmp_path: Path, seaweedfs_backend: Any
                                                        ) -> None:
    """SeaweedFS refuses a copy whose CopySourceIfMatch is wrong (moto copies anyway): a
    metadata change there needs no HEAD first (store/copysources.py)."""
    store = moto_store(seaweedfs_backend, tmp_path)
    seaweedfs_backend.client.create_bucket(Bucket="probed")
    probe = ConditionProbe(store, Journal(tmp_path / "journal.sqlite"))
    assert probe.of("probed", "some/dir/file").copy
    assert keys(seaweedfs_backend.client, "probed") == set()


async def test_a_probe_key_left_by_a_crash_is_deleted_at_the_next_start(tmp_path: Path) -> None:
    store = MemoryStore()
    store.create_bucket(B)
    journal = Journal(tmp_path / "journal.sqlite")
    journal.probe_begin(B, "d/.s3fuse-probe-0123")  # recorded, written, then the crash
    store.put_object(B, "d/.s3fuse-probe-0123", b"")
    journal.close()
    async with upload_queue(tmp_path, store) as queue:
        await queue.sync(timeout=10)
        assert queue.journal.probe_keys() == []
    assert store.objects(B) == {}


async def test_servers_ignoring_conditions_never_overwrite_a_newer_version(
        tmp_path: Path) -> None:
    store = MemoryStore(conditions="ignore")
    store.create_bucket(B)
    seen = store.put_object(B, "doc.txt", b"v0")
    store.put_object(B, "doc.txt", b"theirs")
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, B, "doc.txt", b"mine", expected=seen)
        status = await queue.sync(timeout=10)
        assert queue.uploader.conditions.known(B) == Capability(False, False)
    assert store.objects(B)["doc.txt"] == b"theirs" and len(status["conflicts"]) == 1


# ------------------------------------------------------------------ multipart cleanup


async def test_cleanup_never_aborts_another_clients_multipart_upload(tmp_path: Path,
                                                                    caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="s3fuse.upload.uploader")
    store = MemoryStore()
    store.create_bucket(B)
    journal = Journal(tmp_path / "journal.sqlite")
    journal.multipart_begin(B, "big.bin")           # a crash before its UploadId arrived
    ours = journal.multipart_begin(B, "big.bin")
    our_upload = store.create_multipart_upload(B, "big.bin")
    journal.multipart_created(ours, our_upload)
    theirs = store.create_multipart_upload(B, "big.bin")  # another client, same key
    journal.close()
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, B, "big.bin", b"small now")
        await queue.sync(timeout=10)
        assert queue.journal.multipart_keys() == []
    assert store.list_multipart_uploads(B) == [("big.bin", theirs)]
    assert "AbortIncompleteMultipartUpload" in caplog.text


# ------------------------------------------------------------------ the journal


def test_conflicts_of_a_version_1_journal_become_copies(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    old = Database(path, Schema("upload journal", (_version_1,)), rows=True)
    with old.transaction(True) as db:
        db.execute("INSERT INTO conflicts (time, bucket, key, conflict_key) "
                   "VALUES (1, 'b', 'k', 'k.s3fuse-conflict-1')")
    old.close()
    journal = Journal(path)
    [event] = journal.summary()["conflicts"]
    assert event["kind"] == "copy" and event["conflict_uri"] == "s3://b/k.s3fuse-conflict-1"
    journal.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert db.execute("SELECT COUNT(*) FROM probes").fetchone()[0] == 0


def test_a_removal_inherits_the_condition_of_the_version_it_supersedes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.enqueue(B, "seen.txt", "s" * 32, 1, "etag-seen")
    journal.enqueue(B, "seen.txt", "", 0, None, op="delete")   # its own condition: not used
    journal.enqueue(B, "new.txt", "n" * 32, 1, None)
    journal.enqueue(B, "new.txt", "", 0, "ignored", op="delete")
    assert {(j.key, j.op, j.expected) for j in journal.pending()} == {
        ("seen.txt", "delete", "etag-seen"), ("new.txt", "delete", None)}
    journal.close()


# ------------------------------------------------------------------ through a mount


@pytest.mark.mount
def test_mount_offline_rm_then_a_newer_version_survives_the_sync(s3, bucket, mount_factory,
                                                                 proxy):
    s3.put_object(Bucket=bucket, Key="docs/a.txt", Body=b"old")
    s3.put_object(Bucket=bucket, Key="docs/b.txt", Body=b"target")
    m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint)
    root = m.path(bucket)
    assert sorted(os.listdir(root / "docs")) == ["a.txt", "b.txt"]
    proxy.cut()
    os.unlink(root / "docs" / "a.txt")
    (root / "docs" / "new.txt").write_bytes(b"mine")
    os.rename(root / "docs" / "new.txt", root / "docs" / "b.txt")  # a local rename's replace
    s3.put_object(Bucket=bucket, Key="docs/a.txt", Body=b"newer, by someone else")
    s3.put_object(Bucket=bucket, Key="docs/b.txt", Body=b"target, newer")
    proxy.restore()
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "docs/a.txt") == b"newer, by someone else"
    assert body(s3, bucket, "docs/b.txt") == b"target, newer"
    copies = [k for k in keys(s3, bucket) if k.startswith("docs/b.txt.s3fuse-conflict-")]
    assert len(copies) == 1 and body(s3, bucket, copies[0]) == b"mine"
    kinds = sorted(c["kind"] for c in m.status()["uploads"]["conflicts"])
    assert kinds == ["copy", "kept-remote"]
    m.expect_log(r"unreachable|offline|changed in S3|conditional")


@pytest.mark.mount
def test_mount_offline_rmdir_then_a_rewritten_marker_survives_the_sync(s3, bucket, mount_factory,
                                                                     proxy):
    for marker in ("kept/", "gone/"):
        s3.put_object(Bucket=bucket, Key=marker, Body=b"")
    m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint)
    root = m.path(bucket)
    assert os.listdir(root / "kept") == [] == os.listdir(root / "gone")  # seen: the markers
    proxy.cut()
    os.rmdir(root / "kept")
    os.rmdir(root / "gone")
    s3.put_object(Bucket=bucket, Key="kept/", Body=b"a marker with new content")
    proxy.restore()
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "kept/") == b"a marker with new content"
    assert "gone/" not in keys(s3, bucket)
    [event] = m.status()["uploads"]["conflicts"]
    assert event["kind"] == "kept-remote" and event["uri"] == f"s3://{bucket}/kept/"
    assert sorted(os.listdir(root)) == ["kept"]
    m.expect_log(r"unreachable|offline|changed in S3|conditional")


@pytest.mark.seaweedfs
async def test_a_marker_a_child_landed_beside_takes_changes_and_removals_on_seaweedfs(
        tmp_path: Path, seaweedfs_backend: Any) -> None:
    """SeaweedFS shows a `dir/` marker whose directory a child's upload made first as an
    empty object without metadata (ETag `<md5>-0`) and refuses every If-Match on it (the
    CI failure of `rsync -a`: its final `utimens` of the directory was called a conflict).
    Such a version holds nothing to keep: the change and the removal go over it."""
    client = seaweedfs_backend.client
    client.create_bucket(Bucket="implicit")
    client.put_object(Bucket="implicit", Key="dir/child", Body=b"x")
    assert client.head_object(Bucket="implicit", Key="dir/")["ETag"].endswith('-0"')
    store = moto_store(seaweedfs_backend, tmp_path)
    folder = Posix(mode=stat.S_IFDIR | 0o755, uid=0, gid=0, mtime_ns=10**9)
    async with upload_queue(tmp_path, store) as queue:
        await queue.set_meta("implicit", "dir/", folder, 0, hashlib.md5(b"").hexdigest())
        await queue.sync(timeout=30)
        await queue.delete("implicit", "dir/", hashlib.md5(b"").hexdigest())
        status = await queue.sync(timeout=30)
    assert status["conflicts"] == [] and status["failures"] == []
    assert keys(client, "implicit") == {"dir/child"}


@pytest.mark.seaweedfs
async def test_a_name_whose_directory_seaweedfs_still_keeps_can_be_created_again(
        tmp_path: Path, seaweedfs_backend: Any) -> None:
    """pjdfstest unlink/00.t on SeaweedFS: `rmdir d` then `create d`. When the marker's
    removal lands before its last child's, SeaweedFS keeps the directory (a HEAD of `d`
    finds nothing, of `d/` an empty object without metadata) and refuses If-None-Match on
    both names: the file and a new marker are written, not kept as conflict copies."""
    client = seaweedfs_backend.client
    client.create_bucket(Bucket="lingering")
    for name in ("file", "dir"):
        client.put_object(Bucket="lingering", Key=f"{name}/", Body=b"")
        client.put_object(Bucket="lingering", Key=f"{name}/child", Body=b"")
        client.delete_object(Bucket="lingering", Key=f"{name}/")
        client.delete_object(Bucket="lingering", Key=f"{name}/child")
    store = moto_store(seaweedfs_backend, tmp_path)
    async with upload_queue(tmp_path, store) as queue:
        await write(queue, "lingering", "file", b"a file now", None)
        await write(queue, "lingering", "dir/", b"", None)
        status = await queue.sync(timeout=30)
    assert status["conflicts"] == [] and status["failures"] == []
    assert client.get_object(Bucket="lingering", Key="file")["Body"].read() == b"a file now"
    assert not any("conflict" in key for key in keys(client, "lingering"))
