"""The FUSE error boundary: only FUSEError leaves a handler, with the errno of the error.

An ExceptionGroup (a nursery inside a handler) answers with its errors' errno, not EIO
as an "unexpected" bug; a bug is still logged with its traceback and answered EIO.
"""
from __future__ import annotations

import errno
import logging
import sqlite3
from typing import Any

import pyfuse3
import pytest
import trio

from s3fuse.errors import FileExists, NotFound, RemoteError, StaleObject
from s3fuse.fs.boundary import fuse_handler


class Handlers:
    """A stand-in Operations: the boundary needs only `describe`."""

    def __init__(self, where: str = "/where"):
        self.where = where  # failures are logged once per (op, path, errno) and daemon

    def describe(self, op: str, *args: Any) -> str:
        return self.where

    @fuse_handler("getattr")
    async def raising(self, exc: BaseException) -> None:
        raise exc

    @fuse_handler("lookup")
    async def nursery(self, *errors: Exception) -> None:
        async def fail(exc: Exception) -> None:
            raise exc
        async with trio.open_nursery() as nursery:  # strict groups: even one error is a group
            for exc in errors:
                nursery.start_soon(fail, exc)


async def answer(call: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await call
    return info.value.errno


async def test_a_nursery_error_reaches_the_caller_as_its_errno(caplog: pytest.LogCaptureFixture):
    ops = Handlers()
    assert await answer(ops.nursery(NotFound("gone"))) == errno.ENOENT
    assert await answer(ops.nursery(StaleObject("a"), StaleObject("b"))) == errno.ESTALE
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "unexpected"


@pytest.mark.parametrize(("errors", "expected"), [
    ([NotFound("x")], errno.ENOENT),
    ([FileExists("a"), FileExists("b")], errno.EEXIST),
    ([RemoteError("5xx"), NotFound("x"), FileExists("y")], errno.ENOENT),  # first meaningful
    ([RemoteError("5xx"), RemoteError("again")], errno.EIO),               # EIO is known too
    ([ExceptionGroup("inner", [OSError(errno.ENOSPC, "full")])], errno.ENOSPC),  # nested
    ([pyfuse3.FUSEError(errno.EACCES)], errno.EACCES),
])
async def test_groups_answer_the_first_meaningful_errno(errors: list[Exception], expected: int):
    assert await answer(Handlers().raising(ExceptionGroup("nursery", errors))) == expected


async def test_a_bug_in_a_group_is_logged_and_known_errors_still_answer(
        caplog: pytest.LogCaptureFixture):
    ops = Handlers()
    assert await answer(ops.raising(ExceptionGroup("g", [ZeroDivisionError("bug")]))) == errno.EIO
    assert await answer(ops.raising(ExceptionGroup("g", [KeyError("bug"), NotFound("x")]))) \
        == errno.ENOENT
    unexpected = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(unexpected) == 2 and all(r.exc_info for r in unexpected)


async def test_plain_errors_keep_their_answers(caplog: pytest.LogCaptureFixture):
    ops = Handlers("/plain")
    assert await answer(ops.raising(NotFound("x"))) == errno.ENOENT
    assert await answer(ops.raising(OSError(errno.EACCES, "denied"))) == errno.EACCES
    assert await answer(ops.raising(sqlite3.OperationalError("database or disk is full"))) \
        == errno.ENOSPC
    assert await answer(ops.raising(sqlite3.OperationalError("no such table"))) == errno.EIO
    assert await answer(ops.raising(ValueError("bug"))) == errno.EIO
    assert len([r for r in caplog.records if "unexpected error" in r.getMessage()]) == 2
    assert any("getattr /plain failed: EACCES" in r.getMessage() for r in caplog.records)
