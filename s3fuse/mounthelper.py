"""`mount.s3fuse`: the helper mount(8) runs for fstab entries of type `s3fuse`.

    data  /mnt/data  s3fuse  _netdev,nofail,x-systemd.automount,config=/etc/s3fuse/data.toml  0 0

mount(8) calls `mount.s3fuse SOURCE DIR [-sfnv] -o OPTIONS`. SOURCE is a config name
(/etc/s3fuse/SOURCE.toml unless `config=` is given) or an s3://BUCKET[/PREFIX] URI.
Options meant for mount(8) and systemd are dropped, `ro` means read-only, the rest
are s3fuse's own `-o` options. Returns once the mount is live, like `s3fuse mount`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from .cli import main as s3fuse_main

CONFIG_DIR = Path(os.environ.get("S3FUSE_CONFIG_DIR", "/etc/s3fuse"))
#: Options of mount(8), fstab and systemd that are not ours.
FOREIGN = {"_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "defaults", "rw",
           "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync", "atime", "noatime",
           "relatime", "nodiratime", "owner", "group", "comment", "loop"}


def translate(source: str, directory: str, options: str) -> list[str]:
    """mount(8)'s arguments -> `s3fuse mount` arguments."""
    ours: list[str] = []
    config: str | None = None
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, _, value = item.partition("=")
        if key in FOREIGN or key.startswith(("x-", "comment=")):
            continue
        if key == "config":
            config = value
        elif key == "ro":
            ours.append("read_only")
        else:
            ours.append(item)
    args = ["mount", directory]
    if source.startswith("s3://"):
        args += ["--source", source]
    elif config is None:
        config = str(CONFIG_DIR / f"{source}.toml")
    if config is not None:
        args += ["--config", config]
    if ours:
        args += ["-o", ",".join(ours)]
    return args


USAGE = "usage: mount.s3fuse SOURCE DIRECTORY [-sfnvw] [-o OPTIONS]\n"
HELP = USAGE + """
The helper mount(8) runs for fstab entries of type s3fuse:

  data  /mnt/data  s3fuse  _netdev,nofail,x-systemd.automount,config=/etc/s3fuse/data.toml  0 0

SOURCE is a config name (/etc/s3fuse/SOURCE.toml unless config= is given) or an
s3://BUCKET[/PREFIX] URI. OPTIONS are s3fuse's -o options (see `s3fuse mount --help`);
ro means read-only, mount(8)'s and systemd's own (_netdev, nofail, x-*, ...) are ignored.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return 0
    if argv and argv[0] in ("-V", "--version"):
        return s3fuse_main(["--version"])
    positional: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o" and i + 1 < len(argv):
            options.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg.startswith("-") and set(arg[1:]) <= set("sfnvw"):
            pass  # sloppy, fake, no-mtab, verbose, rw: nothing for us to do
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        sys.stderr.write(USAGE)
        return 2
    return s3fuse_main(translate(positional[0], positional[1], ",".join(options)))
