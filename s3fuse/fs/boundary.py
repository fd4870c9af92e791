"""The one error boundary: only pyfuse3.FUSEError may leave a FUSE handler.

Anything else reaching pyfuse3 would kill the daemon (pyfuse3 issue #93). Known
errors become their errno (errors.py); unknown ones are logged with a traceback
and answered with EIO. An ExceptionGroup (a nursery inside a handler) is answered
with the errno of its errors, not as a bug. Failed S3 requests are logged once per
(op, path, errno).
"""
from __future__ import annotations

import errno
import functools
import logging
import sqlite3
import time
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3

from ..errors import S3FuseError, disk_full, errno_of

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: errnos that are ordinary answers, not failures worth a WARNING.
QUIET_ERRNOS = {errno.ENOENT, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY,
                errno.EEXIST, errno.ENODATA, errno.EPERM, errno.EXDEV, errno.ENOTSUP,
                errno.ENOSYS, errno.EINVAL, errno.ENAMETOOLONG}
_logged: set[tuple[str, str, int]] = set()


def _log_failure(op: str, where: str, code: int, exc: BaseException) -> None:
    key = (op, where, code)
    if key in _logged:
        return
    if len(_logged) < 100_000:
        _logged.add(key)
    log.warning("%s %s failed: %s (%s)", op, where, errno.errorcode.get(code, code), exc)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def known_errno(exc: BaseException) -> int | None:
    """The errno of an error raised on purpose (or by the OS); None for a bug."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, sqlite3.OperationalError):
        return errno.ENOSPC if disk_full(exc) else None
    if isinstance(exc, (S3FuseError, OSError)):
        return errno_of(exc)
    return None


def answer(exc: Exception) -> tuple[int, BaseException | None, list[BaseException]]:
    """The errno to answer `exc` with, the error it comes from, and the bugs among its errors.

    A group answers with its first error that has a meaningful errno (not EIO), else
    EIO; one whose errors all share an errno answers that one."""
    leaves = _leaves(exc)
    known = [(code, leaf) for leaf in leaves if (code := known_errno(leaf)) is not None]
    bugs = [leaf for leaf in leaves if known_errno(leaf) is None]
    for code, leaf in known:
        if code != errno.EIO:
            return code, leaf, bugs
    return errno.EIO, (known[0][1] if known else None), bugs


#: Set by metrics.py while a metrics endpoint runs: (operation, seconds, errno or None).
observer: Callable[[str, float, int | None], None] | None = None


def fuse_handler(op: str) -> Callable[[F], F]:
    """Decorate an Operations method; `self.describe(op, *args)` names the path for logs."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def handler(self: Any, *args: Any) -> Any:
            started = time.perf_counter() if observer is not None else 0.0
            code: int | None = None
            try:
                return await fn(self, *args)
            except pyfuse3.FUSEError as exc:
                code = exc.errno
                raise
            except Exception as exc:  # noqa: BLE001 - the boundary: nothing else may escape
                code, cause, bugs = answer(exc)
                for bug in bugs:
                    log.error("%s %s: unexpected error", op, self.describe(op, *args),
                              exc_info=bug)
                if cause is not None and code not in QUIET_ERRNOS:
                    _log_failure(op, self.describe(op, *args), code, cause)
                raise pyfuse3.FUSEError(code) from None
            finally:
                if observer is not None and started:
                    observer(op, time.perf_counter() - started, code)
        return handler  # type: ignore[return-value]

    return wrap
