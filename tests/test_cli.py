"""Bad input of any kind: one clear line on stderr, exit 2, nothing mounted."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mount import s3_env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s3fuse", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def env(moto_endpoint: str) -> dict[str, str]:
    return s3_env(moto_endpoint)


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, env: dict[str, str]):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "file").write_text("x")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("cache_size = [")
    no_creds = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    no_creds.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                    AWS_EC2_METADATA_DISABLED="true")
    cases = [
        (["mount", str(mnt), "--frobnicate"], env, "unrecognized arguments"),
        (["mount", str(mnt), "--source", "bucket-without-scheme"], env, "malformed S3 URI"),
        (["mount", str(mnt), "--config", str(bad_toml)], env, "invalid config"),
        (["mount", str(mnt), "--config", str(tmp_path / "none.toml")], env, "cannot read config"),
        (["mount", str(mnt), "--source", "s3://abc"], no_creds, "no AWS credentials"),
        (["mount", str(tmp_path / "missing"), "--source", "s3://abc"], env, "does not exist"),
        (["mount", str(tmp_path / "file"), "--source", "s3://abc"], env, "not a directory"),
        (["mount", str(mnt), "--source", "s3://abc", "--source", "abc=s3://other"], env, "share"),
        (["mount", "--source", "s3://abc"], env, "no mountpoint"),
        (["mount", str(mnt), "--profile", "no-such-profile"], env, "profile"),
        (["status", str(mnt)], env, "not an s3fuse mount"),
        (["umount", str(mnt)], env, "not an s3fuse mount"),
        (["bogus-command"], env, "invalid choice"),
        (["mount", str(mnt), "--cache", "x", "--source", "s3://abc"], env,
         "unrecognized arguments: --cache"),  # no abbreviations: --cache-dir? --cache-size?
        (["mount", str(mnt), "--source", "s3://abc", "--log-level", "loud"], env,
         "(one of DEBUG, INFO, WARNING, ERROR)"),
        (["mount", str(tmp_path), "--source", "s3://abc"], env, "is not empty (--allow-non-empty"),
        (["mount", str(mnt), "--source", "s3://abc", "--cache-dir", str(mnt / "cache")], env,
         "is inside the mountpoint"),
        (["sync", str(mnt), "--timeout", "-5"], env, "must be 0 or more seconds"),
        (["umount", str(mnt), "--timeout", "soon"], env, "not a number of seconds"),
    ]
    for args, case_env, message in cases:
        res = run(args, case_env)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, res.stderr)
        assert "Traceback" not in res.stderr
    assert not any(p.is_mount() for p in tmp_path.iterdir())


def test_version_and_module_entry(env: dict[str, str]):
    res = run(["--version"], env)
    assert res.returncode == 0 and res.stdout.startswith("s3fuse ")


def test_a_cache_on_a_full_disk_is_one_line_not_a_traceback(monkeypatch, capsys):
    from s3fuse import cli

    def full(args):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(cli, "cmd_cache", full)
    assert cli.main(["cache", "stats", "--cache-dir", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cache disk is full" in err


def test_output_into_a_closed_pipe_is_quiet(tmp_path: Path):
    """`s3fuse status | head -1`: the reader went away; no 'Broken pipe' error, exit 0."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "s3fuse", "cache", "stats", "--cache-dir",
                               str(cache)], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("args, commands", [
    ([], "a command is required: mount, umount, sync, status, demo, pin, unpin, service, cache"),
    (["cache"], "a command is required: stats, prune, clear"),
    # an option it does not know, before any command: named (it said a command was missing)
    (["--verison"], "unrecognized arguments: --verison"),
    (["cache", "--bogus"], "unrecognized arguments: --bogus"),
    (["--colour=abc"], "unrecognized arguments: --colour=..."),  # never a value shown
])
def test_a_missing_command_gives_the_usage_and_the_commands(env: dict[str, str], args: list[str],
                                                            commands: str):
    """One line, as design.md asks of every bad input (a usage line came before it)."""
    res = run(args, env)
    assert res.returncode == 2
    [error] = res.stderr.strip().splitlines()
    assert error.startswith("s3fuse: error: ") and error.endswith(commands)


def test_demo_on_a_file_or_under_a_missing_directory_is_one_line(env: dict[str, str],
                                                                 tmp_path: Path):
    """It said "File exists" with exit 1, and made every missing parent directory."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("x")
    for target, message in ((afile, "is not a directory"),
                            (tmp_path / "missing" / "mnt", "to make it in"),
                            (occupied, "is not empty: the demo mounts on an empty or new "
                                       "directory")):
        res = run(["demo", str(target)], env)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr
    assert not (tmp_path / "missing").exists()


def test_mount_helper_help_and_version(env: dict[str, str]):
    helper = [sys.executable, "-c", "import sys; from s3fuse.mounthelper import main; "
              "sys.exit(main())"]
    shown = subprocess.run(helper + ["--help"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: mount.s3fuse SOURCE DIRECTORY")
    assert "config=/etc/s3fuse/data.toml" in shown.stdout
    version = subprocess.run(helper + ["--version"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("s3fuse ")


def test_debug_is_a_flag_and_modules_are_chosen_apart(tmp_path: Path):
    from s3fuse.cli import make_parser
    parser = make_parser()
    assert parser.parse_args(["mount", "m", "-d"]).debug == "s3fuse"
    assert parser.parse_args(["mount", "m", "--debug"]).debug == "s3fuse"
    assert parser.parse_args(["mount", "m", "--debug-modules", "s3fuse.store"]).debug == \
        "s3fuse.store"
    assert parser.parse_args(["mount", "m", "--allow-non-empty"]).allow_non_empty is True


def test_the_demo_without_its_extra_says_how_to_get_it(env: dict[str, str], tmp_path: Path):
    blocker = tmp_path / "no_moto"
    blocker.mkdir()
    (blocker / "moto").mkdir()  # a package that cannot be found by its spec: shadowed, empty
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass _NoMoto:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'moto' or name.startswith('moto.'):\n"
        "            raise ModuleNotFoundError(name)\n        return None\n"
        "sys.meta_path.insert(0, _NoMoto())\n")
    res = run(["demo", str(tmp_path / "m")], {**env, "PYTHONPATH": f"{blocker}:{env.get('PYTHONPATH', '')}"})
    assert res.returncode == 2
    assert res.stderr.strip() == ("s3fuse: error: the demo needs its extra: pip install "
                                  "'s3fuse[demo]' (or, in a checkout: make demo)")


def test_a_relative_cache_dir_is_taken_from_the_working_directory(tmp_path: Path,
                                                                  env: dict[str, str]):
    """`--cache-dir cache` was a ValueError traceback (a relative path made into a URI)
    in `cache stats` (and in a mount's refusal of another endpoint's cache dir: the
    mount resolves the cache dir in the same place, cache/identity.py)."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / "journal.sqlite").touch()  # a cache dir with an upload journal
    stats = subprocess.run([sys.executable, "-m", "s3fuse", "cache", "stats", "--cache-dir",
                            "cache"], env=env, capture_output=True, text=True, timeout=60,
                           cwd=tmp_path)
    assert stats.returncode == 0 and "Traceback" not in stats.stderr, stats.stderr


def test_cache_stats_shows_the_pid_in_use_as_a_pid() -> None:
    """`in use by 7,645` (a thousands separator) is no pid a user can pass to kill."""
    from s3fuse.cli import _shown
    assert (_shown("in_use_by", 7645), _shown("blocks", 7645)) == ("7645", "7,645")


def test_umount_reports_what_the_mount_said_when_the_journal_cannot_be_read(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The journal unreadable after the daemon went (None: unknown) counted as nothing
    queued: exit 0, and `umount && rm -rf CACHE` lost what the mount had just listed."""
    from s3fuse import cli
    (tmp_path / "journal.sqlite").write_bytes(b"not a database " * 100)  # unreadable
    assert cli._left_behind(tmp_path, {"files": 2, "failures": []}) == 1
    assert f"2 change(s) stay queued in {tmp_path}" in capsys.readouterr().err
    assert cli._left_behind(tmp_path, {"files": 0, "failures": []}) == 0
    assert cli._left_behind(None, {"files": 2, "failures": []}) == 1  # no cache dir known
    assert "2 change(s) stay queued in its cache dir" in capsys.readouterr().err
    # neither the mount (its journal broken: EIO) nor the journal tells: exit 0 was silent
    # (a helper's finding: the cache disk detached under the mount)
    assert cli._left_behind(None, {"files": 0}, "Input/output error") == 1
    assert "whether changes stay queued is unknown" in capsys.readouterr().err
    assert cli._left_behind(tmp_path, {"files": 0}, "Input/output error") == 1


def test_discard_by_someone_not_the_owner_says_so(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    """The mount shows its failures' details to its owner only: "no failed change",
    exit 0, was wrong."""
    from s3fuse import cli
    monkeypatch.setattr(cli, "_uploads", lambda mountpoint: {
        "failures": [], "restricted": True, "hidden": {"failures": 3}})
    assert cli._discard(tmp_path) == 1
    assert "only the owner of the mount" in capsys.readouterr().err


@pytest.mark.mount
def test_umount_with_a_config_finds_its_relative_mountpoint(tmp_path: Path, backend, bucket,
                                                            mount_factory):
    """The units' ExecStop is `s3fuse umount --config FILE`: a `mountpoint` relative to the
    file (or with `~`) is the one the mount used, not one under the current directory
    (the stop failed "not an s3fuse mount", every time, under systemd's cwd /)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    m = mount_factory("--source", f"s3://{bucket}")
    (etc / "data.toml").write_text(f'mountpoint = "{os.path.relpath(m.mountpoint, etc)}"\n')
    res = subprocess.run([sys.executable, "-m", "s3fuse", "umount", "--config",
                          str(etc / "data.toml")], env=m.env, capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert res.returncode == 0, res.stderr
    assert not os.path.ismount(m.mountpoint)


@pytest.mark.mount
def test_a_cache_dir_or_log_inside_another_s3fuse_mount_is_refused(tmp_path: Path, backend,
                                                                  bucket, s3, mount_factory):
    """Accepted before: the second mount's journal, identity and blocks were uploaded to
    the first one's bucket as objects (a helper's finding), also through a symlink."""
    first = mount_factory("--source", f"s3://{bucket}")
    (tmp_path / "link").symlink_to(first.path(bucket))
    second = tmp_path / "second"
    second.mkdir()
    for option, inside in (("--cache-dir", first.path(bucket) / "cc"),
                           ("--cache-dir", tmp_path / "link" / "cc2"),
                           ("--log-file", first.path(bucket) / "daemon.log")):
        res = subprocess.run([sys.executable, "-m", "s3fuse", "mount", str(second), "--source",
                              f"s3://{bucket}", option, str(inside)], env=first.env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and "inside the s3fuse mount" in res.stderr, res.stderr
    assert not os.path.ismount(second)
    first.assert_idle()
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")

