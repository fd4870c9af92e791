"""Starting a mount: one mount per mountpoint, umount waits for its daemon only, and the
reason a start failed reaches the user in its one line (fusermount3's refusal, a daemon's
error before it could say READY)."""
from __future__ import annotations

import fcntl
import os
import site
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from s3fuse import cli, mounts
from s3fuse.errors import UsageError
from s3fuse.util.fusemount import claim_mountpoint, explain, mount_with_reason
from tests.support.mount import s3_env
from tests.test_service import fuse_for_users  # noqa: F401  (a fixture)

S3FUSE = [sys.executable, "-m", "s3fuse"]
NOBODY = 65534
REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")


def as_nobody(env: dict[str, str]) -> list[str]:
    """`s3fuse` as nobody: the system interpreter (this one may live under /root, where
    nobody cannot read its library), this checkout and its dependencies on the path."""
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True) if SYSTEM_PYTHON.exists() else None
    if probe is None or probe.stdout.strip() != str(tuple(sys.version_info[:2])):
        pytest.skip("needs /usr/bin/python3 of this Python version")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site.getsitepackages()])
    env["PYTHONWARNINGS"] = "ignore"  # the system Python's own packages warn of deprecations
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            str(SYSTEM_PYTHON), "-m", "s3fuse"]


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


def test_a_mountpoint_another_process_is_mounting_is_refused(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    holder = claim_mountpoint(mnt, locks)
    assert holder is not None and stat.S_IMODE(os.stat(locks).st_mode) == 0o700
    try:
        with pytest.raises(UsageError, match="is being mounted by another process"):
            claim_mountpoint(mnt, locks)
    finally:
        os.close(holder)
    os.close(claim_mountpoint(mnt, locks))  # type: ignore[arg-type]  (free again)


def test_a_lock_on_the_mountpoint_directory_itself_stops_no_mount(tmp_path: Path) -> None:
    """Anyone who may read the directory may flock it: that lock was the mount's, and a
    local user could keep every mount there (root's service too) from starting."""
    squatter = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(squatter, fcntl.LOCK_EX)
        os.close(claim_mountpoint(tmp_path, tmp_path.parent / f"{tmp_path.name}-locks"))  # type: ignore[arg-type]
    finally:
        os.close(squatter)


def test_a_lock_dir_others_may_write_is_not_used(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert claim_mountpoint(tmp_path, shared) is None
    assert "not this user's alone" in caplog.text


def test_umount_waits_for_the_daemon_not_for_the_path_to_stop_being_a_mount(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another mount beneath the one unmounted keeps the path a mount point."""
    monkeypatch.setattr(mounts, "is_s3fuse_mount", lambda path: True)
    daemon = subprocess.Popen(["sleep", "0.2"])
    began = time.monotonic()
    assert mounts.wait_gone(daemon.pid, 10.0)
    assert time.monotonic() - began < 5
    daemon.wait()


def test_two_mounts_of_one_mountpoint_started_together_one_wins(
        tmp_path: Path, backend: Any, bucket: str, fuse_available: None) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = s3_env(backend.endpoint, backend.access_key, backend.secret_key)
    starts = [subprocess.Popen([*S3FUSE, "mount", str(mnt), "--source", f"s3://{bucket}",
                                "--cache-dir", str(tmp_path / f"cache{i}")], env=env,
                               stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        results = sorted((p.wait(timeout=90), p.stderr.read()) for p in starts)  # type: ignore
        assert results[0] == (0, ""), results
        code, err = results[1]
        assert code == 2 and err.count("\n") == 1, results
        assert "being mounted by another process" in err or "already a mount point" in err
        mounted = [line for line in Path("/proc/self/mounts").read_text().splitlines()
                   if line.split()[1] == str(mnt)]
        assert len(mounted) == 1, mounted
        res = subprocess.run([*S3FUSE, "umount", str(mnt), "--timeout", "60"], env=env,
                             capture_output=True, text=True, timeout=90)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        assert not os.path.ismount(mnt)
    finally:
        while os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


def test_fusermount3s_reason_and_a_hint_are_the_error(capfd: pytest.CaptureFixture[str]) -> None:
    def refused() -> None:
        subprocess.run(["sh", "-c", "echo 'fusermount3: user has no write access to "
                        "mountpoint /m' >&2"])
        raise RuntimeError("fuse_session_mount failed")
    with pytest.raises(RuntimeError) as info:
        mount_with_reason(refused)
    assert str(info.value) == ("fusermount3: user has no write access to mountpoint /m (mount on "
                               "a directory you own or may write, or as root)")
    assert "no write access" in capfd.readouterr().err  # the log keeps it too
    assert explain("fuse_session_mount failed", "") == "fuse_session_mount failed"
    assert "user_allow_other to /etc/fuse.conf" in explain("x", (
        "fusermount3: option allow_other only allowed if 'user_allow_other' is set in "
        "/etc/fuse.conf\n"))
    assert "no-new-privileges" in explain("x", "fusermount3: mount failed: Operation not "
                                               "permitted\n")


@pytest.mark.mount
def test_a_non_root_mount_fusermount3_refuses_says_why(
        public_base: Path, backend: Any, bucket: str, fuse_available: None,
        fuse_for_users: None) -> None:  # noqa: F811
    mine = public_base / "rootsdir"  # root's: nobody may not mount on it
    mine.mkdir()
    home = public_base / "home"
    (home / "m").mkdir(parents=True)
    os.chown(home, NOBODY, NOBODY)
    os.chown(home / "m", NOBODY, NOBODY)
    env = {**s3_env(backend.endpoint, backend.access_key, backend.secret_key), "HOME": str(home)}
    for target, extra, reason in (
            (mine, [], "fusermount3: user has no write access to mountpoint"),
            (home / "m", ["--allow-other"], "only allowed if 'user_allow_other' is set")):
        res = subprocess.run([*as_nobody(env), "mount", str(target),
                              "--source", f"s3://{bucket}", "--cache-dir",
                              str(home / f"cache-{target.name}"), *extra],
                             env=env, capture_output=True, text=True, timeout=90)
        assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
        assert reason in res.stderr and "(" in res.stderr, res.stderr
        assert "fuse_session_mount failed" not in res.stderr
        assert not os.path.ismount(target)


def test_a_daemons_error_before_it_could_mount_reaches_its_parent(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    pipe = os.fstat(write_fd).st_ino
    os.set_blocking(read_fd, False)
    try:
        code = cli.main(["mount", str(tmp_path / "missing"), "--foreground", "--ready-fd",
                         str(write_fd), "--source", "s3://lab"])
        assert code == 2
        try:
            said = os.read(read_fd, 4096).decode()
        except BlockingIOError:
            said = ""
        assert said == f"ERROR mountpoint {tmp_path / 'missing'} does not exist\n"
    finally:
        os.close(read_fd)
        try:  # still ours when nothing was sent (ReadySignal closes it after its line)
            if os.fstat(write_fd).st_ino == pipe:
                os.close(write_fd)
        except OSError:
            pass


def test_a_daemon_that_dies_without_a_word_is_explained_by_its_log(tmp_path: Path) -> None:
    log = tmp_path / "s3fuse.log"
    log.write_text("an older start's line\n")
    code, reason = mounts.spawn_background([], log, 30, program=[
        sys.executable, "-c", "import sys; sys.stderr.write('s3fuse: error: boom\\n'); "
        "sys.exit(2)"])
    assert code == 2 and reason.startswith("error: boom (the daemon exited with 2; log: ")
    code, reason = mounts.spawn_background([], tmp_path / "empty.log", 30, program=[
        sys.executable, "-c", "import sys; sys.exit(3)"])
    assert code == 3 and reason.startswith("the daemon exited with 3")


@pytest.mark.mount
def test_root_meets_another_users_mount_without_allow_other(
        public_base: Path, backend: Any, bucket: str, fuse_available: None,
        fuse_for_users: None) -> None:  # noqa: F811
    """Root may not look into it (EACCES): mounting there says so instead of calling it
    stale (and advising to detach it); umount says how root can, and --force does."""
    home = public_base / "home"
    (home / "m").mkdir(parents=True)
    os.chown(home, NOBODY, NOBODY)
    os.chown(home / "m", NOBODY, NOBODY)
    target = home / "m"
    env = {**s3_env(backend.endpoint, backend.access_key, backend.secret_key), "HOME": str(home)}
    res = subprocess.run([*as_nobody(env), "mount", str(target), "--source", f"s3://{bucket}",
                          "--cache-dir", str(home / "cache")],
                         env=env, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    try:
        root_env = s3_env(backend.endpoint, backend.access_key, backend.secret_key)
        res = subprocess.run([*S3FUSE, "mount", str(target), "--source", f"s3://{bucket}",
                              "--cache-dir", str(public_base / "rootcache")],
                             env=root_env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and "another user's mount" in res.stderr, res.stderr
        assert "stale" not in res.stderr and "fusermount3 -uz" not in res.stderr
        res = subprocess.run([*S3FUSE, "umount", str(target)], env=root_env, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 2 and "root: --force unmounts it" in res.stderr, res.stderr
        assert mounts.is_s3fuse_mount(target)  # (ismount: EACCES, False)
        res = subprocess.run([*S3FUSE, "umount", "--force", str(target)], env=root_env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "unmounted another user's mount" in res.stderr, res.stderr
        assert not mounts.is_s3fuse_mount(target)
    finally:
        if mounts.is_s3fuse_mount(target):
            subprocess.run(["fusermount3", "-uz", str(target)])
