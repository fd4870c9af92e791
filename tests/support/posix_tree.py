"""Build a small tree with everything POSIX metadata covers, and describe a tree to compare.

The acceptance tests of issue 14 (tests/test_posix_*.py) copy such a tree into the mount
with everyday tools, remount, and compare what they see with the source. One builder and
one describer keep those comparisons the same everywhere: type, permission bits, owner,
size, content digest, symlink target and mtime of every node (atime is not compared: the
mount's policy is noatime; ctime cannot be set).
"""
from __future__ import annotations

import hashlib
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path

#: A fixed past moment (2001-02-03 04:05:06 UTC) plus nanoseconds, so copies are not "now".
BASE_NS = 981_173_106_000_000_000
#: An owner no process here has: only a root caller can give it, only stored metadata keeps it.
OWNER = (1234, 5678)
SCRIPT = b"#!/bin/sh\necho ran \"$@\"\n"


@dataclass(frozen=True)
class Node:
    """What a comparison looks at for one path (relative to the tree's root)."""

    kind: str            # "file", "dir", "symlink", "fifo", ...
    mode: int            # permission bits (S_IMODE)
    uid: int
    gid: int
    size: int            # files and symlinks; 0 for directories
    digest: str          # sha256 of a file's bytes, the target of a symlink, "" otherwise
    mtime_ns: int


_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk"}


def node(path: Path) -> Node:
    st = os.lstat(path)
    kind = _KINDS[stat.S_IFMT(st.st_mode)]
    if kind == "file":
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    elif kind == "symlink":
        digest = os.readlink(path)
    else:
        digest = ""
    return Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                0 if kind == "dir" else st.st_size, digest, st.st_mtime_ns)


def describe(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, Node]:
    """Every node below `root` (symlinks not followed), by relative path; `root` itself as "."."""
    found = {".": node(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if not (skip and rel.startswith(skip)):
                found[rel] = node(path)
    return found


def differences(want: dict[str, Node], got: dict[str, Node], *, mtime_ns_precision: int = 1,
                dir_metadata: bool = True) -> list[str]:
    """Readable differences between two descriptions (empty: the same tree).

    mtimes are compared truncated to `mtime_ns_precision` (1: exact; 10**9: whole seconds).
    `dir_metadata` False: directories are compared by existence only (a server that keeps
    no user metadata on `dir/` markers, as SeaweedFS: see `keeps_marker_metadata`)."""
    problems = []
    if set(want) != set(got):
        problems.append(f"paths: missing {sorted(set(want) - set(got))}, "
                        f"extra {sorted(set(got) - set(want))}")
    for rel in sorted(set(want) & set(got)):
        w, g = want[rel], got[rel]
        if w.kind == g.kind == "dir" and not dir_metadata:
            continue
        for field in ("kind", "mode", "uid", "gid", "size", "digest"):
            if getattr(w, field) != getattr(g, field):
                shown = oct if field == "mode" else repr
                problems.append(f"{rel}: {field} {shown(getattr(g, field))} != {shown(getattr(w, field))}")
        if w.mtime_ns // mtime_ns_precision != g.mtime_ns // mtime_ns_precision:
            problems.append(f"{rel}: mtime_ns {g.mtime_ns} != {w.mtime_ns}")
    return problems


def build_tree(root: Path, *, dir_metadata: bool = True) -> Path:
    """A tree with 0755 and 0600 files, a foreign owner, nanosecond mtimes, relative and
    dangling symlinks, an empty directory, a 0700 directory; times set last (deepest first).
    The same bytes every time. `dir_metadata` False: directories get their mode from mkdir
    and keep their times (s3fs 1.90 cannot chmod or utime a directory it just created)."""
    root.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "run.sh").write_bytes(SCRIPT)
    (root / "bin" / "run.sh").chmod(0o755)
    (root / "secret.txt").write_bytes(b"only me\n")
    (root / "secret.txt").chmod(0o600)
    (root / "data").mkdir()
    (root / "data" / "file.bin").write_bytes(random.Random(14).randbytes(70_000))
    (root / "data" / "owned.txt").write_bytes(b"someone else's\n")
    os.chown(root / "data" / "owned.txt", *OWNER)
    (root / "empty").mkdir()
    (root / "private").mkdir(0o700)
    (root / "private" / "note").write_bytes(b"")
    if dir_metadata:
        (root / "private").chmod(0o700)  # whatever the umask
    os.symlink("data/file.bin", root / "link")
    os.symlink("../bin/run.sh", root / "data" / "run-link")
    os.symlink("nowhere", root / "dangling")
    paths = sorted(root.rglob("*"), key=lambda p: (-len(p.parts), str(p)))
    for i, path in enumerate([*paths, root]):
        if path.is_dir() and not path.is_symlink() and not dir_metadata:
            continue
        when = BASE_NS + i * 1_000_000_007 + 123_456_789
        os.utime(path, ns=(when, when), follow_symlinks=False)
    return root


def keeps_marker_metadata(s3: object, bucket: str) -> bool:
    """Whether the server keeps user metadata on a `dir/` marker object. SeaweedFS (4.x) does
    not (it turns the marker into a filer directory): directory modes and times cannot
    survive a remount with an empty cache there, whoever writes them."""
    key = ".probe-marker-metadata/"
    s3.put_object(Bucket=bucket, Key=key, Body=b"", Metadata={"mode": "16877"})  # type: ignore[attr-defined]
    kept = s3.head_object(Bucket=bucket, Key=key)["Metadata"].get("mode") == "16877"  # type: ignore[attr-defined]
    s3.delete_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    return kept


def assert_same(want: dict[str, Node], got: dict[str, Node], **options: object) -> None:
    """`differences` must be empty; a failure lists every one."""
    problems = differences(want, got, **options)  # type: ignore[arg-type]
    assert not problems, "\n".join(problems)
