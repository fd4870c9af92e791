"""`s3fuse demo` as a new user runs it: mounts, serves the samples, unmounts on Ctrl-C."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3fuse.demo import instructions, sample_objects

pytestmark = pytest.mark.mount


def test_demo_mounts_samples_and_cleans_up(tmp_path: Path, fuse_available: None):
    mnt = tmp_path / "demo-mnt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([sys.executable, "-m", "s3fuse", "demo", str(mnt)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        assert sorted(os.listdir(mnt)) == ["demo-data", "train"]
        big = sample_objects()["media/noise-24MiB.bin"]
        assert hashlib.sha256((mnt / "demo-data/media/noise-24MiB.bin").read_bytes()).digest() == \
            hashlib.sha256(big).digest()
        clips = sorted((mnt / "train/shards/shard-00001.tar.gz/clips").iterdir())
        assert len(clips) == 4 and clips[0].read_bytes().startswith(b"RIFF")
        assert os.getxattr(mnt / "train/audio/0001.wav", "user.s3exchange.id") == b"0001"
        printed = instructions(Path("demo-mnt"), f"{sys.executable} -m s3fuse")
        for line in printed.splitlines():  # what it prints (and README)
            if line.startswith("  "):
                command = line.strip().replace("demo-mnt", str(mnt))
                ran = subprocess.run(command, shell=True, capture_output=True, text=True,
                                     timeout=60, env=env)
                assert ran.returncode == 0 and ran.stdout, (command, ran.stderr)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])
    assert proc.returncode == 0, out
    assert "Try, in another terminal" in out and "Traceback" not in out and "WARNING" not in out
    assert f" -m s3fuse status {mnt}\n" in out  # a command a new terminal can run
    assert not os.path.ismount(mnt)


def test_the_demo_prints_a_command_a_new_shell_finds(tmp_path: Path, monkeypatch) -> None:
    """`make demo` runs .venv/bin/s3fuse, which PATH does not have: it says so."""
    from s3fuse.demo import own_command
    script = tmp_path / ".venv/bin/s3fuse"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [".venv/bin/s3fuse", "demo"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert own_command() == ".venv/bin/s3fuse"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")  # the venv activated
    assert own_command() == "s3fuse"
    monkeypatch.setattr(sys, "argv", ["/elsewhere/s3fuse/__main__.py", "demo"])
    assert own_command() == f"{sys.executable} -m s3fuse"
