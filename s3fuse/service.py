"""`s3fuse service install NAME [--user]`: the systemd unit and a config skeleton, in place.

The units ship inside the package (s3fuse/units/), so a `pip install` has them too. The
unit is written with ExecStart/ExecStop naming the s3fuse command that runs this (a venv,
`pip install --user`, /usr/local/bin: whatever it is), never a path that may not exist. An
existing unit that differs is kept unless `--force` (it may hold the admin's edits); an
existing config is never touched. What to run next is printed.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import UsageError
from .util.atomic import write_atomically

log = logging.getLogger(__name__)

#: What systemd accepts as an instance name here (it becomes a file name too).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Where the shipped units say the command is (rewritten to the real one).
SHIPPED_COMMAND = "/usr/local/bin/s3fuse"


@dataclass(frozen=True)
class Target:
    """Where one kind of installation puts its files, and how systemctl is called for it."""

    user: bool
    unit: Path
    config_dir: Path
    systemctl: str
    shipped_unit: str
    mountpoint: Path
    cache_dir: Path


def target(user: bool) -> Target:
    if user:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return Target(True, config / "systemd" / "user" / "s3fuse@.service", config / "s3fuse",
                      "systemctl --user", "s3fuse-user@.service", Path.home() / "s3",
                      cache / "s3fuse")
    units = Path(os.environ.get("S3FUSE_SYSTEMD_DIR", "/etc/systemd/system"))
    return Target(False, units / "s3fuse@.service",
                  Path(os.environ.get("S3FUSE_CONFIG_DIR", "/etc/s3fuse")),
                  "systemctl", "s3fuse@.service", Path("/mnt"), Path("/var/cache/s3fuse"))


def command_path() -> str:
    """The s3fuse command to put in ExecStart: the one next to this interpreter, else the
    one on PATH, else where `pip install --user` puts it (~/.local/bin, often not on PATH)."""
    for candidate in (Path(sys.executable).parent / "s3fuse", shutil.which("s3fuse"),
                      Path(site.getuserbase()) / "bin" / "s3fuse"):
        if candidate is not None and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(Path(candidate).absolute())
    raise UsageError("cannot find the s3fuse command to start: install it (pip install s3fuse) "
                     "or put it on PATH")


def shipped(name: str) -> str:
    return (resources.files("s3fuse") / "units" / name).read_text()


def render_unit(where: Target, command: str) -> str:
    text = shipped(where.shipped_unit)
    if not where.user:  # the system unit names its config dir
        text = text.replace("/etc/s3fuse/", f"{where.config_dir}/")
    for shipped_command in (SHIPPED_COMMAND, "/usr/bin/env s3fuse"):
        text = text.replace(f"={shipped_command} ", f"={command} ")
    if not man_page_installed():  # `make install` installs it; a pip install has none
        text = text.replace("Documentation=man:s3fuse(1)\n", "")
    return text


def man_page_installed() -> bool:
    """Does `man s3fuse` find a page (Documentation= must point at something that exists)?"""
    man = shutil.which("man")
    return man is not None and subprocess.run([man, "-w", "s3fuse"], capture_output=True,
                                              timeout=30).returncode == 0


def render_config(where: Target, name: str) -> str:
    text = shipped("data.toml.example")
    config = where.config_dir / f"{name}.toml"
    text = re.sub(r"^# /etc/s3fuse/data\.toml .*$",
                  f"# {config} — read by `{where.systemctl} start s3fuse@{name}`.", text, count=1,
                  flags=re.M)
    text = re.sub(r'^mountpoint = ".*"$', f'mountpoint = "{where.mountpoint / name}"', text,
                  count=1, flags=re.M)
    return re.sub(r'^cache_dir = ".*"$', f'cache_dir = "{where.cache_dir / name}"', text,
                  count=1, flags=re.M)


def install(name: str, user: bool, force: bool = False) -> list[str]:
    """Write the unit and NAME's config skeleton; the lines to show (done, then next)."""
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"invalid service name {name!r} (letters, digits, '_', '.', '-')")
    if not user and os.geteuid() != 0:
        raise UsageError("the system service is installed by root (or use --user)")
    where = target(user)
    unit = render_unit(where, command_path())
    said = []
    if where.unit.exists() and where.unit.read_text() != unit and not force:
        said.append(f"kept {where.unit}: it differs from this version's (--force replaces it)")
    elif where.unit.exists() and where.unit.read_text() == unit:
        said.append(f"{where.unit} is up to date")
    else:
        where.unit.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(where.unit, unit.encode(), 0o644)
        said.append(f"wrote {where.unit}")
    config = where.config_dir / f"{name}.toml"
    if config.exists():
        said.append(f"kept {config}")
    else:
        where.config_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        write_atomically(config, render_config(where, name).encode(), 0o600 if user else 0o640)
        said.append(f"wrote {config}: edit the mountpoint, endpoint and credentials")
    said += ["next:", f"  $EDITOR {config}",
             f"  mkdir -p {where.mountpoint / name}    # or the mountpoint you chose",
             f"  {where.systemctl} daemon-reload",
             f"  {where.systemctl} enable --now s3fuse@{name}"]
    if user:
        said.append(f"  loginctl enable-linger {os.environ.get('USER', '$USER')}    "
                    "# to mount at boot, before you log in")
    return said
