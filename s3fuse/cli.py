"""Command line: parse arguments into a Config or a command; nothing else.

Every bad input ends with one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

from . import __version__
from .config import Config, build_config, check_mountpoint
from .errors import UsageError

log = logging.getLogger(__name__)

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"s3fuse: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", nargs="?", help="directory to mount on (or 'mountpoint' in --config)")
    p.add_argument("--source", action="append", metavar="[NAME=]s3://BUCKET[/PREFIX]",
                   help="bucket or prefix shown as top-level dir NAME (repeatable)")
    p.add_argument("--manifest", action="append", metavar="[NAME=]s3://BUCKET/KEY.jsonl",
                   help="s3exchange manifest shown as top-level dir NAME (repeatable)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, "
                   "$S3_ENDPOINT_URL, $S3_ENDPOINT)")
    p.add_argument("--profile", help="AWS profile name")
    p.add_argument("--region", help="AWS region")
    p.add_argument("--addressing-style", choices=("auto", "path", "virtual"))
    p.add_argument("--secrets-env", help="yt_framework secrets.env (S3_DOWNLOAD_*/S3_UPLOAD_* keys)")
    p.add_argument("--cache-dir", help="on-disk cache directory")
    p.add_argument("--cache-size", help="cache size cap, e.g. 20G (default 10G)")
    p.add_argument("--metadata-ttl", help="seconds listings and stats are trusted (default 60)")
    p.add_argument("--read-only", action="store_const", const=True, help="every write fails with EROFS")
    p.add_argument("--sse", help="server-side encryption for uploads: AES256, aws:kms, aws:kms:dsse")
    p.add_argument("--sse-kms-key-id", help="KMS key for --sse aws:kms")
    p.add_argument("--uid", help="owner uid of every file")
    p.add_argument("--gid", help="group gid of every file")
    p.add_argument("--file-mode", help="permission bits of files, octal (default 0644)")
    p.add_argument("--dir-mode", help="permission bits of directories, octal (default 0755)")
    p.add_argument("--allow-other", action="store_const", const=True,
                   help="let other users access the mount (needs user_allow_other in /etc/fuse.conf)")
    p.add_argument("--config", help="TOML config file (command-line options win)")
    p.add_argument("-o", dest="o", action="append", default=[], metavar="KEY=VALUE,...",
                   help="options in fstab style, e.g. -o read_only,cache_size=20G")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay attached; Ctrl-C unmounts")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def make_parser() -> Parser:
    parser = Parser(prog="s3fuse", description="Mount S3 buckets and s3exchange manifests.")
    parser.add_argument("--version", action="version", version=f"s3fuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _mount_options(sub.add_parser("mount", help="mount S3 sources on a directory"))
    p = sub.add_parser("umount", help="unmount (after pending uploads are done)")
    p.add_argument("mountpoint")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the daemon")
    p = sub.add_parser("status", help="state of a mount (every s3fuse mount when none given)")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("demo", help="mount an embedded sample S3 (no account needed)")
    p.add_argument("mountpoint", nargs="?", default="demo-mnt")
    return parser


def _config_from(args: argparse.Namespace) -> Config:
    cli: dict[str, Any] = {k: v for k, v in vars(args).items()
                           if k not in ("command", "o", "ready_fd")}
    cfg = build_config(cli, args.o)
    if cfg.mountpoint is None:
        raise UsageError("no mountpoint given (argument or 'mountpoint' in --config)")
    return cfg.with_overrides(mountpoint=check_mountpoint(cfg.mountpoint))


def cmd_mount(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .cache.cachedir import CacheLock, secure_dir
    from .logs import setup_logging
    from .store.s3 import S3Store

    cfg = _config_from(args)
    store = S3Store.from_config(cfg)  # credentials problems are usage errors, before mounting
    cache_dir = secure_dir(cfg.cache_dir)
    holder = CacheLock.holder(cache_dir)
    if holder is not None:
        raise UsageError(f"cache dir {cache_dir} is in use by pid {holder}: give each mount its own --cache-dir")
    if not args.foreground:
        from .mounts import spawn_background
        code, reason = spawn_background(list(argv), cache_dir / "s3fuse.log")
        if code:
            sys.stderr.write(f"s3fuse: {reason}\n")
        return code
    from .daemon import ReadySignal, run
    setup_logging(cfg.log_level)
    ready = ReadySignal(args.ready_fd)
    try:
        return run(cfg, ready, store)
    except UsageError as exc:
        ready.failed(str(exc))
        raise


def cmd_umount(args: argparse.Namespace) -> int:
    from .mounts import daemon_pid, fusermount_unmount, require_mount, wait_gone

    mountpoint = require_mount(Path(args.mountpoint))
    try:
        pid = daemon_pid(mountpoint)
    except OSError as exc:  # the daemon is gone: a stale mount
        result = fusermount_unmount(mountpoint, lazy=True)
        if result.returncode:
            sys.stderr.write(f"s3fuse: cannot unmount {mountpoint}: {result.stderr.strip()}\n")
            return 1
        sys.stderr.write(f"s3fuse: removed stale mount {mountpoint} ({exc.strerror})\n")
        return 0
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, mountpoint, args.timeout):
        sys.stderr.write(f"s3fuse: daemon {pid} still running after {args.timeout:.0f}s\n")
        return 1
    return 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_status(status: dict[str, Any]) -> str:
    cache = status.get("cache", {})
    link = status.get("link", {})
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(link.get("since", 0)))
    lines = [
        f"{status.get('mountpoint')}: {link.get('state', '?')} since {since} (pid {status.get('pid')}, "
        f"s3fuse {status.get('version')})",
        f"  sources:   {', '.join(status.get('sources', []) + status.get('manifests', [])) or 'all buckets'}",
        f"  cache:     {_human_bytes(cache.get('used', 0))} of {_human_bytes(cache.get('limit', 0))} "
        f"in {cache.get('dir')}" + ("  [DISK FULL]" if cache.get("disk_full") else ""),
    ]
    for error in link.get("recent_errors", [])[-5:]:
        when = time.strftime("%H:%M:%S", time.localtime(error["time"]))
        lines.append(f"  error {when}: {error['error']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from .mounts import read_status, require_mount, s3fuse_mounts

    targets = [require_mount(Path(args.mountpoint))] if args.mountpoint else s3fuse_mounts()
    results = []
    for mountpoint in targets:
        try:
            results.append(read_status(mountpoint))
        except OSError as exc:
            results.append({"mountpoint": str(mountpoint), "error": exc.strerror or str(exc)})
    if args.json:
        print(json.dumps(results[0] if args.mountpoint else results, indent=2, sort_keys=True))
    elif not results:
        print("no s3fuse mounts")
    else:
        for status in results:
            print(f"{status['mountpoint']}: not responding ({status['error']})" if "error" in status
                  else format_status(status))
    return 1 if any("error" in s for s in results) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(Path(args.mountpoint), print)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    try:
        if args.command == "mount":
            return cmd_mount(args, argv)
        if args.command == "umount":
            return cmd_umount(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "demo":
            return cmd_demo(args)
    except UsageError as exc:
        sys.stderr.write(f"s3fuse: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE
