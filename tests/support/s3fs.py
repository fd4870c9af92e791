"""Mount a bucket with the real s3fs-fuse (Debian package `s3fs`), as its users do.

The interop tests (tests/test_posix_interop.py) write a tree through one tool and read it
through the other. s3fs runs daemonized with the options benchmarks/filesystems.py uses
against SeaweedFS (path-style requests, a passwd file) plus `use_xattr` (without it s3fs
refuses xattrs); no disk cache, so what it shows comes from S3. The mount is always
unmounted on the way out.
"""
from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def s3fs_mount(bucket: str, endpoint: str, access_key: str, secret_key: str, workdir: Path,
               timeout: float = 20.0) -> Iterator[Path]:
    """The bucket mounted by s3fs at `workdir`/mnt for the body of the `with`."""
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd-s3fs"
    passwd.write_text(f"{access_key}:{secret_key}\n")
    passwd.chmod(0o600)
    mountpoint = workdir / "mnt"
    mountpoint.mkdir(exist_ok=True)
    options = ",".join([f"url={endpoint}", "use_path_request_style", "endpoint=us-east-1",
                        f"passwd_file={passwd}", "use_xattr", "stat_cache_expire=1"])
    started = subprocess.run(["s3fs", bucket, str(mountpoint), "-o", options],
                             capture_output=True, text=True, timeout=timeout)
    try:
        assert started.returncode == 0, f"s3fs exited {started.returncode}: {started.stderr}"
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            assert time.monotonic() < deadline, f"s3fs did not mount within {timeout}s"
            time.sleep(0.05)
        yield mountpoint
    finally:
        unmount(mountpoint, timeout)


def unmount(mountpoint: Path, timeout: float) -> None:
    """fusermount3 -u (s3fs has flushed every closed file by then); lazily when busy."""
    deadline = time.monotonic() + timeout
    while os.path.ismount(mountpoint):
        if subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True).returncode:
            if time.monotonic() > deadline:
                subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
                return
            time.sleep(0.2)
