"""The one error boundary: only pyfuse3.FUSEError may leave a FUSE handler.

Anything else reaching pyfuse3 would kill the daemon (pyfuse3 issue #93). Known
errors become their errno (errors.py); unknown ones are logged with a traceback
and answered with EIO. Failed S3 requests are logged once per (op, path, errno).
"""
from __future__ import annotations

import errno
import functools
import logging
import sqlite3
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3

from ..errors import S3FuseError, disk_full, errno_of

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: errnos that are ordinary answers, not failures worth a WARNING.
QUIET_ERRNOS = {errno.ENOENT, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY,
                errno.EEXIST, errno.ENODATA, errno.EPERM, errno.EXDEV, errno.ENOTSUP,
                errno.ENOSYS, errno.EINVAL}
_logged: set[tuple[str, str, int]] = set()


def _log_failure(op: str, where: str, code: int, exc: BaseException) -> None:
    key = (op, where, code)
    if key in _logged:
        return
    if len(_logged) < 100_000:
        _logged.add(key)
    log.warning("%s %s failed: %s (%s)", op, where, errno.errorcode.get(code, code), exc)


def fuse_handler(op: str) -> Callable[[F], F]:
    """Decorate an Operations method; `self.describe(op, *args)` names the path for logs."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def handler(self: Any, *args: Any) -> Any:
            try:
                return await fn(self, *args)
            except pyfuse3.FUSEError:
                raise
            except (S3FuseError, OSError, sqlite3.OperationalError) as exc:
                if isinstance(exc, sqlite3.OperationalError) and not disk_full(exc):
                    log.exception("%s %s: unexpected error", op, self.describe(op, *args))
                    raise pyfuse3.FUSEError(errno.EIO) from None
                code = errno_of(exc)
                if code not in QUIET_ERRNOS:
                    _log_failure(op, self.describe(op, *args), code, exc)
                raise pyfuse3.FUSEError(code) from None
            except Exception:  # noqa: BLE001 - the boundary: nothing else may escape
                log.exception("%s %s: unexpected error", op, self.describe(op, *args))
                raise pyfuse3.FUSEError(errno.EIO) from None
        return handler  # type: ignore[return-value]

    return wrap
