"""Running as a service: unit files, sd_notify protocol, ExecStop, and mount.s3fuse for fstab."""
from __future__ import annotations

import json
import os
import resource
import shutil
import site
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import s3_env
from tests.test_manual import build_manual
from tests.support.faultproxy import FaultProxy


REPO = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
NOBODY = 65534


@pytest.mark.parametrize("unit, mode", [("s3fuse@.service", "--system"), ("s3fuse-user@.service", "--user")])
def test_units_verify(tmp_path: Path, unit: str, mode: str):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    text = (REPO / "systemd" / unit).read_text().replace("/usr/local/bin/s3fuse", str(BIN / "s3fuse"))
    instance = tmp_path / unit.replace("@", "@data")
    instance.write_text(text)
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    manual = build_manual(tmp_path / "build")  # as `make install` installs it: verify runs
    (tmp_path / "man" / "man1").mkdir(parents=True)  # `man s3fuse(1)` for Documentation=
    shutil.copy(manual / "man" / "s3fuse.1", tmp_path / "man" / "man1")
    res = subprocess.run(["systemd-analyze", mode, "verify", str(instance)], capture_output=True,
                         text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime),
                                         "MANPATH": f"{tmp_path / 'man'}:"})
    assert res.returncode == 0, res.stderr
    # a misspelled key or a bad value is only a warning (exit 0): none may name the unit
    assert instance.name not in res.stderr, res.stderr


def service_settings(unit: str) -> dict[str, str]:
    """The [Service] section of a unit file: key -> value (one line per key here)."""
    text = (REPO / "systemd" / unit).read_text()
    section = text.split("[Service]", 1)[1].split("\n[", 1)[0]
    return dict(line.split("=", 1) for line in section.splitlines()
                if "=" in line and not line.startswith("#"))


def syscall_groups() -> dict[str, set[str]]:
    """systemd's syscall groups, each expanded to plain syscall names."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         check=True).stdout
    groups: dict[str, set[str]] = {}
    group = ""
    for line in out.splitlines():
        if line.startswith("@"):
            group = line.strip()
            groups[group] = set()
        elif line.startswith("    ") and not line.strip().startswith("#"):
            groups[group].add(line.strip())
    def expand(name: str) -> set[str]:
        return {c for m in groups[name] for c in (expand(m) if m.startswith("@") else {m})}
    return {name: expand(name) for name in groups}


def test_the_system_unit_needs_only_sys_admin_and_few_privileges():
    unit = service_settings("s3fuse@.service")
    assert unit["CapabilityBoundingSet"] == "CAP_SYS_ADMIN"
    assert unit["SystemCallFilter"] == "@system-service @mount"
    assert unit["DevicePolicy"] == "closed" and unit["DeviceAllow"] == "/dev/fuse rw"
    for key in ("MemoryHigh", "MemoryMax", "TasksMax", "LimitNOFILE", "NoNewPrivileges"):
        assert key in unit, key


#: DevicePolicy=closed: the pseudo devices systemd always allows (char major:minor), and
#: DeviceAllow=/dev/fuse rw.
CLOSED_DEVICES = ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
                  "c 5:2 rwm", "c 136:* rwm", "c 10:229 rw"]


def _size(text: str) -> int:
    return int(text[:-1]) << {"K": 10, "M": 20, "G": 30}[text[-1]] if text[-1] in "KMG" else int(text)


def confine(unit: dict[str, str], cgroups: Path) -> Callable[[], None]:
    """A preexec_fn applying what the unit sets and this machine can emulate without systemd:
    LimitNOFILE and UMask, and (cgroup v1) TasksMax, MemoryMax and the device policy."""
    def apply() -> None:
        nofile = int(unit["LimitNOFILE"])
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        os.umask(int(unit["UMask"], 8))
        pid = str(os.getpid())
        for name, files in (("pids", {"pids.max": unit["TasksMax"]}),
                            ("memory", {"memory.limit_in_bytes": str(_size(unit["MemoryMax"]))}),
                            ("devices", {"devices.deny": "a"})):
            group = cgroups / name
            for file, value in files.items():
                (group / file).write_text(value)
            if name == "devices":
                for rule in CLOSED_DEVICES:
                    (group / "devices.allow").write_text(rule)
            (group / "cgroup.procs").write_text(pid)
    return apply


@pytest.fixture
def cgroups() -> Iterator[Path]:
    """Fresh cgroup v1 groups (pids, memory, devices) for one confined daemon."""
    base = Path("/sys/fs/cgroup")
    name = f"s3fuse-test-{os.getpid()}"
    made = []
    for controller in ("pids", "memory", "devices"):
        if not os.access(base / controller, os.W_OK):
            pytest.skip("needs writable cgroup v1 hierarchies (pids, memory, devices)")
        (base / controller / name).mkdir()
        made.append(base / controller / name)
    link = Path(tempfile.mkdtemp())
    for group in made:
        (link / group.parent.name).symlink_to(group)
    yield link
    for group in made:
        group.rmdir()
    shutil.rmtree(link)


def render_system(line: str, config: Path) -> list[str]:
    """A command line of the system unit, for this venv's s3fuse and `config`."""
    return line.replace("/usr/local/bin/s3fuse", str(BIN / "s3fuse")) \
        .replace("/etc/s3fuse/%i.toml", str(config)).split()


def start_confined(config: Path, mnt: Path, env: dict[str, str],
                   cgroups: Path) -> subprocess.Popen[bytes]:
    """The system unit's ExecStart as the unit runs it, emulated without systemd: the
    capability bounding set (setpriv), no new privileges, LimitNOFILE, UMask, TasksMax,
    MemoryMax and the closed device policy (cgroup v1); returns once `mnt` is mounted."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    unit = service_settings("s3fuse@.service")
    caps = ",".join(["-all"] + ["+" + c.lower().removeprefix("cap_")
                                for c in unit["CapabilityBoundingSet"].split()])
    confined = ["setpriv", f"--bounding-set={caps}", "--inh-caps=-all",
                *(["--no-new-privs"] if unit["NoNewPrivileges"] == "yes" else [])]
    daemon = subprocess.Popen(confined + render_system(unit["ExecStart"], config), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              preexec_fn=confine(unit, cgroups))
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            pytest.fail(f"not mounted: {daemon.stderr.read().decode()}")  # type: ignore[union-attr]
        time.sleep(0.1)
    status = Path(f"/proc/{daemon.pid}/status").read_text()
    assert "CapBnd:\t0000000000200000" in status and "CapEff:\t0000000000200000" in status
    assert "NoNewPrivs:\t1" in status
    return daemon


def stop_confined(daemon: subprocess.Popen[bytes], config: Path, mnt: Path,
                  env: dict[str, str]) -> None:
    """The system unit's ExecStop: it unmounts, the daemon exits 0 without a traceback."""
    try:
        res = subprocess.run(render_system(service_settings("s3fuse@.service")["ExecStop"], config),
                             env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert daemon.wait(timeout=30) == 0 and not os.path.ismount(mnt)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert b"Traceback" not in daemon.stderr.read()  # type: ignore[union-attr]


def test_the_system_unit_mounts_under_its_own_confinement(tmp_path: Path, setup, cgroups: Path):
    """ExecStart under the unit's confinement (start_confined) mounts, reads, writes, and
    ExecStop unmounts."""
    bucket, mnt, env = setup
    config = write_config(tmp_path / "data.toml", mnt, tmp_path / "cache", bucket)
    daemon = start_confined(config, mnt, env, cgroups)
    try:
        assert (mnt / "data" / "hello.txt").read_bytes() == b"hello"
        (mnt / "data" / "new.txt").write_bytes(b"written by a confined daemon")
    finally:
        stop_confined(daemon, config, mnt, env)


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "--inh-caps=-all", *command], capture_output=True, text=True, timeout=60)


def test_posix_metadata_needs_no_capability_beyond_sys_admin(setup, cgroups: Path, public_base: Path,
                                                             moto_backend):  # type: ignore[no-untyped-def]
    """Rechecked after POSIX metadata (issue 14): chown, chmod, utimens, symlinks and xattrs
    are stored as S3 headers, never applied to local files, so the confined daemon (bounding
    set CAP_SYS_ADMIN only, allow_other) serves them to root and to another user, the
    kernel checks who may (default_permissions), and S3 gets them."""
    bucket, _, env = setup
    mnt = public_base / "mnt"   # nobody must reach it (pytest's tmp_path is root's only)
    mnt.mkdir()
    config = write_config(public_base / "data.toml", mnt, public_base / "cache", bucket,
                          "allow_other = true\n")
    daemon = start_confined(config, mnt, env, cgroups)
    try:
        data = mnt / "data"
        os.chown(data / "hello.txt", 1234, 4321)                      # root: any owner
        os.chmod(data / "hello.txt", 0o640)
        os.utime(data / "hello.txt", ns=(10**18, 10**18))
        os.symlink("hello.txt", data / "link")
        os.setxattr(data / "hello.txt", "user.origin", b"root")
        os.mkdir(data / "shared")
        os.chown(data / "shared", NOBODY, NOBODY)
        for command in (["sh", "-c", f"echo mine > {data}/shared/theirs.txt"],
                        ["chmod", "600", f"{data}/shared/theirs.txt"],
                        ["touch", "-d", "2001-02-03 04:05:06Z", f"{data}/shared/theirs.txt"],
                        ["ln", "-s", "theirs.txt", f"{data}/shared/link"],
                        ["setfattr", "-n", "user.origin", "-v", "nobody", f"{data}/shared/theirs.txt"]):
            res = as_nobody(*command)
            assert res.returncode == 0, (command, res.stderr)
        for command in (["chown", "0", f"{data}/shared/theirs.txt"],    # not theirs to give
                        ["chmod", "777", str(data / "hello.txt")],       # not their file
                        ["setfattr", "-n", "user.origin", "-v", "x", str(data / "hello.txt")]):
            res = as_nobody(*command)
            assert res.returncode != 0 and ("not permitted" in res.stderr
                                            or "denied" in res.stderr), (command, res.stderr)
        hello, theirs = os.stat(data / "hello.txt"), os.stat(data / "shared" / "theirs.txt")
        assert (hello.st_uid, hello.st_gid, stat.S_IMODE(hello.st_mode)) == (1234, 4321, 0o640)
        assert hello.st_mtime_ns == 10**18 and os.readlink(data / "link") == "hello.txt"
        assert (theirs.st_uid, stat.S_IMODE(theirs.st_mode)) == (NOBODY, 0o600)
        assert theirs.st_mtime == 981173106
        assert os.getxattr(data / "shared" / "theirs.txt", "user.origin") == b"nobody"
        assert os.readlink(data / "shared" / "link") == "theirs.txt"
    finally:
        stop_confined(daemon, config, mnt, env)   # ExecStop drains the uploads
    s3 = moto_backend.client
    head = s3.head_object(Bucket=bucket, Key="hello.txt")["Metadata"]
    assert (head["uid"], head["gid"], int(head["mode"]) & 0o7777) == ("1234", "4321", 0o640)
    head = s3.head_object(Bucket=bucket, Key="shared/theirs.txt")["Metadata"]
    assert (head["uid"], int(head["mode"]) & 0o7777) == (str(NOBODY), 0o600)
    assert s3.get_object(Bucket=bucket, Key="shared/link")["Body"].read() == b"theirs.txt"
    assert s3.get_object(Bucket=bucket, Key="shared/theirs.txt")["Body"].read() == b"mine\n"


def test_every_syscall_the_daemon_makes_is_in_the_units_filter(tmp_path: Path, setup):
    """SystemCallFilter cannot be applied without systemd here: record the syscalls of a
    mount, a read, a write and an unmount (strace) and check each is in the filter's groups."""
    if shutil.which("strace") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("needs strace and systemd-analyze")
    bucket, mnt, env = setup
    config = write_config(tmp_path / "data.toml", mnt, tmp_path / "cache", bucket)
    unit = service_settings("s3fuse@.service")
    groups = syscall_groups()
    allowed = {c for g in unit["SystemCallFilter"].split() for c in groups[g]}
    trace = tmp_path / "trace"
    daemon = subprocess.Popen(["strace", "-f", "-qq", "-c", "-o", str(trace),
                               str(BIN / "s3fuse"), "mount", "--foreground", "--config", str(config)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert (mnt / "data" / "hello.txt").read_bytes() == b"hello"
        (mnt / "data" / "new.txt").write_bytes(b"x")
        assert subprocess.run([str(BIN / "s3fuse"), "sync", str(mnt)], env=env).returncode == 0
        assert subprocess.run([str(BIN / "s3fuse"), "umount", str(mnt)], env=env).returncode == 0
        daemon.wait(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    made = {line.split()[-1] for line in trace.read_text().splitlines()
            if line.strip() and line.split()[0][0].isdigit()} - {"total"}
    assert "mount" in made, made   # libfuse mounts as root: the filter must allow it
    assert made - allowed == set()


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

        def statuses() -> list[str]:
            return [f for m in messages for f in m.split("\n") if f.startswith("STATUS=")]
        if not statuses():
            messages.append(listener.recv(4096).decode())
        # the link state and cache use, never a READY's "mounted" left standing over them
        assert "cache" in statuses()[-1], statuses()
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


def notified_until(listener: socket.socket, field: str | None, timeout: float) -> list[str]:
    """The fields sent to `listener` until `field` comes (or `timeout` passes); all those
    already there when `field` is None."""
    fields: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if field is None or remaining <= 0:
            listener.setblocking(False)
        else:
            listener.settimeout(remaining)
        try:
            fields += listener.recv(4096).decode().split("\n")
        except (BlockingIOError, TimeoutError):
            return fields
        if field is not None and field in fields:
            return fields


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
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    daemon = subprocess.Popen(render(start), env={**env, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
        # systemd is told at once that the service is stopping, and what it waits for:
        # STOPPING=1 came only after the drain, and the link-state line overwrote its STATUS
        # (waited for: ExecStop is a new Python process, slow to start on a loaded machine)
        fields = notified_until(listener, "STOPPING=1", timeout=30)
        assert "STOPPING=1" in fields, fields
        time.sleep(0.5)
        fields += notified_until(listener, None, timeout=0)
        assert stopping.poll() is None and daemon.poll() is None  # waiting for the upload
        assert [f for f in fields if f.startswith("STATUS=")][-1].startswith(
            "STATUS=unmounting: 1 upload(s)"), fields
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
        listener.close()
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


#: Settings that make systemd apply no-new-privileges to a unit that runs without
#: CAP_SYS_ADMIN (every unit of a user manager): systemd.exec(5).
IMPLY_NO_NEW_PRIVILEGES = (
    "SystemCallFilter", "SystemCallArchitectures", "RestrictAddressFamilies",
    "RestrictNamespaces", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectClock", "MemoryDenyWriteExecute", "RestrictRealtime",
    "RestrictSUIDSGID", "LockPersonality", "ProtectHostname", "PrivateUsers")
NOBODY = 65534


def test_the_dedicated_user_drop_in_lets_fusermount3_gain_root() -> None:
    """docs/installation.md's drop-in for `User=s3fuse`: with it applied over the system
    unit, no setting is left that makes systemd apply no-new-privileges to a unit without
    CAP_SYS_ADMIN (the setuid fusermount3 then failed: "mount failed: Operation not
    permitted"), and CAP_SYS_ADMIN stays in the bounding set for fusermount3 to gain."""
    doc = (REPO / "docs" / "installation.md").read_text()
    drop_in = doc.split("# systemctl edit s3fuse@data", 1)[1].split("```", 1)[0]
    unit = service_settings("s3fuse@.service")
    unit.update(dict(line.split("=", 1) for line in drop_in.splitlines()
                     if "=" in line and not line.lstrip().startswith("#")))
    assert unit["User"] == "s3fuse" and unit["NoNewPrivileges"] == "no"
    left = {k: v for k, v in unit.items()
            if k in IMPLY_NO_NEW_PRIVILEGES and v.strip() not in ("", "no")}
    assert left == {}, left
    assert "CAP_SYS_ADMIN" in unit["CapabilityBoundingSet"]


@pytest.fixture
def fuse_for_users() -> Iterator[None]:
    """/dev/fuse 0666, as on Debian workstations (0600 on some CI machines), while the test
    runs; fusermount3 must be setuid root, as the fuse3 package installs it."""
    fusermount = shutil.which("fusermount3")
    if os.geteuid() != 0 or shutil.which("setpriv") is None or fusermount is None:
        pytest.skip("needs root, setpriv and fusermount3")
    assert os.stat(fusermount).st_mode & 0o4000, "fusermount3 is not setuid (package fuse3)"
    mode = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", 0o666)
    yield
    os.chmod("/dev/fuse", mode)


def user_install(script: Path) -> None:
    """The console script `pip install --user s3fuse` writes: the system interpreter when it
    is this one's version (a venv's may live where other users cannot reach it, such as
    pyenv's under /root), this checkout and its dependencies on the path."""
    system = Path("/usr/bin/python3")
    probe = subprocess.run([str(system), "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True) if system.exists() else None
    same = probe is not None and probe.stdout.strip() == str(tuple(sys.version_info[:2]))
    script.write_text(f"#!{system if same else sys.executable}\nimport sys\n"
                      f"sys.path[:0] = {[str(REPO), *site.getsitepackages()]!r}\n"
                      "from s3fuse.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)


def test_the_user_unit_mounts_as_an_unprivileged_user(setup, fuse_for_users) -> None:
    """ExecStart and ExecStop of s3fuse-user@.service as an unprivileged user, as a user
    manager runs them: its Environment, no new privileges when the unit asks for it or
    implies it (then fusermount3 loses its setuid bit and no mount is possible), the PATH
    of a user manager, and s3fuse installed with `pip install --user` (~/.local/bin)."""
    bucket, _, env = setup
    unit = service_settings("s3fuse-user@.service")
    home = Path(tempfile.mkdtemp(prefix="s3fuse-user-home-"))
    try:
        (home / ".local" / "bin").mkdir(parents=True)
        user_install(home / ".local" / "bin" / "s3fuse")
        (home / ".config" / "s3fuse").mkdir(parents=True)
        mnt = home / "mnt"
        mnt.mkdir()
        write_config(home / ".config" / "s3fuse" / "data.toml", mnt, home / "cache", bucket)
        for path in [home, *home.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
        user_env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin",  # a user manager's
                    **{k: v for k, v in env.items() if k.startswith("AWS")}}
        for assignment in unit.get("Environment", "").split():
            name, _, value = assignment.strip('"').partition("=")
            user_env[name] = value.replace("%h", str(home))
        no_new_privs = unit.get("NoNewPrivileges") == "yes" or any(
            setting in unit for setting in IMPLY_NO_NEW_PRIVILEGES)
        as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                   "--inh-caps=-all", *(["--no-new-privs"] if no_new_privs else [])]
        render = lambda line: line.replace("%h", str(home)).replace("%i", "data") \
            .replace("%E", str(home / ".config")).split()
        daemon = subprocess.Popen(as_user + render(unit["ExecStart"]), env=user_env, cwd=home,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        mounted = lambda: f" {mnt} " in Path("/proc/self/mountinfo").read_text()  # noqa: E731
        try:  # (root may not look into a mount without allow_other: the user reads it)
            deadline = time.monotonic() + 30
            while not mounted():
                assert daemon.poll() is None, daemon.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            read = subprocess.run(as_user + ["cat", str(mnt / "data" / "hello.txt")],
                                  capture_output=True, timeout=30)
            assert read.stdout == b"hello", read.stderr
            listed = subprocess.run([str(BIN / "s3fuse"), "status", "--json"], env=env,
                                    capture_output=True, text=True, timeout=30)
            statuses = json.loads(listed.stdout)  # every s3fuse mount on the machine
            assert {"mountpoint": str(mnt), "unreadable": "another user's mount"} in statuses
            # root cannot read it: not a failure (another test's mount going away meanwhile,
            # or a dead one elsewhere on the machine, is reported and fails the listing)
            broken = [s["mountpoint"] for s in statuses if "error" in s]
            assert listed.returncode == (1 if broken else 0), listed.stderr
            assert str(mnt) not in broken
            for command in ("status", "umount", "sync"):  # named: one line (a bare EACCES)
                named = subprocess.run([str(BIN / "s3fuse"), command, str(mnt)], env=env,
                                       capture_output=True, text=True, timeout=30)
                hint = ("; root: --force unmounts it, what it has queued stays in its cache "
                        "dir for its next mount") if command == "umount" else ""
                assert (named.returncode, named.stderr) == (2, (
                    f"s3fuse: error: {mnt}: Permission denied (another user's mount, mounted "
                    f"without --allow-other{hint})\n"))
            stop = subprocess.run(as_user + render(unit["ExecStop"]), env=user_env, cwd=home,
                                  capture_output=True, text=True, timeout=60)
            assert stop.returncode == 0, stop.stderr
            assert daemon.wait(timeout=30) == 0 and not mounted()
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            if mounted():
                subprocess.run(["fusermount3", "-uz", str(mnt)])
    finally:
        shutil.rmtree(home)
