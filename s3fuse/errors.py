"""The one exception -> errno table.

Every layer raises these instead of library exceptions, so the FUSE boundary in
fs/ops.py needs to know only this module. This module imports nothing of ours.
"""
from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


class S3FuseError(Exception):
    """Base of every error we raise on purpose; carries the errno to answer."""

    errno: int = errno.EIO
    #: The S3 error code and HTTP status behind it when S3 answered (store/retry.py decides
    #: from them whether trying again can help); "" and 0 otherwise.
    code: str = ""
    status: int = 0


class NotFound(S3FuseError):
    errno = errno.ENOENT


class AccessDenied(S3FuseError):
    errno = errno.EACCES


class CredentialsExpired(AccessDenied):
    """S3 refused credentials whose session expired and that nothing can renew (a session
    token exported from `aws sts assume-role` or an SSO export): every retry would be
    refused alike, so it is a permanent failure (EACCES), not a transient one."""


class StaleObject(S3FuseError):
    """The object changed in S3 under an open handle (ETag no longer matches)."""

    errno = errno.ESTALE


class ReadOnly(S3FuseError):
    errno = errno.EROFS


class NotADirectory(S3FuseError):
    errno = errno.ENOTDIR


class IsADirectory(S3FuseError):
    errno = errno.EISDIR


class InvalidArgument(S3FuseError):
    errno = errno.EINVAL


class FileExists(S3FuseError):
    errno = errno.EEXIST


class NotEmpty(S3FuseError):
    errno = errno.ENOTEMPTY


class NotPermitted(S3FuseError):
    """A change refused by rule: hard links, reserved attributes, the mount root."""

    errno = errno.EPERM


class NotSupported(S3FuseError):
    """An operation this namespace does not implement: xattrs outside `user.*`."""

    errno = errno.ENOTSUP


class NameTooLong(S3FuseError):
    """A name over 255 bytes (NAME_MAX): no S3 key component or s3fs xattr may be longer."""

    errno = errno.ENAMETOOLONG


class MetadataTooLarge(S3FuseError):
    """POSIX metadata (user xattrs above all) over S3's 2 KiB of user metadata per object."""

    errno = errno.E2BIG


class NoAttribute(S3FuseError):
    """No extended attribute of that name (ENOATTR, which is ENODATA on Linux)."""

    errno = errno.ENODATA


class TooBigToRename(S3FuseError):
    """A directory too large to rename key by key; `mv` then copies and deletes itself."""

    errno = errno.EXDEV


class Offline(S3FuseError):
    """S3 is unreachable and the cache cannot answer."""

    errno = errno.EHOSTUNREACH


class NotSent(Offline):
    """Offline, and known so before the request went out: S3 never saw it (an upload
    that failed so cannot have landed, unlike one whose answer was lost)."""


class RemoteError(S3FuseError):
    """Any other failure talking to S3 (5xx, throttling after retries, bad data)."""

    errno = errno.EIO


class CorruptData(S3FuseError):
    """Bytes failed verification (cache block checksum, archive structure)."""

    errno = errno.EIO


class CacheFull(S3FuseError):
    """The cache directory's disk is full (metadata could not be written)."""

    errno = errno.ENOSPC


class UsageError(Exception):
    """Bad user input (CLI, config, credentials): one line on stderr and exit 2."""




def disk_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL): the cache disk has no room.

    sqlite3 raises it as a plain OperationalError, not an OSError with ENOSPC, so without
    this a full disk under the journal or metadata reached the FUSE boundary as an
    "unexpected error" (a traceback and EIO) instead of ENOSPC."""
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


@contextmanager
def full_disk_is_cache_full(what: str) -> Iterator[None]:
    """Raise SQLite's "database or disk is full" (disk_full) met inside as CacheFull, named
    after `what` (the database): ENOSPC for the caller."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if disk_full(exc):
            raise CacheFull(f"{what}: {exc}") from None
        raise


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE reply should carry for `exc` (EIO for anything unknown)."""
    if isinstance(exc, S3FuseError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if disk_full(exc):
        return errno.ENOSPC
    return errno.EIO
