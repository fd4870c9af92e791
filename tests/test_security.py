"""Security review (issue 7): who may read through the mount, a private cache that is
refused when unsafe, no pickles and no paths from keys in the cache, and secrets that
appear nowhere but where the user put them (not in argv, logs, status or errors)."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from s3fuse import cli
from s3fuse.cache.blocks import BlockCache
from s3fuse.cache.cachedir import secure_cache_dir
from s3fuse.config import SCALAR_OPTIONS, Config, build_config
from s3fuse.daemon import fuse_options
from s3fuse.errors import UsageError
from s3fuse.redact import credential_in_argv, is_credential_option, redact_url
from s3fuse.upload.staging import Staging
from tests.support.faultproxy import FaultProxy
from tests.support.mount import Mount, s3_env

SECRET = "Zq9SuperSecretValue7f3kXyZ0wQ"  # recognizable in any log, dump or argv
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
S3FUSE = [sys.executable, "-m", "s3fuse"]


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


def start(base: Path, env: dict[str, str], *args: str) -> Mount:
    return Mount(base / "mnt", base / "cache", base / "daemon.log", env, list(args)).start()


def stop(m: Mount) -> None:
    m.stop()
    assert not m.unexpected_log_lines(), m.log()


def needs_other_user() -> None:
    """Skip unless this test can act as another user (root, and setpriv to drop to it)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True)


# ------------------------------------------------------------------ allow_other


def test_allow_other_always_comes_with_default_permissions():
    assert fuse_options(Config(allow_other=False)) >= {"default_permissions"}
    assert "allow_other" not in fuse_options(Config(allow_other=False))
    assert fuse_options(Config(allow_other=True)) >= {"default_permissions", "allow_other"}


@pytest.mark.mount
def test_a_buckets_setuid_root_binary_gives_nobody_nothing(s3, bucket, public_base, fuse_available):
    """POSIX metadata shows what a bucket's headers say, a setuid-root mode included, to
    every user of an --allow-other mount: the mount is nosuid (and nodev), so running it
    gives nobody nothing."""
    needs_other_user()
    s3.put_object(Bucket=bucket, Key="id", Body=Path(shutil.which("id") or "/usr/bin/id").read_bytes(),
                  Metadata={"mode": str(stat.S_IFREG | stat.S_ISUID | 0o755), "uid": "0", "gid": "0"})
    mount = start(public_base / "suid", s3_env(s3.meta.endpoint_url), "--source", f"s3://{bucket}",
                  "--allow-other")
    try:
        options = next(line.split()[3] for line in Path("/proc/self/mounts").read_text().splitlines()
                       if line.split()[1] == str(mount.mountpoint))
        assert {"nosuid", "nodev"} <= set(options.split(","))
        binary = mount.path(bucket, "id")
        shown = os.stat(binary)
        assert shown.st_mode & stat.S_ISUID and shown.st_uid == 0    # shown as the bucket says
        res = as_nobody(str(binary), "-u")
        assert res.returncode == 0 and res.stdout.strip() == "65534", res.stderr
    finally:
        stop(mount)


def test_other_users_get_exactly_what_the_modes_say(s3, bucket, public_base, fuse_available):
    needs_other_user()
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"contents")
    env = s3_env(s3.meta.endpoint_url)
    private = start(public_base / "private", env, "--source", f"s3://{bucket}", "--allow-other",
                    "--file-mode", "0600")
    try:
        options = next(line.split()[3] for line in Path("/proc/self/mounts").read_text().splitlines()
                       if line.split()[1] == str(private.mountpoint))
        assert {"default_permissions", "allow_other"} <= set(options.split(","))
        path = private.path(bucket, "f.txt")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert path.read_bytes() == b"contents"                 # root (the owner) reads
        denied = as_nobody("cat", str(path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        listed = as_nobody("ls", str(private.path(bucket)))
        assert listed.stdout.split() == ["f.txt"], listed.stderr
        # the control xattrs of the root are the owner's: nobody cannot start jobs
        res = as_nobody("setfattr", "-n", "user.s3fuse.retry", "-v", "1", str(private.mountpoint))
        assert res.returncode != 0 and "Permission denied" in res.stderr
        res = as_nobody("sh", "-c", f"echo x > {private.path(bucket, 'new.txt')}")
        assert res.returncode != 0 and "Permission denied" in res.stderr
    finally:
        stop(private)
    public = start(public_base / "public", env, "--source", f"s3://{bucket}", "--allow-other")
    try:
        assert as_nobody("cat", str(public.path(bucket, "f.txt"))).stdout == "contents"
    finally:
        stop(public)
    owner_only = start(public_base / "owner", env, "--source", f"s3://{bucket}")
    try:   # without --allow-other FUSE turns every other user away, whatever the modes
        res = as_nobody("cat", str(owner_only.path(bucket, "f.txt")))
        assert res.returncode != 0 and "Permission denied" in res.stderr
    finally:
        stop(owner_only)


# ------------------------------------------------------------------ cache dir

#: Every name the daemon may create in its cache, by directory (no name derived from a key).
CACHE_NAMES = [
    r"lock", r"s3fuse\.log", r"identity\.json", r"inodes\.json", r"(meta|journal)\.sqlite(-wal|-shm|-journal)?",
    r"(blocks|pinned)", r"(blocks|pinned)/cache\.db(-wal|-shm)?", r"(blocks|pinned)/[0-9a-f]{2}",
    r"(blocks|pinned)/[0-9a-f]{2}/[0-9a-f]{2}", r"(blocks|pinned)/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val",
    r"staging", r"staging/[0-9a-f]{32}", r"manifests", r"manifests/[0-9a-f]{32}\.sqlite(-wal|-shm|-journal)?",
]


def cache_problems(cache: Path) -> list[str]:
    problems = []
    for dirpath, dirs, files in os.walk(cache):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(cache))
            st = path.lstat()
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want or st.st_uid != os.geteuid():
                problems.append(f"{rel}: {oct(st.st_mode)} uid {st.st_uid}")
            if not any(re.fullmatch(p, rel) for p in CACHE_NAMES):
                problems.append(f"{rel}: unexpected name")
    if stat.S_IMODE(cache.stat().st_mode) != 0o700:
        problems.append(f"cache dir: {oct(cache.stat().st_mode)}")
    return problems


MANIFEST = b'{"kind":"file","key":"ml/run/m.txt","size_bytes":5}\n'


@pytest.mark.mount
def test_every_cache_file_is_private_and_named_by_us(s3, bucket, mount_factory):
    s3.put_object(Bucket=bucket, Key="big.bin", Body=os.urandom(300_000))
    s3.put_object(Bucket=bucket, Key="../../escape.txt", Body=b"x")   # a hostile key, hidden
    s3.put_object(Bucket=bucket, Key="ml/run/m.txt", Body=b"hello")
    s3.put_object(Bucket=bucket, Key="ml/run/manifest.jsonl", Body=MANIFEST)
    m = mount_factory("--source", f"s3://{bucket}", "--manifest", f"run=s3://{bucket}/ml/run/manifest.jsonl")
    m.expect_log(r"hiding s3")
    root = m.path(bucket)
    assert len((root / "big.bin").read_bytes()) == 300_000
    assert m.path("run", "m.txt").read_bytes() == b"hello"
    (root / "new.txt").write_bytes(b"staged")
    with open(root / "open.txt", "wb") as held:   # a staging file still open
        held.write(b"pending")
        held.flush()
        subprocess.run([*S3FUSE, "pin", str(root / "big.bin")], check=True, capture_output=True)
        assert cache_problems(m.cache_dir) == []
    assert subprocess.run([*S3FUSE, "sync", str(m.mountpoint)], capture_output=True).returncode == 0
    m.stop()
    assert cache_problems(m.cache_dir) == []
    assert not list(m.cache_dir.parent.parent.glob("**/escape.txt"))


@pytest.mark.parametrize("spoil, message", [
    (lambda c: c.chmod(0o777), "writable by group/others"),
    (lambda c: (c / "meta.sqlite").chmod(0o666), "writable by group/others"),
    (lambda c: (c / "blocks" / "cache.db").chmod(0o620), "writable by group/others"),
    (lambda c: ((c / "journal.sqlite").unlink(), (c / "journal.sqlite").symlink_to("/etc/passwd")),
     "is a symlink"),
    (lambda c: os.chown(c / "meta.sqlite", 65534, 65534), "owned by uid 65534"),
    (lambda c: os.chown(c, 65534, 65534), "owned by uid 65534"),
])
def test_an_unsafe_cache_dir_is_refused_in_one_line(tmp_path: Path, moto_backend, spoil, message):
    if os.geteuid() != 0 and "owned" in message:
        pytest.skip("chown needs root")
    cache = tmp_path / "cache"
    secure_cache_dir(cache)
    for name in ("meta.sqlite", "journal.sqlite", "lock"):
        (cache / name).write_bytes(b"")
        (cache / name).chmod(0o600)
    BlockCache(cache / "blocks", 64 << 20).close()
    spoil(cache)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run([*S3FUSE, "mount", str(mnt), "--cache-dir", str(cache), "--source", "s3://bkt"],
                         env=moto_backend.env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and not os.path.ismount(mnt)
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_readable_cache_entries_are_tightened(tmp_path: Path):
    cache = secure_cache_dir(tmp_path / "cache")
    (cache / "meta.sqlite").write_bytes(b"")
    (cache / "meta.sqlite").chmod(0o644)
    (cache / "manifests").mkdir(mode=0o755)
    (cache / "manifests" / ("0" * 32 + ".sqlite")).write_bytes(b"")
    (cache / "manifests" / ("0" * 32 + ".sqlite")).chmod(0o640)
    cache.chmod(0o750)
    secure_cache_dir(cache)
    assert cache_problems(cache) == []


# ------------------------------------------------------------------ no pickles, no paths from keys


class _Trap:
    """Unpickling this creates the file `marker` (what a planted pickle could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def plant_pickles(db_path: Path, marker: Path) -> None:
    payload = pickle.dumps(_Trap(marker))
    db = sqlite3.connect(db_path)
    with db:
        db.execute("UPDATE Cache SET mode=4, value=?, filename=NULL", (payload,))   # pickled values
        db.execute("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count,"
                   " tag, size, mode, filename, value) VALUES (?, 0, 0, NULL, 0, 0, NULL, 0, 1, NULL, ?)",
                   (payload, b"x"))                                                  # a pickled key
    db.close()


def test_a_planted_pickle_is_never_unpickled(tmp_path: Path, caplog):
    marker = tmp_path / "pwned"
    cache = BlockCache(tmp_path / "blocks", 64 << 20, tmp_path / "pinned")
    cache.put("b", "small", "e", 0, b"tiny")
    cache.put("b", "large", "e", 0, os.urandom(100_000))
    cache.close()
    plant_pickles(tmp_path / "blocks" / "cache.db", marker)
    cache = BlockCache(tmp_path / "blocks", 64 << 20, tmp_path / "pinned")
    assert cache.get("b", "small", "e", 0) is None      # refused, dropped: a miss
    assert cache.get("b", "large", "e", 0) is None
    cache.usage()
    cache.prune(time.time() + 10, 0)
    cache.clear()
    cache.close()
    assert not marker.exists()
    assert "corrupt" in caplog.text


@pytest.mark.mount
def test_planted_pickles_in_a_real_cache(s3, bucket, mount_factory, tmp_path):
    data = os.urandom(200_000)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=data)
    s3.put_object(Bucket=bucket, Key="s.txt", Body=b"small")
    m = mount_factory("--source", f"s3://{bucket}")
    assert m.path(bucket, "f.bin").read_bytes() == data
    assert m.path(bucket, "s.txt").read_bytes() == b"small"
    m.stop()
    marker = tmp_path / "pwned"
    plant_pickles(m.cache_dir / "blocks" / "cache.db", marker)
    again = mount_factory("--source", f"s3://{bucket}", name="again", cache_dir=m.cache_dir)
    again.expect_log(r"corrupt or unreadable")
    assert again.path(bucket, "f.bin").read_bytes() == data     # refetched, not unpickled
    assert again.path(bucket, "s.txt").read_bytes() == b"small"
    again.stop()
    for command in (["stats"], ["prune", "--older-than", "0s", "--max-size", "0"], ["clear"]):
        res = subprocess.run([*S3FUSE, "cache", *command, "--cache-dir", str(m.cache_dir)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    assert not marker.exists()


@pytest.fixture
def private_umask() -> Iterator[None]:
    """The daemon's umask (set in daemon.run)."""
    old = os.umask(0o077)
    yield
    os.umask(old)


@pytest.mark.parametrize("key", ["../../../../escape", "/abs/escape", "a/../../escape", "..", "x\0y",
                                 "ü/../" * 100])
def test_keys_never_become_cache_paths(tmp_path: Path, key: str, private_umask: None):
    cache_dir = tmp_path / "in" / "cache"
    cache = BlockCache(secure_cache_dir(cache_dir) / "blocks", 64 << 20, cache_dir / "pinned")
    for size in (10, 100_000):  # inline in SQLite, and a value file of its own
        cache.put("..", key, "../etag", 0, os.urandom(size))
        cache.pin("..", key, "../etag", 1, os.urandom(size))
        assert cache.get("..", key, "../etag", 0) is not None
    cache.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["cache"]
    assert cache_problems(cache_dir) == []


def test_staging_ids_are_checked(tmp_path: Path):
    staging = Staging(tmp_path / "staging")
    for bad in ("../x", "/etc/passwd", "0" * 31, "g" * 32, "0" * 32 + "/.."):
        with pytest.raises(ValueError):
            staging.path(bad)
    sid, path = staging.create()
    assert path.parent == staging.directory and stat.S_IMODE(path.stat().st_mode) == 0o600


# ------------------------------------------------------------------ secrets


@pytest.mark.parametrize("argv", [
    ["-o", f"aws_secret_access_key={SECRET}"],
    ["-o", f"read_only,aws_access_key_id=AK,secret_key={SECRET}"],
    ["--aws-secret-access-key", SECRET],
    [f"--secret-key={SECRET}"],
    ["--password", SECRET],
    ["--api-key", SECRET],
    ["--unknown-thing", SECRET],            # not recognizably a credential: its value is not echoed
    [f"--unknown-thing={SECRET}"],
    ["--endpoint-url", f"http://user:{SECRET}@127.0.0.1:9"],
])
def test_credentials_on_the_command_line_are_refused_without_echo(tmp_path: Path, capsys, argv):
    try:
        code = cli.main(["mount", str(tmp_path), "--source", "s3://bucket", *argv])
    except SystemExit as exc:   # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and SECRET not in err, err
    assert "credentials" in err or "user:password" in err or "unrecognized arguments: --unknown-thing" in err


def test_credentials_in_config_or_endpoint_environment_are_refused(tmp_path: Path):
    toml = tmp_path / "c.toml"
    toml.write_text(f'aws_secret_access_key = "{SECRET}"\n')
    with pytest.raises(UsageError) as info:
        build_config({"config": str(toml)}, [], {})
    assert SECRET not in str(info.value) and "credentials" in str(info.value)
    with pytest.raises(UsageError) as info:
        build_config({}, [], {"AWS_ENDPOINT_URL": f"https://ak:{SECRET}@s3.example.com"})
    assert SECRET not in str(info.value) and "***@s3.example.com" in str(info.value)


def test_a_config_file_others_can_edit_is_refused(tmp_path: Path):
    toml = tmp_path / "c.toml"
    toml.write_text('cache_size = "1G"\n')
    toml.chmod(0o664)
    with pytest.raises(UsageError, match="writable by group/others"):
        build_config({"config": str(toml)}, [], {})
    toml.chmod(0o644)
    assert build_config({"config": str(toml)}, [], {}).cache_size == 1 << 30


def test_our_own_options_are_not_mistaken_for_credentials():
    names = list(SCALAR_OPTIONS) + [a.dest for a in cli.make_parser()._subparsers._group_actions[0]
                                    .choices["mount"]._actions]
    assert [n for n in names if is_credential_option(n)] == []
    assert credential_in_argv(["mount", "x", "--secrets-env", "f", "--sse-kms-key-id", "k"]) is None
    assert credential_in_argv(["--", "--secret"]) is None
    assert [n for n in ("aws_access_key_id", "key", "api_key", "session_token", "x_password")
            if not is_credential_option(n)] == []
    assert redact_url("https://a:b@h:9/p?q") == "https://***@h:9/p"
    assert redact_url("https://h:9/p") == "https://h:9/p"


def test_the_daemon_is_not_dumpable():
    code = ("import ctypes; from s3fuse.daemon import no_core_dumps; no_core_dumps(); "
            "print(ctypes.CDLL('libc.so.6').prctl(3, 0, 0, 0, 0))")   # PR_GET_DUMPABLE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_unit_files_carry_no_credentials():
    repo = Path(__file__).parent.parent
    for unit in (repo / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith(("ExecStart=", "ExecStop=", "Environment=")):
                rendered = line.split("=", 1)[1].replace("%i", "data").replace("%h", "/root")
                assert credential_in_argv(rendered.split()) is None, line
                assert not any(is_credential_option(w.split("=")[0]) for w in rendered.split()
                               if "=" in w and not w.startswith("/")), line
    example = (repo / "systemd" / "data.toml.example").read_text()
    assert not re.search(r"^\s*#?\s*aws_secret|secret_key\s*=", example, re.M)


def _pid_cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


@pytest.mark.mount
def secrets_file(tmp_path: Path, text: str) -> Path:
    """A yt_framework secrets.env, private as the daemon requires."""
    path = tmp_path / "secrets.env"
    path.write_text(text)
    path.chmod(0o600)
    return path


def env_without_credentials() -> dict[str, str]:
    """The environment with no AWS/S3 credentials: only the secrets file provides them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def test_secrets_appear_in_no_log_status_error_or_argv(tmp_path: Path, s3, bucket, fuse_available):
    """A background mount with a recognizable secret, through failures of every kind."""
    s3.put_object(Bucket=bucket, Key="ok.txt", Body=b"fine")
    s3.put_object(Bucket=bucket, Key="denied.txt", Body=b"no")
    faults = FaultProxy(s3.meta.endpoint_url)
    faults.fail(lambda method, path: "denied" in path, 403)
    faults.fail(lambda method, path: method == "PUT" and "refused" in path, 403)
    secrets = secrets_file(tmp_path, f"S3_ENDPOINT={faults.endpoint}\nS3_DOWNLOAD_ACCESS_KEY=AKREAD\n"
                           f"S3_DOWNLOAD_SECRET_KEY={SECRET}\nS3_UPLOAD_ACCESS_KEY=AKWRITE\n"
                           f"S3_UPLOAD_SECRET_KEY={SECRET}\n")
    env = env_without_credentials()
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    outputs: list[str] = []
    args = [*S3FUSE, "mount", str(mnt), "--cache-dir", str(cache), "--secrets-env", str(secrets),
            "--source", f"s3://{bucket}", "--source", "gone=s3://no-such-bucket-s3fuse",
            "--addressing-style", "path", "--log-level", "DEBUG"]
    try:
        res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        outputs += [res.stdout, res.stderr]
        assert res.returncode == 0, res.stderr
        pid = int(os.getxattr(str(mnt), "user.s3fuse.pid"))
        outputs.append(_pid_cmdline(pid))           # the daemonized child's argv
        assert (mnt / bucket / "ok.txt").read_bytes() == b"fine", (cache / "s3fuse.log").read_text()
        for path, errno_ in ((mnt / bucket / "denied.txt", 13), (mnt / bucket / "missing", 2),
                             (mnt / "gone" / "x", None)):
            with pytest.raises(OSError) as info:
                path.read_bytes()
            outputs.append(str(info.value))
            if errno_:
                assert info.value.errno == errno_
        with pytest.raises(OSError) as info:
            os.listdir(mnt / "gone")
        outputs.append(str(info.value))
        (mnt / bucket / "refused.txt").write_bytes(b"kept locally")
        for command in (["sync", "--timeout", "20"], ["status"], ["status", "--json"], ["status"]):
            res = subprocess.run([*S3FUSE, *command, str(mnt)], env=env, capture_output=True,
                                 text=True, timeout=60)
            outputs += [res.stdout, res.stderr]
        assert "refused.txt" in outputs[-2]       # the permanent failure is reported...
        outputs.append(os.getxattr(str(mnt), "user.s3fuse.uploads").decode())
    finally:
        res = subprocess.run([*S3FUSE, "umount", str(mnt), "--timeout", "10"], env=env,
                             capture_output=True, text=True)
        outputs += [res.stdout, res.stderr]
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])
        faults.close()
    log = (cache / "s3fuse.log").read_text(errors="replace")
    assert "access denied" in log and "Traceback" not in log     # ...and logged, without traces
    stored = [p.read_bytes().decode("latin-1") for p in cache.rglob("*") if p.is_file()]
    for text in (*outputs, log, *stored):
        assert SECRET not in text
    assert all(SECRET not in s.path and SECRET not in json.dumps(s.headers) for s in faults.seen)


@pytest.mark.mount
@pytest.mark.seaweedfs
def test_a_wrong_secret_is_denied_and_never_shown(tmp_path: Path, seaweedfs_backend, fuse_available):
    """SeaweedFS checks signatures: a wrong secret key is a real 403 (SignatureDoesNotMatch)
    on every request. The start sends one (the mount's first listing) and stops there with
    one line, exit 2; the wrong secret is nowhere (its argv, output, log)."""
    client = seaweedfs_backend.client
    client.create_bucket(Bucket="sec-wrong")
    client.put_object(Bucket="sec-wrong", Key="f.txt", Body=b"x")
    secrets = secrets_file(tmp_path, f"S3_ENDPOINT={seaweedfs_backend.endpoint}\n"
                           f"S3_DOWNLOAD_ACCESS_KEY={seaweedfs_backend.access_key}\n"
                           f"S3_DOWNLOAD_SECRET_KEY={SECRET}\n")
    m = Mount(tmp_path / "mnt", tmp_path / "cache", tmp_path / "daemon.log",
              env_without_credentials(),
              ["--secrets-env", str(secrets), "--source", "s3://sec-wrong", "--addressing-style",
               "path", "--log-level", "DEBUG"])
    m.mountpoint.mkdir()
    res = subprocess.run(m.command(), env=m.env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and not os.path.ismount(m.mountpoint)
    assert "SignatureDoesNotMatch" in res.stderr and "Traceback" not in res.stderr
    for text in (res.stdout, res.stderr, *(p.read_text() for p in (tmp_path / "cache").rglob("*.log"))):
        assert SECRET not in text
