"""fstab's arguments -> `s3fuse mount` arguments, for both ways mount(8) runs us.

Type `s3fuse`: mount(8) runs `mount.s3fuse SOURCE DIR [-sfnvw] -o OPTIONS` (mounthelper.py).
Type `fuse.s3fuse`: mount(8) runs mount.fuse3, which runs `s3fuse SOURCE DIR -o OPTIONS`
(cli.py hands that form here). SOURCE is a config name (/etc/s3fuse/SOURCE.toml unless
`config=` is given) or an s3://BUCKET[/PREFIX] URI. Options meant for mount(8) and systemd
are dropped, `ro` means read-only; generic kernel flags (noexec, nosuid, ...) and the rest
are s3fuse's own `-o` options (config.py sorts them).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

CONFIG_DIR = Path(os.environ.get("S3FUSE_CONFIG_DIR", "/etc/s3fuse"))
#: Options of mount(8), fstab and systemd that are not ours (the kernel's mount flags are:
#: config.KERNEL_FLAGS).
FOREIGN = {"_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "defaults", "rw",
           "owner", "group", "comment", "loop"}
#: Options that name a top-level directory: given as flags, so that the SOURCE column's
#: --source adds to them instead of replacing them (a flag replaces a whole -o list).
LISTED = ("source", "manifest")


def translate(source: str, directory: str, options: str) -> list[str]:
    """mount(8)'s arguments -> `s3fuse mount` arguments."""
    ours: list[str] = []
    listed: list[str] = []
    config: str | None = None
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, _, value = item.partition("=")
        if key in FOREIGN or key.startswith(("x-", "comment=")):
            continue
        if key == "config":
            config = value
        elif key == "ro":
            ours.append("read_only")
        elif key in LISTED:
            listed += [f"--{key}", value]
        else:
            ours.append(item)
    args = ["mount", directory]
    if source.startswith("s3://"):
        args += ["--source", source]
    elif config is None:
        config = str(CONFIG_DIR / f"{source}.toml")
    args += listed
    if config is not None:
        args += ["--config", config]
    if ours:
        args += ["-o", ",".join(ours)]
    return args


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(positional arguments, -o option groups) of a helper's command line; mount(8)'s
    -s, -f, -n, -v, -w mean nothing to us (sloppy, fake, no-mtab, verbose, rw)."""
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
        elif not (arg.startswith("-") and set(arg[1:]) <= set("sfnvw")):
            positional.append(arg)
        i += 1
    return positional, options


def helper_call(argv: Sequence[str]) -> list[str] | None:
    """`s3fuse mount` arguments for `s3fuse SOURCE DIR [-o OPTIONS]` (what mount.fuse3 runs
    for fstab type fuse.s3fuse), else None. Only a SOURCE that is one (an s3:// URI, a
    config name whose file exists, or any name with `config=`) counts: a mistyped command
    (`s3fuse stauts /mnt`) is still reported as one."""
    if not argv or argv[0].startswith("-"):
        return None
    positional, options = split_argv(argv)
    if len(positional) != 2:
        return None
    source, joined = positional[0], ",".join(options)
    named = any(item.strip().startswith("config=") for item in joined.split(","))
    if source.startswith("s3://") or named or (CONFIG_DIR / f"{source}.toml").is_file():
        return translate(source, positional[1], joined)
    return None
