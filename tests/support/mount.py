"""Run `s3fuse mount --foreground` as a subprocess, as users do, and clean up always."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Lines that fail a test unless it declares them expected.
BAD_LOG = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


def s3_env(endpoint: str, access_key: str = "testing", secret_key: str = "testing") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "S3_")) and k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env.update({"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                "AWS_EC2_METADATA_DISABLED": "true"})
    return env


class Mount:
    """A live s3fuse mount driven through a subprocess."""

    def __init__(self, mountpoint: Path, cache_dir: Path, log_path: Path, env: dict[str, str],
                 args: list[str]):
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.log_path = log_path
        self.env = env
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_log: list[re.Pattern[str]] = []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "s3fuse", "mount", str(self.mountpoint), "--foreground",
                "--cache-dir", str(self.cache_dir), *self.args]

    def start(self, timeout: float = 30.0) -> "Mount":
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"s3fuse exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"s3fuse did not mount within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        os.stat(self.mountpoint)  # the kernel's INIT is done once this answers
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def expect_log(self, pattern: str) -> None:
        """Declare that log lines matching `pattern` are part of this test."""
        self.expected_log.append(re.compile(pattern))

    def unexpected_log_lines(self) -> list[str]:
        return [line for line in self.log().splitlines()
                if BAD_LOG.search(line) and not any(p.search(line) for p in self.expected_log)]

    def status(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "s3fuse", "status", "--json", str(self.mountpoint)],
                             env=self.env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def wait_idle(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait (at most `timeout` seconds) until the daemon has no background work left
        (read-ahead, cache writes, pins, uploads and their sync pass: see s3fuse/idle.py);
        returns its state, `idle` false when time ran out. Use it instead of sleeping."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            os.setxattr(self.mountpoint, "user.s3fuse.idle", str(left).encode())
            # a second request: work that starts between the two (a sync pass, a list-ahead)
            # shows, so look again while time is left
            state = json.loads(os.getxattr(self.mountpoint, "user.s3fuse.idle"))
            if state["idle"] or left <= 0:
                return state

    def assert_idle(self, timeout: float = 60.0) -> dict[str, Any]:
        """`wait_idle`, failing with what the daemon was busy with: its state, its upload
        status and the end of its log (a rare stall cannot be told apart otherwise)."""
        state = self.wait_idle(timeout)
        if not state["idle"]:
            try:
                status = os.getxattr(self.mountpoint, "user.s3fuse.status").decode()
            except OSError as exc:
                status = f"(no status: {exc})"
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGUSR1)  # its threads' stacks, into its log
                time.sleep(1.0)
            tail = "\n".join(self.log().splitlines()[-200:])
            raise AssertionError(f"not idle after {timeout}s: {state}\nstatus: {status}\n"
                                 f"log:\n{tail}")
        return state

    def stop(self, timeout: float = 30.0) -> int | None:
        """Unmount and wait for the daemon; never leave a mount behind."""
        if self.proc is None:
            return None
        if os.path.ismount(self.mountpoint) and self.proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if os.path.ismount(self.mountpoint) or _stale(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the daemon (a crash) and detach the dead mount."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)


def _stale(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:
        return True
    return False
