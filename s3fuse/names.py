"""The one set of name rules: which strings may be a path component or a relative path.

S3 keys, manifest paths, archive members, source names and control-plane paths all
come from somewhere we do not control; each reaches the tree, a cache or a log only
through these checks, so `.`/`..` traversal, NUL, empty components and over-long
names are refused in one place. This module imports nothing of ours.
"""
from __future__ import annotations

import re

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
#: S3's limit on a key (UTF-8 bytes).
MAX_KEY_BYTES = 1024


#: The conditional-request probe's scratch keys (upload/conditions.py): this, then
#: PROBE_HEX lowercase hex digits. Ours, never the user's: listings hide them and no file
#: of such a name is made.
PROBE_NAME = ".s3fuse-probe-"
PROBE_HEX = 16
_PROBE = re.compile(re.escape(PROBE_NAME) + f"[0-9a-f]{{{PROBE_HEX}}}")


def is_probe_name(name: str) -> bool:
    """Is `name` (one path component) a probe's scratch key?"""
    return name.startswith(PROBE_NAME) and _PROBE.fullmatch(name) is not None


def is_posix_name(name: str) -> bool:
    """Can `name` be one path component? (never '.', '..', empty, NUL, '/', over 255 bytes,
    nor bytes that are not UTF-8: they arrive as lone surrogates, and no S3 key can hold
    them, so such a name could only ever map to another key or fail later)."""
    if not name or name in (".", "..") or "\0" in name or "/" in name:
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES
    except UnicodeEncodeError:
        return False


def too_long(name: str) -> bool:
    """Is `name` over NAME_MAX (255 bytes of UTF-8; lone surrogates count as one byte each,
    the byte they stand for)? ENAMETOOLONG rather than EINVAL, as POSIX says."""
    return len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES


def path_parts(path: str) -> list[str] | None:
    """The components of a relative path when every one is a POSIX name, else None."""
    parts = path.split("/")
    return parts if all(is_posix_name(p) for p in parts) else None


def is_relative_path(path: str, allow_empty: bool = True) -> bool:
    """A mount-relative path ('' is the top when `allow_empty`): POSIX names joined by '/'."""
    if not path:
        return allow_empty
    return len(path.encode("utf-8", "surrogatepass")) <= MAX_PATH_BYTES and path_parts(path) is not None


def safe_member_path(name: str) -> str | None:
    """An archive member's name as a normalized relative path, or None when it is unsafe.

    A single leading "./" is dropped (tar's habit) and so is a trailing "/" (a directory
    entry, which callers skip anyway). Refused: NUL, absolute paths, empty, "." or ".."
    components, a component over 255 bytes and a path over 4096 bytes (UTF-8).
    """
    if name.startswith("./"):
        name = name[2:]
    if name.endswith("/"):
        name = name[:-1]
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if not encoded or b"\0" in encoded or len(encoded) > MAX_PATH_BYTES:
        return None
    for part in encoded.split(b"/"):
        if part in (b"", b".", b"..") or len(part) > MAX_NAME_BYTES:
            return None
    return name


def join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def split(path: str) -> tuple[str, str]:
    """'a/b/c' -> ('a/b', 'c'); 'c' -> ('', 'c')."""
    head, _, tail = path.rpartition("/")
    return head, tail


def ancestors(path: str) -> list[str]:
    """'a/b/c' -> ['a/b/c', 'a/b', 'a']: the path and each directory above it, root excluded."""
    parts = path.split("/") if path else []
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
