"""Command line: parse arguments into a Config or a command; nothing else.

Every bad input ends with one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, MutableMapping, NoReturn, Sequence

from . import __version__
from .config import Config, EndpointOfProfile, build_config, check_mountpoint, check_outside_mount
from .errors import CacheFull, UsageError, disk_full
from .printable import printable
from .redact import credential_in_argv, credential_refusal, redact_unrecognized

if TYPE_CHECKING:
    from .daemon import ReadySignal

log = logging.getLogger(__name__)

EXIT_USAGE = 2
SYNC_POLL = 0.5


def _say(line: str) -> None:
    """One line on stderr, its control characters escaped (it may name a key or a path)."""
    sys.stderr.write(printable(line) + "\n")


class Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line, and takes no abbreviated options (`--cache`
    must not silently mean one of `--cache-dir`, `--cache-size`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)  # for `error`
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if "required: COMMAND" in message:  # no command given: what the commands are
            commands = _commands(self)
            unknown = [a for a in getattr(self, "_given", []) if a.startswith("-")]
            # argparse checks for the command before it reports an option it does not know
            # (`s3fuse --verison`), which was then reported as a missing command
            message = (f"unrecognized arguments: {' '.join(unknown)}" if unknown
                       else f"a command is required: {', '.join(commands or ())}")
        _say(f"{self.prog.split()[0]}: error: {redact_unrecognized(message)}")
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
    p.add_argument("--role-arn", help="assume this IAM role (credentials refreshed before expiry)")
    p.add_argument("--role-session-duration", help="seconds per assumed-role session (default 900)")
    p.add_argument("--cache-dir", help="on-disk cache directory")
    p.add_argument("--cache-size", help="cache size cap, e.g. 20G (default 10G)")
    p.add_argument("--cache-reserve", help="free space the cache never takes on its disk, e.g. "
                   "2G (default: 5%% of that file system, at most 1G)")
    p.add_argument("--metadata-ttl", help="seconds listings and stats are trusted (default 60)")
    p.add_argument("--max-inodes", help="bucket files the kernel may keep looked up before the "
                   "longest-known are dropped (looked up again when used): bounds the daemon's "
                   "memory on huge trees; 0 for no cap (default 40000)")
    p.add_argument("--request-timeout", help="seconds an S3 request may wait for data (or trickle "
                   "below 4 KiB/s) before it is retried (default 30)")
    p.add_argument("--drain-timeout", help="at unmount, seconds to wait for pending uploads "
                   "(default 120; the rest resume at the next mount)")
    p.add_argument("--read-only", action="store_const", const=True, help="every write fails with EROFS")
    p.add_argument("--no-posix-metadata", dest="posix_metadata", action="store_const", const=False,
                   help="never HEAD objects for their modes, owners and times (huge read-mostly "
                   "datasets): the defaults show, and what this mount wrote")
    p.add_argument("--sse", help="server-side encryption for uploads: AES256, aws:kms, aws:kms:dsse")
    p.add_argument("--sse-kms-key-id", help="KMS key for --sse aws:kms")
    p.add_argument("--uid", help="owner of objects that store none (default: the mounting user)")
    p.add_argument("--gid", help="group of objects that store none (default: the mounting "
                   "user's group)")
    p.add_argument("--force-owner", action="store_const", const=True,
                   help="show --uid/--gid as the owner and group of everything, whatever S3 "
                   "stores (a bucket other machines' users wrote; like s3fs -o uid=,gid=)")
    p.add_argument("--file-mode", help="permission bits of files, octal (default 0644)")
    p.add_argument("--dir-mode", help="permission bits of directories, octal (default 0755)")
    p.add_argument("--allow-other", action="store_const", const=True,
                   help="let other users access the mount (needs user_allow_other in /etc/fuse.conf)")
    p.add_argument("--config", help="TOML config file (command-line options win)")
    p.add_argument("-o", dest="o", action="append", default=[], metavar="KEY=VALUE,...",
                   help="options in fstab style, e.g. -o read_only,cache_size=20G")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument("--log-file", help="log here (reopened when logrotate moves it); default: "
                   "stderr with --foreground or under systemd, else <cache-dir>/s3fuse.log, "
                   "rotated at 10 MiB")
    p.add_argument("--default-log", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="serve Prometheus metrics there, e.g. 127.0.0.1:9101 (default: none)")
    p.add_argument("--shared-index", metavar="auto|s3://BUCKET[/PREFIX]",
                   help="share shard indexes with a fleet: fetch another machine's before "
                   "indexing an archive, publish this one's (auto: beside each manifest)")
    p.add_argument("-d", "--debug", dest="debug", action="store_const", const="s3fuse",
                   help="every s3fuse module at DEBUG (never botocore's: its lines carry "
                        "request signatures)")
    p.add_argument("--debug-modules", dest="debug", metavar="MODULES",
                   help="only these s3fuse modules at DEBUG, e.g. s3fuse.store,s3fuse.upload")
    p.add_argument("--allow-non-empty", action="store_const", const=True,
                   help="mount over a directory that has entries (they are hidden meanwhile)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay attached; Ctrl-C unmounts")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def seconds(text: str) -> float:
    """A --timeout: seconds, 0 or more (argparse says what is wrong in one line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def make_parser() -> Parser:
    parser = Parser(prog="s3fuse", description="Mount S3 buckets and s3exchange manifests.")
    parser.add_argument("--version", action="version", version=f"s3fuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                metavar="COMMAND")
    _mount_options(sub.add_parser("mount", help="mount S3 sources on a directory"))
    p = sub.add_parser("umount", help="unmount (after pending uploads are done)")
    p.add_argument("mountpoint", nargs="?", help="the mount (or 'mountpoint' in --config)")
    p.add_argument("--config", help="TOML config naming the mountpoint (for systemd's ExecStop)")
    p.add_argument("--timeout", type=seconds, default=600.0, help="seconds to wait for the daemon")
    p.add_argument("--force", action="store_true",
                   help="unmount even while files are open for writing (what they wrote so "
                        "far is uploaded; their next writes fail)")
    p = sub.add_parser("sync", help="wait until every pending upload of a mount is in S3")
    p.add_argument("mountpoint")
    p.add_argument("--timeout", type=seconds, help="give up after this many seconds (exit 1)")
    p.add_argument("--retry", action="store_true", help="first queue failed uploads again")
    p.add_argument("--discard", action="store_true",
                   help="first give up the failed changes (listed; asks on a terminal): "
                        "their keys show S3's version again, a failed upload's bytes are lost")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p = sub.add_parser("status", help="state of a mount (every s3fuse mount when none given)")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("demo", help="mount an embedded sample S3 (no account needed)")
    p.add_argument("mountpoint", nargs="?", default="demo-mnt")
    for action, text in (("pin", "download everything under PATH and keep it offline"),
                         ("unpin", "let pinned data be evicted again")):
        p = sub.add_parser(action, help=text)
        p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories inside a mount")
        p.add_argument("--no-wait", action="store_true", help="start the job and return")
    service = sub.add_parser("service", help="install the systemd unit and a config skeleton")
    ssub = service.add_subparsers(dest="service_command", required=True, parser_class=Parser,
                                  metavar="COMMAND")
    p = ssub.add_parser("install", help="write s3fuse@.service and NAME.toml, say what next")
    p.add_argument("name", help="the instance: s3fuse@NAME, configured by NAME.toml")
    p.add_argument("--user", action="store_true",
                   help="for this user (~/.config/systemd/user), not the system (root)")
    p.add_argument("--force", action="store_true", help="replace a unit that differs")
    cache = sub.add_parser("cache", help="inspect and trim the on-disk cache")
    csub = cache.add_subparsers(dest="cache_command", required=True, parser_class=Parser,
                                metavar="COMMAND")
    for name, text in (("stats", "size, entries, pinned bytes, hit rate"),
                       ("prune", "drop cached blocks by age and/or down to a size"),
                       ("clear", "drop every cached block and pin (never pending uploads)")):
        p = csub.add_parser(name, help=text)
        p.add_argument("--cache-dir", help="cache directory (default: from --config, else the default)")
        p.add_argument("--config", help="TOML config whose cache_dir/cache_size to use")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "prune":
            p.add_argument("--older-than", help="drop blocks not read for this long, e.g. 7d")
            p.add_argument("--max-size", help="then drop least recently used blocks down to this size")
        if name == "clear":
            p.add_argument("--force", action="store_true", help="even while a daemon uses the cache")
    return parser


def _profile_endpoint() -> EndpointOfProfile:
    """botocore's reading of a profile's endpoint_url (imported only by the commands that
    need it: botocore costs start-up time)."""
    from .store.botosession import profile_endpoint
    return profile_endpoint


def _config_from(args: argparse.Namespace) -> Config:
    cli: dict[str, Any] = {k: v for k, v in vars(args).items()
                           if k not in ("command", "o", "ready_fd", "default_log")}
    cfg = build_config(cli, args.o, profile_endpoint=_profile_endpoint())
    if cfg.mountpoint is None:
        raise UsageError("no mountpoint given (argument or 'mountpoint' in --config)")
    return cfg.with_overrides(mountpoint=check_mountpoint(cfg.mountpoint, cfg.allow_non_empty))


def cmd_mount(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """`s3fuse mount`. A daemon (--foreground) makes its ReadySignal before anything can
    fail: whatever ends the start reaches the `s3fuse mount` that spawned it (and systemd)
    as its one line, not as "the daemon exited with 2"."""
    ready = None
    if args.foreground:
        from .daemon import ReadySignal
        ready = ReadySignal(args.ready_fd)
    try:
        return _mount(args, argv, ready)
    except (UsageError, OSError) as exc:
        if ready is not None:
            ready.failed(str(exc) if isinstance(exc, UsageError) else _os_error(exc))
        raise


def _mount(args: argparse.Namespace, argv: Sequence[str], ready: "ReadySignal | None") -> int:
    """Check everything that can be checked before mounting; then the daemon (`ready`
    given: this is it) or the background start of one."""
    from .cache.cachedir import CacheLock, secure_cache_dir
    from .cache.identity import check_identity, identity_of, resolve_cache_dir
    from .logs import setup_logging
    from .store.s3 import S3Store

    os.umask(0o077)  # the cache dir and the daemon log are private
    cfg = _config_from(args)
    store = S3Store.from_config(cfg)  # credentials problems are usage errors, before mounting
    identity = identity_of(cfg)
    cfg = cfg.with_overrides(cache_dir=resolve_cache_dir(cfg.cache_dir, identity))
    assert cfg.cache_dir is not None and cfg.mountpoint is not None
    from .mounts import s3fuse_mounts
    others = s3fuse_mounts()
    check_outside_mount(cfg.mountpoint, cfg.cache_dir, "cache dir", others)
    if cfg.log_file is not None:
        check_outside_mount(cfg.mountpoint, cfg.log_file, "log file", others)
    cache_dir = secure_cache_dir(cfg.cache_dir)
    holder = CacheLock.holder(cache_dir)
    if holder is not None:
        raise UsageError(f"cache dir {cache_dir} is in use by pid {holder}: give each mount its own --cache-dir")
    check_identity(cache_dir, identity)  # the daemon checks again under the lock, and records it
    if ready is None:
        from .mounts import spawn_background
        default_log = cfg.log_file is None
        log_file = cache_dir / "s3fuse.log" if default_log else cfg.log_file
        code, reason = spawn_background(
            list(argv) + (["--log-file", str(log_file), "--default-log"] if default_log else []),
            log_file)
        if code:
            _say(f"s3fuse: {reason}")
        elif reason:
            _say(f"s3fuse: warning: {reason}")
        return code
    from .daemon import run
    setup_logging(cfg.log_level, cfg.debug, cfg.log_file, rotate=args.default_log)
    os.chdir("/")  # a daemon keeps no directory busy (the USB stick it was started from)
    return run(cfg, ready, store)


def cmd_umount(args: argparse.Namespace) -> int:
    from .mounts import daemon_pid, is_s3fuse_mount, require_mount, wait_gone

    target = args.mountpoint
    if target is None and args.config:
        from .config import load_config_file  # `~` and relative paths as the mount read them
        target = load_config_file(Path(args.config)).get("mountpoint")
    if target is None:
        raise UsageError("no mountpoint given (argument or 'mountpoint' in --config)")
    mountpoint = require_mount(Path(target))
    try:
        pid = daemon_pid(mountpoint)
    except PermissionError as exc:  # not a stale mount: one we may not look into
        if os.getuid() != 0:
            raise not_ours(mountpoint, exc) from None
        if not args.force:
            raise not_ours(mountpoint, exc, "; root: --force unmounts it, what it has queued "
                           "stays in its cache dir for its next mount") from None
        # root may (live, or its daemon gone): a live daemon then stops, and what it had
        # queued is in its journal for the next mount with its cache dir
        return _detach(mountpoint, f"unmounted another user's mount {mountpoint}; what it "
                       "had queued stays in its cache dir and is uploaded by its next mount")
    except OSError as exc:  # the daemon is gone: a stale mount
        return _detach(mountpoint, f"removed stale mount {mountpoint} ({exc.strerror})")
    unknown: str | None = None  # why the mount could not say what it has queued
    try:
        left = _uploads(mountpoint)
    except OSError as exc:
        left, unknown = {"files": 0}, exc.strerror or str(exc)
    writing = left.get("open_for_writing", 0)
    if writing and not args.force:  # as umount(8) refuses a busy mount: their bytes are at stake
        _say(f"s3fuse: {mountpoint} is busy: {writing} file(s) open for writing "
             f"(`fuser -vm {mountpoint}` lists the processes); close them, or "
             "`s3fuse umount --force` (what they wrote so far is uploaded, their next writes fail)")
        return 1
    if left["files"]:
        _say(f"s3fuse: waiting for uploads before unmounting: {_queue_line(left)}")
    cache_dir = _cache_dir_of(mountpoint)
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:  # another user's daemon (a mount with --allow-other)
        _say(f"s3fuse: error: {refused(mountpoint, 'unmount it')}")
        return 1
    if not wait_gone(pid, args.timeout):
        _say(f"s3fuse: daemon {pid} still running after {args.timeout:.0f}s")
        return 1
    if is_s3fuse_mount(mountpoint):
        _say(f"s3fuse: unmounted; {mountpoint} is still an s3fuse mount (another one was "
             f"beneath, or it was left behind): `s3fuse umount {mountpoint}` again removes it")
    return _left_behind(cache_dir, left, unknown)


def _cache_dir_of(mountpoint: Path) -> Path | None:
    from .mounts import read_status
    try:
        return Path(read_status(mountpoint)["cache"]["dir"])
    except (OSError, KeyError, ValueError):
        return None


def _left_behind(cache_dir: Path | None, before: dict[str, Any],
                 unknown: str | None = None) -> int:
    """After the daemon is gone: 1, with what is left, when changes stay queued in its
    cache dir (the drain timed out, or uploads failed for good): a script that went on
    to remove the cache dir (`s3fuse umount M && rm -rf CACHE`) would lose them. Also 1
    when neither the mount (`unknown`: why it could not say) nor the journal told."""
    from .cache.identity import queued_uploads
    failed = _failed(before) if "failures" in before else 0
    queued = queued_uploads(cache_dir) if cache_dir is not None else None
    if queued is None and unknown is not None:
        _say(f"s3fuse: unmounted, but whether changes stay queued is unknown (the mount "
             f"answered: {unknown}; its journal could not be read): keep "
             f"{cache_dir or 'its cache dir'} and mount with it again")
        return 1
    if queued is None:  # the journal could not be read: what the mount said before
        queued = before.get("files", 0) + failed
    if not queued:
        return 0
    _say(f"s3fuse: unmounted, but {queued} change(s) stay queued in {cache_dir or 'its cache dir'}"
         + (f" ({failed} failed for good: `s3fuse sync` lists them)" if failed else "")
         + ": the next mount with this cache dir sends them; keep it")
    return 1


def _uploads(mountpoint: Path, syncing: bool = False) -> dict[str, Any]:
    """The mount's upload queue; `syncing`: asked by `s3fuse sync`, which also releases
    the versions held for their writer's release (upload/queue.py, `hold`)."""
    from .control import SYNC, UPLOADS
    return json.loads(os.getxattr(str(mountpoint), SYNC if syncing else UPLOADS))


def _queue_line(q: dict[str, Any]) -> str:
    text = f"{q['files']} pending ({_human_bytes(q['bytes'])}), {q['uploading']} uploading"
    if q.get("oldest_age") is not None:
        text += f", oldest {q['oldest_age']:.0f}s"
    if q.get("read_only") and q["files"]:
        text += "; kept for a read-write mount (this one is read-only)"
    elif q.get("online") is False:
        text += "; S3 unreachable: waiting for the link"
    return text


def _failed(q: dict[str, Any]) -> int:
    """Failed uploads, also when the daemon shows a summary only (to a user not its owner)."""
    return len(q["failures"]) or q.get("hidden", {}).get("failures", 0)


def _report_failures(q: dict[str, Any]) -> None:
    for failure in q["failures"]:
        _say(f"s3fuse: FAILED {failure['uri']}: {failure['error']}")
    if _failed(q):
        _say(f"s3fuse: {_failed(q)} upload(s) failed and are kept; fix the "
             "cause, then `s3fuse sync --retry`"
             + (" on a read-write mount with this cache dir" if q.get("read_only") else "")
             + ", or give them up: `s3fuse sync --discard`"
             + (" (the mount's owner sees which)" if q.get("restricted") else ""))


DISCARD_BATCH = 1000  # job ids per request (an xattr value is at most 64 KiB)


def _failed_change(failure: dict[str, Any]) -> str:
    """One failed change for the list `sync --discard` shows: what giving it up loses."""
    from .upload.journal import CHANGE_NAMES
    op = failure.get("op", "put")
    what = CHANGE_NAMES.get(op, op)
    if op == "put":
        what += f" of {_human_bytes(failure['size'])}: these bytes are lost"
    return f"  {failure['uri']}: {what} ({failure['error']})"


def _confirmed(count: int) -> bool:
    """On a terminal, ask; elsewhere `--discard` itself is the request."""
    if not sys.stdin.isatty():
        return True
    sys.stderr.write(f"give up these {count} change(s)? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _not_owner(mountpoint: Path) -> int:
    _say(f"s3fuse: error: {refused(mountpoint, 'give up changes')}")
    return 1


def refused(mountpoint: Path, what: str, exc: OSError | None = None) -> str:
    """Why the mount refused a control request: not its owner (the daemon's EPERM); or,
    for root, the kernel's EACCES of a mount made without --allow-other, which is closed
    to root too ("the owner (or root)" was what root read then)."""
    if exc is not None and exc.errno == errno.EACCES and os.getuid() == 0:
        return (f"{mountpoint} is another user's mount, mounted without --allow-other: "
                f"only its owner may {what}")
    return f"only the owner of the mount {mountpoint} (or root) may {what}"


def _discard(mountpoint: Path) -> int:
    """`sync --discard`: list the failed changes, ask, give them up; 0, or 1 when refused."""
    from .control import DISCARD
    q = _uploads(mountpoint)
    failures = q["failures"]
    if not failures and _failed(q):  # shown to the mount's owner only (control.py)
        return _not_owner(mountpoint)
    if not failures:
        _say("s3fuse: no failed change to give up")
        return 0
    _say(f"s3fuse: failed changes to give up (each key shows S3's version again; copy a "
         f"file out of the mount first to keep its bytes):")
    for failure in failures:
        _say(_failed_change(failure))
    if not _confirmed(len(failures)):
        _say("s3fuse: nothing given up")
        return 1
    ids = [str(failure["job"]) for failure in failures]
    dropped = 0
    try:
        for start in range(0, len(ids), DISCARD_BATCH):
            os.setxattr(str(mountpoint), DISCARD, " ".join(ids[start:start + DISCARD_BATCH]).encode())
            dropped += len(json.loads(os.getxattr(str(mountpoint), DISCARD))["dropped"])
    except PermissionError:
        return _not_owner(mountpoint)
    kept = len(ids) - dropped
    _say(f"s3fuse: gave up {dropped} failed change(s)"
         + (f"; {kept} not: no longer failed (queued again meanwhile)" if kept else ""))
    return 0


def not_ours(mountpoint: Path, exc: OSError, hint: str = "") -> UsageError:
    """The one line for a mount the caller may not look into."""
    return UsageError(f"{mountpoint}: {exc.strerror} (another user's mount, mounted without "
                      f"--allow-other{hint})")


def _detach(mountpoint: Path, done: str) -> int:
    """Unmount lazily a mount no daemon of ours can be asked to end; say `done`."""
    from .mounts import fusermount_unmount
    result = fusermount_unmount(mountpoint, lazy=True)
    if result.returncode:
        _say(f"s3fuse: cannot unmount {mountpoint}: {result.stderr.strip()}")
        return 1
    _say(f"s3fuse: {done}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from .mounts import require_mount

    if args.retry and args.discard:
        raise UsageError("--retry and --discard exclude each other: retry the failed changes, "
                         "or give them up")
    mountpoint = require_mount(Path(args.mountpoint))
    if args.discard and _discard(mountpoint):
        return 1
    if args.retry:
        from .control import RETRY
        try:
            os.setxattr(str(mountpoint), RETRY, b"1")
        except PermissionError as exc:
            _say(f"s3fuse: error: {refused(mountpoint, 'retry uploads', exc)}")
            return 1
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            _say(f"s3fuse: error: {mountpoint} is mounted read-only: its failed uploads are "
                 "kept for a read-write mount with the same cache dir")
            return 1
    began = time.monotonic()
    shown = False
    while True:
        try:
            q = _uploads(mountpoint, syncing=True)
        except PermissionError as exc:  # a bare "Permission denied" before
            raise not_ours(mountpoint, exc) from None
        if q["files"] == 0:
            break
        if q.get("read_only"):  # nothing will change: the queue waits for a read-write mount
            _say(f"s3fuse: {mountpoint} is mounted read-only: {_queue_line(q)}")
            _report_failures(q)
            return 1
        if args.timeout is not None and time.monotonic() - began > args.timeout:
            if shown:
                _say("")
            _say(f"s3fuse: timed out: {_queue_line(q)}")
            _report_failures(q)
            return 1
        if not args.quiet and sys.stderr.isatty():
            sys.stderr.write(f"\r{_queue_line(q)}\033[K")
            shown = True
        time.sleep(SYNC_POLL)
    if shown:
        sys.stderr.write("\r\033[K")
    _report_failures(q)
    return 1 if _failed(q) else 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ratio(value: float | None) -> str:
    return "none read yet" if value is None else f"{value:.1%}"


def _shown(key: str, value: Any) -> str:
    """A `cache` command's value for people: sizes in units, no Python reprs."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none read yet" if key == "hit_rate" else "-"
    if key == "hit_rate":
        return _ratio(value)
    if isinstance(value, int) and ("bytes" in key or key in ("used", "pinned", "limit")):
        return _human_bytes(value)
    if isinstance(value, list):
        return ", ".join(f"{item['path']} ({item['state']})" if isinstance(item, dict) else str(item)
                         for item in value) or "none"
    if key == "in_use_by":  # a pid: no thousands separator (`kill 7645`, not 7,645)
        return str(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def _sources(status: dict[str, Any]) -> str:
    if status.get("restricted"):
        return "(shown to the mount's owner)"
    return ", ".join(status.get("sources", []) + status.get("manifests", [])) or "all buckets"


def format_status(status: dict[str, Any]) -> str:
    cache = status.get("cache", {})
    link = status.get("link", {})
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(link.get("since", 0)))
    lines = [
        f"{status.get('mountpoint')}: {link.get('state', '?')} since {since} (pid {status.get('pid')}, "
        f"s3fuse {status.get('version')})",
        f"  sources:   {_sources(status)}",
        f"  cache:     {_human_bytes(cache.get('used', 0))} of {_human_bytes(cache.get('limit', 0))}"
        + (f" in {cache['dir']}" if cache.get("dir") else "") + ("  [DISK FULL: reads are not being cached]" if cache.get("disk_full") else ""),
        "  reads:     no block read yet" if cache.get("hit_ratio") is None else
        f"  reads:     {_ratio(cache.get('hit_ratio'))} of blocks from the cache"
        + (f" ({cache['hits']:,} hits, {cache['misses']:,} fetched from S3)"
           if "hits" in cache else ""),
        f"  pinned:    {_human_bytes(cache.get('pinned', 0))} in "
        f"{len(status.get('pins', [])) or status.get('hidden', {}).get('pins', 0)} pins"
        + ("  [pinned data alone exceeds the cache limit: kept, not evicted]"
           if cache.get("pinned_over_limit") else ""),
    ]
    inodes = status.get("inodes")
    if inodes is not None:
        lines.append(f"  inodes:    {inodes['held']:,} held by the kernel"
                     + (f" (cap {inodes['cap']:,}; {inodes['invalidated']:,} dropped since start)"
                        if inodes["cap"] else " (no cap)"))
    for failed in status.get("manifest_failures", []):
        lines.append(f"  manifest:  {failed['uri']} not indexed: its build failed "
                     f"{failed['failures']} time(s) ({failed['reason']}); next try in "
                     f"{failed['retry_in']}s")
    q = status.get("uploads")
    if q is not None:
        lines.append(f"  uploads:   {_queue_line(q)}" + (f", {_failed(q)} FAILED" if _failed(q) else ""))
        for failure in q["failures"][:10]:
            lines.append(f"  failed:    {failure['uri']}: {failure['error']}")
        for item in q.get("retrying", [])[:5]:
            lines.append(f"  retrying:  {item['uri']} (attempt {item['attempts']}): {item['error']}")
        for conflict in q.get("conflicts", [])[:5]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(conflict["time"]))
            if conflict.get("kind") == "kept-remote":
                lines.append(f"  kept:      {conflict['uri']} changed in S3 since it was removed "
                             f"here; the newer version was kept ({when})")
            else:
                lines.append(f"  conflict:  {conflict['uri']} changed in S3; local version saved "
                             f"as {conflict['conflict_uri']} ({when})")
    requests = status.get("requests")
    if requests:
        top = sorted(requests.items(), key=lambda item: -item[1])
        lines.append(f"  requests:  {sum(requests.values()):,} to S3 since start, "
                     f"{status.get('requests_per_second', 0):g}/s on average ("
                     + ", ".join(f"{name} {count:,}" for name, count in top[:6])
                     + (", ..." if len(top) > 6 else "") + ")")
    for error in link.get("recent_errors", [])[-5:]:
        when = time.strftime("%H:%M:%S", time.localtime(error["time"]))
        lines.append(f"  error {when}: {error['error']}")
    tasks = status.get("supervisor")
    if tasks is not None:
        kinds = tasks.get("kinds", {})
        running = [f"{name} {k['running']}" for name, k in kinds.items() if k["running"]]
        failed = [name for name, k in kinds.items() if k["state"] == "failed"]
        lines.append(f"  tasks:     {', '.join(running) or 'none running'}"
                     + (f"  [FAILED: {', '.join(failed)}]" if failed else ""))
        for failure in tasks.get("recent_failures", [])[-5:]:
            when = time.strftime("%H:%M:%S", time.localtime(failure["time"]))
            what = " ".join(filter(None, (failure["kind"], failure["task"])))
            lines.append(f"  task {when}: {what} failed ({failure['action']}): {failure['error']}")
    if status.get("restricted"):
        lines.append("  (keys, paths and errors are shown to the mount's owner only)")
    return "\n".join(printable(line) for line in lines)  # keys may hold control characters


def cmd_status(args: argparse.Namespace) -> int:
    from .mounts import read_status, require_mount, s3fuse_mounts

    targets = [require_mount(Path(args.mountpoint))] if args.mountpoint else s3fuse_mounts()
    results = []
    for mountpoint in targets:
        try:
            results.append(read_status(mountpoint))
        except PermissionError as exc:
            if args.mountpoint:
                raise not_ours(mountpoint, exc) from None
            # listing every mount: another user's is theirs to watch, not a failure here
            results.append({"mountpoint": str(mountpoint), "unreadable": "another user's mount"})
        except OSError as exc:
            results.append({"mountpoint": str(mountpoint), "error": exc.strerror or str(exc)})
    if args.json:
        print(json.dumps(results[0] if args.mountpoint else results, indent=2, sort_keys=True))
    elif not results:
        print("no s3fuse mounts")
    else:
        for status in results:
            if "unreadable" in status:
                print(printable(f"{status['mountpoint']}: {status['unreadable']}, not readable "
                                "by you"))
            else:
                print(printable(f"{status['mountpoint']}: not responding ({status['error']})")
                      if "error" in status else format_status(status))
    return 1 if any("error" in s for s in results) else 0


def _mount_of(path: Path) -> Path:
    from .mounts import is_s3fuse_mount
    for candidate in (path, *path.parents):
        if is_s3fuse_mount(candidate):
            return candidate
    raise UsageError(f"{path} is not inside an s3fuse mount")


def _bar(job: dict[str, Any], began: float) -> str:
    total, done = job["bytes_total"], job["bytes_done"]
    fraction = done / total if total else (1.0 if job["state"] != "running" else 0.0)
    rate = done / max(time.monotonic() - began, 1e-3)
    eta = (total - done) / rate if rate > 0 and total > done else 0
    filled = min(30, round(fraction * 30))  # as the percentage beside it rounds
    return (f"[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {_human_bytes(done)}/"
            f"{_human_bytes(total)}  {job['files_done']}/{job['files_total']} files  "
            f"{_human_bytes(rate)}/s  ETA {eta:.0f}s")


def cmd_pin(args: argparse.Namespace) -> int:
    from .control import JOBS, PIN, UNPIN

    code = 0
    for raw in args.paths:
        target = Path(os.path.abspath(raw))
        mount = _mount_of(target)
        rel = "" if target == mount else str(target.relative_to(mount))
        try:
            os.setxattr(str(mount), PIN if args.command == "pin" else UNPIN, os.fsencode(rel))
        except PermissionError as exc:  # EPERM from the daemon, or EACCES from the kernel
            _say(f"s3fuse: error: {refused(mount, args.command, exc)}: {target}")
            return 1
        if args.no_wait:
            continue
        began = time.monotonic()
        while True:
            jobs = json.loads(os.getxattr(str(mount), JOBS))
            job = next((j for j in jobs if j["path"] == rel.strip("/")), None)
            if job is None:
                raise UsageError(f"the daemon did not start a job for {target}")
            if sys.stderr.isatty():
                sys.stderr.write("\r" + _bar(job, began))
                sys.stderr.flush()
            if job["state"] != "running":
                break
            time.sleep(0.2)
        if job.get("refused"):
            if sys.stderr.isatty():
                sys.stderr.write("\n")
            _say(f"s3fuse: cannot {args.command} {target}: {job['refused']}")
            code = 1
            continue
        failed = len(job["failures"]) + job.get("failures_hidden", 0)
        done = job["files_total"] - job.get("files_failed", 0)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        _say(f"{args.command} {target}: {done} of {job['files_total']} files, "
             f"{_human_bytes(job['bytes_done'])}{', %d failed' % failed if failed else ''}")
        for failure in job["failures"]:
            _say(f"  could not {args.command}: {failure}")
        if job.get("failures_hidden"):
            _say(f"  ... and {job['failures_hidden']} more (see the daemon log)")
        code |= 1 if failed else 0
    return code


def cmd_cache(args: argparse.Namespace) -> int:
    from . import cachetool
    from .cache.identity import identity_of, resolve_cache_dir
    from .config import load_toml, parse_duration, parse_size

    os.umask(0o077)  # files diskcache/SQLite create in the cache stay private (0600)
    file_cfg = load_toml(Path(args.config)) if args.config else {}
    if args.cache_dir:
        cache_dir = Path(args.cache_dir).expanduser().absolute()
    else:  # the one a mount with this configuration (and environment) uses
        cfg = build_config({"config": args.config}, profile_endpoint=_profile_endpoint())
        cache_dir = resolve_cache_dir(cfg.cache_dir, identity_of(cfg))
    size_limit = parse_size(file_cfg["cache_size"]) if "cache_size" in file_cfg else None
    if args.cache_command == "stats":
        result = cachetool.stats(cache_dir, size_limit)
    elif args.cache_command == "prune":
        result = cachetool.prune(cache_dir, size_limit,
                                 parse_duration(args.older_than) if args.older_than else None,
                                 parse_size(args.max_size) if args.max_size else None)
    else:
        result = cachetool.clear(cache_dir, size_limit, args.force)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in result.items():
            print(printable(f"{key:18} {_shown(key, value)}"))
    if args.cache_command == "stats" and result.get("pinned_over_limit"):
        _say("s3fuse: pinned data alone exceeds the cache size limit; it is kept")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib
    try:
        importlib.import_module("moto.server")  # the demo's S3: an optional dependency
    except ImportError:
        raise UsageError("the demo needs its extra: pip install 's3fuse[demo]' "
                         "(or, in a checkout: make demo)") from None
    from .demo import run_demo
    mountpoint = Path(args.mountpoint)
    if mountpoint.exists() and not mountpoint.is_dir():
        raise UsageError(f"mountpoint {mountpoint} is not a directory")
    if not mountpoint.exists() and not mountpoint.absolute().parent.is_dir():
        raise UsageError(f"mountpoint {mountpoint}: no directory {mountpoint.absolute().parent}"
                         " to make it in")
    if mountpoint.is_dir() and not os.path.ismount(mountpoint) and any(mountpoint.iterdir()):
        # (mount's own message suggests --allow-non-empty, which demo does not take)
        raise UsageError(f"mountpoint {mountpoint} is not empty: the demo mounts on an empty "
                         "or new directory")
    return run_demo(mountpoint, print)


def _os_error(exc: OSError) -> str:
    """An OSError as one line: what failed, and on which file."""
    return f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe does
    not print a second error on the way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def cmd_service(args: argparse.Namespace) -> int:
    from .service import install
    for line in install(args.name, args.user, args.force):
        print(printable(line))
    return 0


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    """The names of the commands (`mount`, `umount`, ...), in the order of the help."""
    return list(next(a for a in parser._actions if a.metavar == "COMMAND").choices or ())


def own_home(environ: MutableMapping[str, str] = os.environ) -> None:
    """$HOME as the user's own: mount(8) runs a `user` fstab mount's helper as the user
    with root's HOME, and the default cache dir, ~/.aws and `~` in paths then pointed into
    /root ("Permission denied: /root/.cache/s3fuse"). A HOME another user owns is replaced
    by the home the password database gives (root's own is left alone)."""
    import pwd
    uid = os.getuid()
    home = environ.get("HOME")
    try:
        if uid == 0 or (home and os.stat(home).st_uid == uid):
            return
        own = pwd.getpwuid(uid).pw_dir
    except (OSError, KeyError):  # no such HOME, or no password entry: as it is
        return
    if own and own != home:
        environ["HOME"] = own


def main(argv: Sequence[str] | None = None) -> int:
    from .fstab import helper_call

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    if argv and argv[0] not in _commands(parser):  # `s3fuse SOURCE DIR -o ...`: mount.fuse3's
        argv = helper_call(argv) or argv
    own_home()
    secret = credential_in_argv(argv)
    if secret is not None:  # before argparse, which would echo the value in its error
        _say(f"s3fuse: error: {credential_refusal(secret, 'option')}")
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        if args.command == "mount":
            return cmd_mount(args, argv)
        if args.command == "umount":
            return cmd_umount(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "sync":
            return cmd_sync(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command in ("pin", "unpin"):
            return cmd_pin(args)
        if args.command == "cache":
            return cmd_cache(args)
        if args.command == "service":
            return cmd_service(args)
    except UsageError as exc:
        _say(f"s3fuse: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `s3fuse status | head`: the reader has all it wanted
        _quiet_stdout()
        return 0
    except (CacheFull, sqlite3.OperationalError) as exc:  # a cache on a full disk (cache stats)
        if not isinstance(exc, CacheFull) and not disk_full(exc):
            raise
        _say(f"s3fuse: error: the cache disk is full ({exc})")
        return 1
    except OSError as exc:
        _say(f"s3fuse: error: {_os_error(exc)}")
        return 1
    return EXIT_USAGE
