"""`s3fuse service install NAME [--user]`: the shipped unit and a config skeleton, written
where systemd and the unit look, with the command that runs it; an admin's edits kept."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3fuse.config import load_toml

S3FUSE = [sys.executable, "-m", "s3fuse"]


def install(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(S3FUSE + ["service", "install", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def executable_of(unit: str, key: str) -> str:
    line = next(line for line in unit.splitlines() if line.startswith(f"{key}="))
    return line.split("=", 1)[1].split()[0]


def test_user_install_writes_the_unit_and_a_config_that_loads(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "USER": "ann"}
    res = install(env, "data", "--user")
    assert res.returncode == 0, res.stderr
    unit_file = tmp_path / "cfg" / "systemd" / "user" / "s3fuse@.service"
    config = tmp_path / "cfg" / "s3fuse" / "data.toml"
    unit = unit_file.read_text()
    for key in ("ExecStart", "ExecStop"):
        command = executable_of(unit, key)
        assert os.access(command, os.X_OK) and command.endswith("s3fuse"), command
    assert "%E/s3fuse/%i.toml" in unit and "NoNewPrivileges" not in unit.split("[Service]")[1] \
        .replace("# No NoNewPrivileges=", "")
    assert oct(config.stat().st_mode & 0o777) == oct(0o600)
    settings = load_toml(config)  # the skeleton is valid: every value of its type
    assert settings["mountpoint"] == str(tmp_path / "s3" / "data")
    assert settings["cache_dir"] == str(tmp_path / "cache" / "s3fuse" / "data")
    assert res.stdout.splitlines()[2:] == [
        "next:", f"  $EDITOR {config}", f"  mkdir -p {tmp_path / 's3' / 'data'}    # or the "
        "mountpoint you chose", "  systemctl --user daemon-reload",
        "  systemctl --user enable --now s3fuse@data",
        "  loginctl enable-linger ann    # to mount at boot, before you log in"]

    config.write_text(config.read_text() + "# mine\n")
    unit_file.write_text(unit + "# edited by the admin\n")
    again = install(env, "data", "--user")
    assert again.returncode == 0 and "kept" in again.stdout.splitlines()[0]
    assert unit_file.read_text().endswith("# edited by the admin\n")
    assert config.read_text().endswith("# mine\n")
    forced = install(env, "data", "--user", "--force")
    assert forced.returncode == 0 and unit_file.read_text() == unit
    assert config.read_text().endswith("# mine\n")  # a config is never replaced


@pytest.mark.skipif(os.geteuid() != 0, reason="the system unit is installed by root")
def test_system_install_points_the_unit_at_its_config_and_verifies(tmp_path: Path) -> None:
    env = {"S3FUSE_SYSTEMD_DIR": str(tmp_path / "system"), "S3FUSE_CONFIG_DIR": str(tmp_path / "etc")}
    res = install(env, "web")
    assert res.returncode == 0, res.stderr
    unit_file = tmp_path / "system" / "s3fuse@.service"
    unit = unit_file.read_text()
    assert f"--config {tmp_path}/etc/%i.toml" in unit
    assert ("Documentation=man:s3fuse(1)" in unit) == (subprocess.run(
        ["man", "-w", "s3fuse"], capture_output=True).returncode == 0 if shutil.which("man")
        else False)  # it points at something that exists, or nowhere
    assert os.access(executable_of(unit, "ExecStart"), os.X_OK)
    config = tmp_path / "etc" / "web.toml"
    assert oct(config.stat().st_mode & 0o777) == oct(0o640) and load_toml(config)
    if shutil.which("systemd-analyze"):
        instance = tmp_path / "s3fuse@web.service"
        instance.write_text(unit)
        check = subprocess.run(["systemd-analyze", "--system", "verify", str(instance)],
                               capture_output=True, text=True)
        assert check.returncode == 0 and instance.name not in check.stderr, check.stderr


@pytest.mark.parametrize("name", ["", "a b", "../x", "-x", "x" * 65])
def test_a_bad_name_is_one_line_exit_2(tmp_path: Path, name: str) -> None:
    res = install({"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}, name, "--user")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "systemd").exists()


def test_the_unit_runs_a_pip_user_install_off_path(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`python3 -m s3fuse service install` with s3fuse only in ~/.local/bin (not on PATH, as
    after `pip install --user` on many systems): the unit names that one."""
    from s3fuse import service
    (tmp_path / "bin").mkdir()
    command = tmp_path / "bin" / "s3fuse"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    monkeypatch.setattr(service.sys, "executable", str(tmp_path / "python" / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(service.site, "getuserbase", lambda: str(tmp_path))
    assert service.command_path() == str(command)
    command.unlink()
    with pytest.raises(service.UsageError, match="cannot find the s3fuse command"):
        service.command_path()
