"""`s3fuse sync --discard`: changes S3 refused for good (a read-only upload key: 403) can be
given up. A refused `rm` otherwise hid the object, still in S3, for ever (also after a
remount and `cache clear --force`). Only the failed changes the user was shown go (never a
queued one that may still be sent), the key shows S3's version again at once and after a
restart, and a failed upload's bytes stay readable until then. Over the in-memory store
through the FUSE operations; the command's listing and confirmation on their own."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from s3fuse import cli
from s3fuse.control import DISCARD
from s3fuse.daemon import Components
from s3fuse.errors import InvalidArgument
from s3fuse.store.memory import MemoryStore
from tests.test_fake_stack import B, listdir, read_file, readdir_replies, running, write_file
from tests.test_ops import lookup_path

OWNER = os.geteuid()
__all__ = ["readdir_replies"]  # the fake stack's readdir replies, for this module too
pytestmark = pytest.mark.usefixtures("readdir_replies")


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket(B)
    memory.put_object(B, "keep.txt", b"precious")
    return memory


async def failed(parts: Components, count: int) -> list[dict[str, Any]]:
    status = await parts.writes.queue.sync(timeout=10)
    assert status["files"] == 0 and len(status["failures"]) == count, status
    return status["failures"]


async def discard(parts: Components, ids: list[int]) -> list[int]:
    await parts.control.set(DISCARD, " ".join(map(str, ids)).encode(), OWNER)
    return json.loads(await parts.control.get(DISCARD, OWNER))["dropped"]


async def test_a_refused_removal_given_up_shows_the_object_again(
        tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture) -> None:
    store.fail("DeleteObject", times=1000, error="permanent", prefix="keep.txt")
    store.fail("PutObject", times=1000, error="permanent", prefix="new.txt")
    async for parts in running(tmp_path, store):
        assert await listdir(parts, B) == ["keep.txt"]
        await parts.ops.unlink((await lookup_path(parts.ops, B)).st_ino, b"keep.txt", None)
        await write_file(parts, "new.txt", b"my bytes")
        failures = await failed(parts, 2)
        assert {f["uri"]: f["op"] for f in failures} == {f"s3://{B}/keep.txt": "delete",
                                                        f"s3://{B}/new.txt": "put"}
        assert await listdir(parts, B) == ["new.txt"]  # the removal hides it, as the user did
        assert await read_file(parts, B, "new.txt") == b"my bytes"  # kept, readable

        removal = next(f["job"] for f in failures if f["op"] == "delete")
        assert await discard(parts, [removal, 999_999]) == [removal]  # unknown ids: left alone
        assert sorted(await listdir(parts, B)) == ["keep.txt", "new.txt"]
        assert await read_file(parts, B, "keep.txt") == b"precious"
        assert len(await failed(parts, 1)) == 1  # the upload is still kept
    async for parts in running(tmp_path, store):  # a restart: the removal is gone for good
        assert sorted(await listdir(parts, B)) == ["keep.txt", "new.txt"]
        [upload] = await failed(parts, 1)
        assert await discard(parts, [upload["job"]]) == [upload["job"]]
        assert await listdir(parts, B) == ["keep.txt"]
        status = await parts.writes.queue.sync(timeout=10)
        assert status["failures"] == []
        with trio.fail_after(10):  # the staging file goes with the next sync pass
            while os.listdir(tmp_path / "cache" / "staging"):
                await parts.writes.queue.make_durable()
                await trio.sleep(0.05)
    assert store.objects(B) == {"keep.txt": b"precious"}
    given_up = [r.getMessage() for r in caplog.records if "given up on request" in r.getMessage()]
    assert len(given_up) == 4 and any("its 8 bytes are dropped" in m for m in given_up)


async def test_a_change_that_may_still_be_sent_is_never_given_up(tmp_path: Path,
                                                                 store: MemoryStore) -> None:
    store.reachable = False  # offline: the upload waits, queued, not failed
    async for parts in running(tmp_path, store):
        store.link.failed("test: offline")
        await write_file(parts, "new.txt", b"queued")
        job = (await trio.to_thread.run_sync(parts.writes.queue.journal.pending))[0].id
        assert await discard(parts, [job]) == []
        assert (await trio.to_thread.run_sync(parts.writes.queue.status))["files"] == 1
        with pytest.raises(InvalidArgument):
            await parts.control.set(DISCARD, b"1 two", OWNER)
        store.reachable = True
        assert (await parts.writes.queue.sync(timeout=10))["files"] == 0
    assert store.objects(B)["new.txt"] == b"queued"


FAILURES = [{"job": 7, "uri": "s3://b/keep.txt", "op": "delete", "size": 0,
             "error": "access denied (AccessDenied)"},
            {"job": 9, "uri": "s3://b/out.csv", "op": "put", "size": 2048,
             "error": "access denied (AccessDenied)"}]


@pytest.mark.parametrize("answer,code", [("y\n", 0), ("\n", 1)])
def test_sync_discard_lists_and_asks_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path, answer: str, code: int) -> None:
    sent: list[bytes] = []
    monkeypatch.setattr(cli, "_uploads", lambda mountpoint, syncing=False: {
        "files": 0, "bytes": 0, "uploading": 0, "failures": [] if sent else FAILURES})
    monkeypatch.setattr(os, "setxattr", lambda path, name, value: sent.append(value))
    monkeypatch.setattr(os, "getxattr", lambda path, name: b'{"dropped": [7, 9]}')
    stdin = io.StringIO(answer)
    stdin.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stdin", stdin)
    assert cli._discard(tmp_path) == code
    err = capsys.readouterr().err
    assert "s3://b/keep.txt: removal (access denied (AccessDenied))" in err
    assert "s3://b/out.csv: upload of 2.0 KiB: these bytes are lost" in err
    assert "give up these 2 change(s)? [y/N]" in err
    if code == 0:
        assert sent == [b"7 9"] and "gave up 2 failed change(s)" in err
    else:
        assert sent == [] and "nothing given up" in err


def test_retry_and_discard_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sync", "--retry", "--discard", "/nonexistent"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "s3fuse")
