"""fstab lines, both ways mount(8) runs us: type `s3fuse` (mount.s3fuse) and type
`fuse.s3fuse` (mount.fuse3 runs `s3fuse SOURCE DIR -o OPTIONS`); the generic mount flags
(noexec, nosuid, ...) reach the kernel instead of being dropped."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from s3fuse import cli
from s3fuse.cli import make_parser
from s3fuse.config import Config, build_config
from s3fuse.daemon import fuse_options
from s3fuse.fstab import translate
from tests.support.mount import s3_env


def config_of(argv: list[str]) -> Config:
    """The Config `s3fuse <argv>` would mount with (no mountpoint checks)."""
    args = make_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in ("command", "o", "ready_fd",
                                                                 "default_log")}
    return build_config(given, args.o, {})


def test_an_fstab_source_option_beside_the_source_column_adds_a_directory() -> None:
    argv = translate("s3://lab", "/mnt/x", "_netdev,source=two=s3://lab2,manifest=m=s3://ml/k.jsonl")
    cfg = config_of(argv)
    assert [s.name for s in cfg.sources] == ["lab", "two"]
    assert [m.name for m in cfg.manifests] == ["m"]


def test_generic_mount_flags_reach_libfuse_and_the_last_of_a_pair_wins() -> None:
    argv = translate("s3://lab", "/mnt/x", "rw,nosuid,nodev,noexec,noatime,sync,dirsync,nofail")
    cfg = config_of(argv)
    assert {"noexec", "noatime", "sync", "dirsync"} <= fuse_options(cfg)
    assert {"suid", "dev", "exec"}.isdisjoint(fuse_options(cfg))
    cfg = config_of(["mount", "/mnt/x", "-o", "noexec,exec,noatime,relatime,sync,async"])
    assert cfg.mount_flags == ()
    assert config_of(["mount", "/mnt/x"]).mount_flags == ()
    assert "noatime" in fuse_options(config_of(["mount", "/mnt/x", "-o", "relatime"]))  # always


def test_suid_and_dev_never_reach_the_kernel() -> None:
    """mount.fuse3 adds `dev,suid` to the options of every fstab mount root makes: taken
    as asked for, a setuid-root program in the bucket ran as root for any user of an
    allow_other mount. Accepted, without effect: every mount stays nosuid,nodev."""
    for options in ("rw,dev,suid", "suid,dev,noexec", "nosuid,suid"):
        cfg = config_of(translate("s3://lab", "/mnt/x", options))
        assert {"suid", "dev"}.isdisjoint(fuse_options(cfg)), options
        assert not {"suid", "dev"} & set(cfg.mount_flags), options


def test_a_flag_with_a_value_is_one_line_not_a_flag() -> None:
    from s3fuse.errors import UsageError
    with pytest.raises(UsageError, match="unknown mount option 'noexec'"):
        config_of(["mount", "/mnt/x", "-o", "noexec=1"])


def test_mount_fuse3s_command_line_is_a_mount(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    seen: list[argparse.Namespace] = []

    def fake_mount(args: argparse.Namespace, argv: Any) -> int:
        seen.append(args)
        return 0
    monkeypatch.setattr(cli, "cmd_mount", fake_mount)
    assert cli.main(["s3://lab", "/mnt/x", "-o", "ro,noexec,nosuid,nodev,source=b=s3://two"]) == 0
    args = seen[-1]
    assert args.command == "mount" and args.mountpoint == "/mnt/x"
    assert args.source == ["s3://lab", "b=s3://two"]
    assert args.o == ["read_only,noexec,nosuid,nodev"]
    config = tmp_path / "data.toml"
    config.write_text("")
    assert cli.main(["data", "/mnt/y", "-o", f"config={config}"]) == 0
    assert seen[-1].config == str(config) and seen[-1].mountpoint == "/mnt/y"


def test_a_mistyped_command_is_still_reported_as_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["stauts", "/mnt/x"])
    assert exit_.value.code == 2 and "invalid choice: 'stauts'" in capsys.readouterr().err


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


def test_type_fuse_s3fuse_mounts_with_noexec(tmp_path: Path, backend: Any, bucket: str,
                                             fuse_available: None) -> None:
    """What mount.fuse3 runs for `s3://B DIR fuse.s3fuse noexec,...`: a live mount whose
    flags show in /proc/mounts, and a program in the bucket that does not run."""
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    env = s3_env(backend.endpoint, backend.access_key, backend.secret_key)
    s3fuse = [sys.executable, "-m", "s3fuse"]
    try:
        res = subprocess.run([*s3fuse, f"s3://{bucket}", str(mnt), "-o",
                              f"rw,noexec,nosuid,nodev,cache_dir={cache}"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        line = next(l for l in Path("/proc/self/mounts").read_text().splitlines()
                    if l.split()[1] == str(mnt))
        assert {"noexec", "nosuid", "nodev"} <= set(line.split()[3].split(","))
        script = mnt / bucket / "run.sh"
        script.write_text("#!/bin/sh\necho EXECUTED\n")
        script.chmod(0o755)
        with pytest.raises(PermissionError):
            subprocess.run([str(script)], capture_output=True)
        res = subprocess.run([*s3fuse, "umount", str(mnt), "--timeout", "60"], env=env,
                             capture_output=True, text=True, timeout=90)
        assert res.returncode == 0, res.stderr
        log = (cache / "s3fuse.log").read_text()
        assert "WARNING" not in log and "Traceback" not in log, log
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


def test_a_users_fstab_mount_uses_the_users_home_not_roots(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """mount(8) runs the helper of a `user` fstab line as the user, with root's HOME: the
    default cache dir and ~/.aws then pointed into /root (Permission denied). A HOME that
    another user owns gives way to the user's own; root's and a user's own stay."""
    import pwd
    from s3fuse.cli import own_home
    mine = tmp_path / "home"
    mine.mkdir()
    uid = os.stat(mine).st_uid + 1000  # the "user": the dirs here belong to someone else
    monkeypatch.setattr(os, "getuid", lambda: uid)
    monkeypatch.setattr(pwd, "getpwuid", lambda u: pwd.struct_passwd(
        ("u", "x", u, u, "", str(mine), "/bin/sh")))
    env = {"HOME": "/root"}
    own_home(env)
    assert env == {"HOME": str(mine)}
    monkeypatch.setattr(os, "getuid", lambda: 0)
    env = {"HOME": "/root"}
    own_home(env)
    assert env == {"HOME": "/root"}
