"""The FUSE filesystems under test: how to mount, unmount and wipe each one's cache.

Every daemon runs in the foreground as our own child (own process group), so we
always know its pid (for RSS) and can kill it if unmounting goes wrong.
"""

from __future__ import annotations

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
from typing import ClassVar
from urllib.parse import urlsplit

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
        self.proc: subprocess.Popen | None = None
        self.proxy: CuttableProxy | BlackHoleProxy | CountingProxy | None = None
        self.peak_rss_kib = 0
        self.ever_mounted = False
        for path in (self.root, self.mountpoint, self.cache_dir):
            path.mkdir(parents=True, exist_ok=True)

    # -- what subclasses provide -----------------------------------------

    @abstractmethod
    def executable(self) -> str | None:
        """Path of the daemon binary, or None when it is not installed."""

    @abstractmethod
    def command(self) -> list[str]:
        """argv of the foreground mount daemon (no secrets: those go in files or env)."""

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
            raise MountError(f"{self.name}: executable not found")
        self.unmount()
        with open(self.log_path, "ab") as log:
            header = f"\n=== mount {time.strftime('%F %T')}: {' '.join(self.command())}\n"
            log.write(header.encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc
        wait_until(lambda: self.mounted or proc.poll() is not None, self.mount_timeout)
        if not self.mounted:
            code = proc.poll()
            self.unmount()
            why = f"exited with code {code}" if code is not None else "timed out"
            lines = tail(self.log_path, 15)
            last = next((ln for ln in reversed(lines.splitlines()) if ln.strip()), "")
            raise MountError(f"{self.name} mount {why}: {last}\n{self.log_path}:\n{lines}")
        self.ever_mounted = True

    def unmount(self) -> None:
        """Unmount (lazily as a last resort) and make sure the daemon is gone."""
        self.sample_rss()
        was_mounted = self.mounted
        if was_mounted:
            self._fusermount()
        if self.proc is not None:
            if was_mounted:  # a daemon exits by itself once unmounted
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._warn("daemon still running 15 s after unmount: killing it")
            kill_group(self.proc, grace=2)
            self.proc = None
        if self.mounted:  # the daemon mounted while being killed: drop the dead mount
            _run_quiet([FUSERMOUNT, "-uz", str(self.mountpoint)])

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
        if self.proc is None or self.proc.poll() is not None:
            return 0
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        return next((int(line.split()[1]) for line in status.splitlines()
                     if line.startswith("VmHWM:")), 0)

    def wait_idle(self, quiet: float = 1.0, timeout: float = 60.0) -> float:
        """Wait until the daemon has been idle for ``quiet`` s: at most 2% CPU and under
        1 MiB written (e.g. background cache writes finished). Returns the seconds waited;
        gives up silently after ``timeout``."""
        start = time.monotonic()
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        pid, ticks = self.proc.pid, os.sysconf("SC_CLK_TCK")

        def sample() -> tuple[int, int]:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            io = dict(line.split(": ") for line in
                      Path(f"/proc/{pid}/io").read_text().splitlines())
            return int(fields[11]) + int(fields[12]), int(io["write_bytes"])

        try:
            before = sample()
            while time.monotonic() - start < timeout:
                time.sleep(quiet)
                after = sample()
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

    @property
    def data_root(self) -> Path:
        return self.mountpoint / self.target.bucket

    def manifest_root(self, manifest: ManifestRef) -> Path:
        return self.mountpoint / manifest.name

    def executable(self) -> str | None:
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


class S3fs(FileSystem):
    """s3fs-fuse with its disk cache on and a 60 s stat cache."""

    name = "s3fs"

    def executable(self) -> str | None:
        return shutil.which("s3fs")

    def command(self) -> list[str]:
        passwd = self.root / "passwd-s3fs"
        passwd.write_text(f"{self.target.access_key}:{self.target.secret_key}\n")
        passwd.chmod(0o600)
        options = [
            f"url={self.endpoint_url}",
            "use_path_request_style",
            f"endpoint={self.target.region}",
            f"passwd_file={passwd}",
            f"use_cache={self.cache_dir}",
            "stat_cache_expire=60",
        ]
        return [shutil.which("s3fs") or "s3fs", self.target.bucket, str(self.mountpoint),
                "-f", "-o", ",".join(options)]


class Rclone(FileSystem):
    """rclone mount with the full VFS cache (the mode needed for local re-reads).

    rclone stores a file's mtime (``X-Amz-Meta-Mtime``, by default) but no mode: chmod
    answers success and changes nothing (``chmod_r`` checks that it still does).
    """

    name = "rclone"
    stores_mode = False
    remote = "bench"

    def executable(self) -> str | None:
        return shutil.which("rclone")

    def command(self) -> list[str]:
        conf = self.root / "rclone.conf"
        conf.write_text(
            f"[{self.remote}]\n"
            "type = s3\n"
            "provider = SeaweedFS\n"
            f"access_key_id = {self.target.access_key}\n"
            f"secret_access_key = {self.target.secret_key}\n"
            f"endpoint = {self.endpoint_url}\n"
            f"region = {self.target.region}\n"
            "force_path_style = true\n"
        )
        conf.chmod(0o600)
        return [
            shutil.which("rclone") or "rclone",
            "mount",
            f"{self.remote}:{self.target.bucket}",
            str(self.mountpoint),
            "--config",
            str(conf),
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(self.cache_dir),
        ]


FILESYSTEMS: dict[str, type[FileSystem]] = {cls.name: cls for cls in (S3Fuse, S3fs, Rclone)}


def _run_quiet(args: list[str]) -> int:
    return subprocess.run(args, capture_output=True, timeout=30).returncode
