"""Running as a service: unit files, sd_notify protocol, ExecStop, and mount.s3fuse for fstab."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import s3_env
from tests.support.faultproxy import FaultProxy


REPO = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("unit, mode", [("s3fuse@.service", "--system"), ("s3fuse-user@.service", "--user")])
def test_units_verify(tmp_path: Path, unit: str, mode: str):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    text = (REPO / "systemd" / unit).read_text().replace("/usr/local/bin/s3fuse", str(BIN / "s3fuse"))
    instance = tmp_path / unit.replace("@", "@data")
    instance.write_text(text)
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    res = subprocess.run(["systemd-analyze", mode, "verify", str(instance)], capture_output=True,
                         text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert res.returncode == 0, res.stderr


def write_config(path: Path, mountpoint: Path, cache: Path, bucket: str, extra: str = "") -> Path:
    path.write_text(f'mountpoint = "{mountpoint}"\ncache_dir = "{cache}"\n{extra}'
                    f'[[source]]\nuri = "s3://{bucket}"\nname = "data"\n')
    return path


@pytest.fixture
def setup(tmp_path: Path, moto_backend, fuse_available):  # type: ignore[no-untyped-def]
    bucket = f"svc-{os.getpid()}-{len(list(tmp_path.parent.iterdir()))}"
    moto_backend.client.create_bucket(Bucket=bucket)
    moto_backend.client.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield bucket, mnt, moto_backend.env()
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-uz", str(mnt)])


def test_notify_ready_only_when_live_and_execstop_unmounts(tmp_path: Path, setup):
    bucket, mnt, env = setup
    config = write_config(tmp_path / "data.toml", mnt, tmp_path / "cache", bucket)
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(30)
    unit = (REPO / "systemd" / "s3fuse@.service").read_text()
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    stop = next(line for line in unit.splitlines() if line.startswith("ExecStop="))
    render = lambda line: line.split("=", 1)[1].replace("/usr/local/bin/s3fuse", str(BIN / "s3fuse")) \
        .replace("/etc/s3fuse/%i.toml", str(config)).split()
    daemon = subprocess.Popen(render(start), env={**env, "NOTIFY_SOCKET": str(sock_path)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert os.path.ismount(mnt)                 # READY=1 only once the mount is live
        assert (mnt / "data" / "hello.txt").read_bytes() == b"hello"
        res = subprocess.run(render(stop), env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert daemon.wait(timeout=30) == 0
        assert not os.path.ismount(mnt)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        listener.close()
    assert b"Traceback" not in daemon.stderr.read()


def test_execstop_drains_a_pending_upload(tmp_path: Path, setup, moto_backend):  # type: ignore[no-untyped-def]
    """`systemctl stop` while an upload is in flight: ExecStop waits for it, then unmounts."""
    bucket, mnt, _ = setup
    proxy = FaultProxy(moto_backend.endpoint)
    env = s3_env(proxy.endpoint, moto_backend.access_key, moto_backend.secret_key)
    config = write_config(tmp_path / "data.toml", mnt, tmp_path / "cache", bucket)
    unit = (REPO / "systemd" / "s3fuse@.service").read_text()
    start, stop = (next(line for line in unit.splitlines() if line.startswith(prefix))
                   for prefix in ("ExecStart=", "ExecStop="))
    render = lambda line: line.split("=", 1)[1].replace("/usr/local/bin/s3fuse", str(BIN / "s3fuse")) \
        .replace("/etc/s3fuse/%i.toml", str(config)).split()
    daemon = subprocess.Popen(render(start), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.1)
        held = proxy.hold(lambda method, path: method == "PUT" and "late.txt" in path)
        (mnt / "data" / "late.txt").write_bytes(b"written just before the stop")
        assert held.wait(30)                          # its upload is in flight
        stopping = subprocess.Popen(render(stop), env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert stopping.poll() is None and daemon.poll() is None  # waiting for the upload
        proxy.release()
        _, err = stopping.communicate(timeout=60)
        assert stopping.returncode == 0, err
        assert daemon.wait(timeout=30) == 0 and not os.path.ismount(mnt)
        body = moto_backend.client.get_object(Bucket=bucket, Key="late.txt")["Body"].read()
        assert body == b"written just before the stop"
    finally:
        if daemon.poll() is None:
            daemon.kill()
        proxy.close()
    assert b"Traceback" not in daemon.stderr.read()


def test_mount_helper_as_mount8_calls_it(tmp_path: Path, setup):
    bucket, mnt, env = setup
    configs = tmp_path / "etc"
    configs.mkdir()
    write_config(configs / "data.toml", mnt, tmp_path / "cache", bucket)
    helper = str(BIN / "mount.s3fuse")
    env = {**env, "S3FUSE_CONFIG_DIR": str(configs)}
    res = subprocess.run([helper, "data", str(mnt), "-o", "_netdev,nofail,x-systemd.automount,ro,defaults"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        assert os.path.ismount(mnt)
        assert (mnt / "data" / "hello.txt").read_bytes() == b"hello"
    finally:
        assert subprocess.run([str(BIN / "s3fuse"), "umount", str(mnt)], env=env).returncode == 0
    res = subprocess.run([helper, f"s3://{bucket}", str(mnt), "-o",
                          f"nofail,cache_dir={tmp_path / 'cache2'},metadata_ttl=5"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        assert (mnt / bucket / "hello.txt").read_bytes() == b"hello"
    finally:
        subprocess.run([str(BIN / "s3fuse"), "umount", str(mnt)], env=env)
    res = subprocess.run([helper, "missing", str(mnt)], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "cannot read config" in res.stderr
