"""Which member names are safe to show as paths under a mount point.

Archive names come from strangers: an absolute path, a `..` or an over-long
component must never reach the tree, whatever the daemon later does with it.
"""
from __future__ import annotations

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096


def safe_member_path(name: str) -> str | None:
    """Return `name` as a normalized relative path, or None when it is unsafe.

    A single leading "./" is dropped (tar's habit) and so is a trailing "/"
    (a directory entry, which callers skip anyway). Refused: NUL, absolute
    paths, empty, "." or ".." components, a component over 255 bytes and a
    path over 4096 bytes (UTF-8).
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
        if part in (b"", b".", b"..") or len(part) > MAX_COMPONENT_BYTES:
            return None
    return name
