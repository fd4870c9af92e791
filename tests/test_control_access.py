"""Who may drive a mount (issue 13): only its owner (the daemon's user, the `--uid` it
shows, or root) may set control attributes, whatever `--dir-mode` says; others who may
read the root get a status summary without keys; the root never shows write bits to
group and others, a read-only mount's included."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pyfuse3
import pytest

from s3fuse.config import Config, parse_source
from s3fuse.control import status_summary
from s3fuse.daemon import Components, build
from s3fuse.fs.inodes import ROOT_INODE
from tests.conftest import Backend
from tests.test_namespace_posix import Fields
from tests.test_security import needs_other_user
from tests.support.mount import Mount

NOBODY = 65534
HOSTILE = "secret-project/\n<0>evil\x1b[2J.txt"


@pytest.fixture
def components(moto_backend: Backend, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Components]]:
    """components(**config) -> the daemon's parts over a fresh moto bucket shown as 'bkt'."""
    for var, value in moto_backend.env().items():
        monkeypatch.setenv(var, value)
    with ExitStack() as stack:
        def make(**overrides: Any) -> Components:
            bucket = f"access-{os.getpid()}-{len(list(tmp_path.iterdir()))}"
            moto_backend.client.create_bucket(Bucket=bucket)
            cfg = Config(mountpoint=tmp_path / "mnt", sources=(parse_source(f"s3://{bucket}", "bkt"),),
                         cache_dir=tmp_path / bucket, endpoint_url=moto_backend.endpoint,
                         region="us-east-1", **overrides)
            return build(cfg, stack)
        yield make


def as_user(uid: int) -> SimpleNamespace:
    """A FUSE request context of the user `uid` (pyfuse3 gives the caller's uid in `ctx.uid`)."""
    return SimpleNamespace(uid=uid, gid=uid, pid=1, umask=0o022)


async def errno_of(call: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await call
    return info.value.errno


async def test_only_the_owner_sets_control_attributes(components: Callable[..., Components]):
    parts = components(dir_mode=0o777, uid=4242)
    ops = parts.ops
    for name in (b"user.s3fuse.pin", b"user.s3fuse.unpin", b"user.s3fuse.retry", b"user.s3fuse.idle"):
        assert await errno_of(ops.setxattr(ROOT_INODE, name, b"bkt", as_user(NOBODY))) == errno.EPERM
        assert await errno_of(ops.setxattr(ROOT_INODE, name, b"bkt", None)) == errno.EPERM
    assert parts.pinner.jobs() == [] and parts.pinner.pins() == []   # nothing was started
    for owner in (os.geteuid(), 0, 4242):   # the daemon's user, root, and the shown --uid
        await ops.setxattr(ROOT_INODE, b"user.s3fuse.idle", b"0", as_user(owner))


async def test_other_readers_get_a_summary_without_keys(components: Callable[..., Components]):
    parts = components(dir_mode=0o777)
    ops = parts.ops
    owner = json.loads(await ops.getxattr(ROOT_INODE, b"user.s3fuse.status", as_user(os.geteuid())))
    assert "restricted" not in owner and owner["sources"]
    other = json.loads(await ops.getxattr(ROOT_INODE, b"user.s3fuse.status", as_user(NOBODY)))
    assert other["restricted"] and other["link"]["state"] == owner["link"]["state"]
    assert "sources" not in other and "dir" not in other["cache"]
    for name in (b"user.s3fuse.jobs", b"user.s3fuse.pin"):   # lists of paths: the owner's
        assert await errno_of(ops.getxattr(ROOT_INODE, name, as_user(NOBODY))) == errno.EPERM
    queue = json.loads(await ops.getxattr(ROOT_INODE, b"user.s3fuse.uploads", as_user(NOBODY)))
    assert queue["restricted"] and queue["files"] == 0


def test_the_summary_names_no_key_path_or_error():
    key = f"s3://b/{HOSTILE}"
    status = {
        "version": "1", "pid": 1, "mountpoint": "/m", "started": 0.0, "read_only": False,
        "endpoint_url": "https://s3.internal.example", "sources": ["s3://b/secret-project"],
        "manifests": [], "requests": {"GET": 3},
        "link": {"state": "offline", "since": 1.0, "reason": f"GET {key} timed out",
                 "recent_errors": [{"time": 1.0, "error": f"GET {key}: 503"}]},
        "cache": {"dir": "/home/alice/.cache/s3fuse", "limit": 10, "used": 5, "pinned": 2},
        "uploads": {"files": 2, "bytes": 9, "uploading": 0, "oldest_age": 3.0, "online": False,
                    "failures": [{"uri": key, "error": "access denied"}],
                    "retrying": [{"uri": key, "attempts": 2, "error": "503"}],
                    "conflicts": [{"uri": key, "conflict_uri": key + ".conflict", "time": 1.0}]},
        "pins": [{"path": "bkt/secret-project", "state": "complete"}],
        "supervisor": {"kinds": {"pin": {"running": 1}}, "recent_failures": [
            {"time": 1.0, "kind": "pin", "task": "bkt/secret-project", "action": "x", "error": "y"}]},
    }
    shown = json.dumps(status_summary(status))
    for secret in ("secret-project", "internal", "alice", "evil", "access denied", "timed out"):
        assert secret not in shown
    summary = json.loads(shown)
    assert summary["uploads"]["hidden"] == {"failures": 1, "retrying": 1, "conflicts": 1}
    assert summary["hidden"]["pins"] == 1 and summary["uploads"]["files"] == 2


@pytest.mark.parametrize("read_only", [False, True])
async def test_the_root_shows_no_write_bits_to_others(components: Callable[..., Components],
                                                      read_only: bool):
    ops = components(dir_mode=0o777, read_only=read_only).ops
    root = await ops.getattr(ROOT_INODE, None)
    assert stat.S_IMODE(root.st_mode) == 0o755   # the owner's bit: `s3fuse pin` on a read-only mount
    bkt = await ops.lookup(ROOT_INODE, b"bkt", None)
    assert stat.S_IMODE(bkt.st_mode) == (0o555 if read_only else 0o777)   # sources: as configured


@pytest.mark.parametrize("read_only", [False, True])
async def test_nobody_changes_the_roots_mode_owner_times_or_attributes(
        components: Callable[..., Components], read_only: bool):
    """With POSIX metadata (issue 14) setattr and removexattr reach the daemon: on the root
    they are refused for everyone, its owner and root included (a `chmod 777` of the root
    would open the control channel to the modes again)."""
    ops = components(dir_mode=0o777, uid=4242, read_only=read_only).ops
    request = pyfuse3.EntryAttributes()
    request.st_mode, request.st_uid, request.st_gid = stat.S_IFDIR | 0o777, NOBODY, NOBODY
    request.st_mtime_ns = request.st_atime_ns = 10**18
    for caller in (NOBODY, 4242, 0):
        for fields in (Fields(update_mode=True), Fields(update_uid=True, update_gid=True),
                       Fields(update_atime=True, update_mtime=True)):
            assert await errno_of(ops.setattr(ROOT_INODE, request, fields, None,
                                              as_user(caller))) == errno.EPERM
        for name in (b"user.s3fuse.pin", b"user.other"):
            assert await errno_of(ops.removexattr(ROOT_INODE, name, as_user(caller))) == errno.EPERM
        assert await errno_of(ops.setxattr(ROOT_INODE, b"user.other", b"x",
                                           as_user(caller))) == errno.EPERM
    root = await ops.getattr(ROOT_INODE, None)
    assert stat.S_IMODE(root.st_mode) == 0o755 and root.st_uid == 4242


# ------------------------------------------------------------------ through a real mount

#: Runs the s3fuse CLI as another user: imports first (the interpreter lives under /root,
#: which that user cannot read), then drops to the user and calls main().
AS_USER = """
import os, sys
import s3fuse.cli, s3fuse.control, s3fuse.mounts, s3fuse.printable
os.setgroups([]); os.setgid({uid}); os.setuid({uid})
sys.exit(s3fuse.cli.main(sys.argv[1:]))
"""


def cli_as(uid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", AS_USER.format(uid=uid), *argv],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.mount
def test_another_user_cannot_pin_a_world_writable_mount(backend: Backend, s3, bucket, public_base,
                                                        fuse_available):
    needs_other_user()
    s3.put_object(Bucket=bucket, Key="big/f.bin", Body=b"x" * 1000)
    m = Mount(public_base / "mnt", public_base / "cache", public_base / "daemon.log",
              backend.env(), ["--source", f"s3://{bucket}", "--allow-other",
                                             "--dir-mode", "0777"]).start()
    try:
        res = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                              "setfattr", "-n", "user.s3fuse.pin", "-v", bucket, str(m.mountpoint)],
                             capture_output=True, text=True)
        assert res.returncode != 0, "another user pinned a whole bucket"
        for user in ([f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"], None):
            for command in (["chmod", "777"], ["chown", str(NOBODY)], ["touch"],
                            ["setfattr", "-x", "user.s3fuse.pin"]):
                res = subprocess.run((["setpriv", *user] if user else []) + command
                                     + [str(m.mountpoint)], capture_output=True, text=True)
                assert res.returncode != 0, (user, command)
        mode = os.stat(m.mountpoint)
        assert stat.S_IMODE(mode.st_mode) == 0o755 and mode.st_uid == os.geteuid()
        res = cli_as(NOBODY, "pin", str(m.path(bucket)))
        assert res.returncode == 1
        assert res.stderr.splitlines() == [f"s3fuse: error: only the owner of the mount {m.mountpoint} "
                                           f"(or root) may pin: {m.path(bucket)}"]
        assert json.loads(os.getxattr(m.mountpoint, "user.s3fuse.jobs")) == []
        assert os.listxattr(m.mountpoint) == []  # read by name: copying tools skip them
        res = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                              "getfattr", "-d", "-m", "-", str(m.mountpoint)], capture_output=True, text=True)
        assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
        res = cli_as(NOBODY, "umount", str(m.mountpoint))
        assert (res.returncode, res.stderr.splitlines()) == (1, [
            f"s3fuse: error: only the owner of the mount {m.mountpoint} (or root) may unmount it"])
        assert os.path.ismount(m.mountpoint)
        res = cli_as(NOBODY, "status", str(m.mountpoint))
        assert res.returncode == 0 and "shown to the mount's owner only" in res.stdout
        assert bucket not in res.stdout.replace(str(m.mountpoint), "")
        res = subprocess.run([sys.executable, "-m", "s3fuse", "pin", str(m.path(bucket))],
                             capture_output=True, text=True, timeout=60, env=m.env)
        assert res.returncode == 0, res.stderr    # the owner still pins
    finally:
        m.stop()
    assert not m.unexpected_log_lines(), m.log()


def test_root_refused_by_a_mount_without_allow_other_is_told_so(monkeypatch) -> None:
    """Root refused a pin or retry by another user's mount made without --allow-other read
    "only the owner (or root) may pin" (as root): it now says why root is refused too."""
    import errno as e
    from pathlib import Path as P
    from s3fuse.cli import refused
    closed, not_owner = OSError(e.EACCES, "closed"), OSError(e.EPERM, "not the owner")
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert refused(P("/mnt/x"), "pin", closed) == (
        "/mnt/x is another user's mount, mounted without --allow-other: only its owner may pin")
    owner_only = "only the owner of the mount /mnt/x (or root) may pin"
    assert refused(P("/mnt/x"), "pin", not_owner) == owner_only
    assert refused(P("/mnt/x"), "pin") == owner_only
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    assert refused(P("/mnt/x"), "pin", closed) == owner_only
