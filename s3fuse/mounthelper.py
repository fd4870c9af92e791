"""`mount.s3fuse`: the helper mount(8) runs for fstab entries of type `s3fuse`.

    data  /mnt/data  s3fuse  _netdev,nofail,x-systemd.automount,config=/etc/s3fuse/data.toml  0 0

mount(8) calls `mount.s3fuse SOURCE DIR [-sfnv] -o OPTIONS`; fstab.py makes the `s3fuse
mount` of it (the same as for type `fuse.s3fuse`). Returns once the mount is live, like
`s3fuse mount`.
"""
from __future__ import annotations

import sys
from typing import Sequence

from .cli import main as s3fuse_main
from .fstab import CONFIG_DIR, FOREIGN, split_argv, translate

__all__ = ["CONFIG_DIR", "FOREIGN", "main", "translate"]

USAGE = "usage: mount.s3fuse SOURCE DIRECTORY [-sfnvw] [-o OPTIONS]\n"
HELP = USAGE + """
The helper mount(8) runs for fstab entries of type s3fuse:

  data  /mnt/data  s3fuse  _netdev,nofail,x-systemd.automount,config=/etc/s3fuse/data.toml  0 0

SOURCE is a config name (/etc/s3fuse/SOURCE.toml unless config= is given) or an
s3://BUCKET[/PREFIX] URI. OPTIONS are s3fuse's -o options (see `s3fuse mount --help`);
ro means read-only; noexec, nosuid, nodev, noatime, sync, dirsync (and exec, suid, dev,
atime, relatime, async) are the mount's kernel flags; mount(8)'s and systemd's own
(_netdev, nofail, x-*, ...) are ignored.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return 0
    if argv and argv[0] in ("-V", "--version"):
        return s3fuse_main(["--version"])
    positional, options = split_argv(argv)
    if len(positional) != 2:
        sys.stderr.write(USAGE)
        return 2
    return s3fuse_main(translate(positional[0], positional[1], ",".join(options)))
