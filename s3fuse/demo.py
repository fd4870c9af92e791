"""`s3fuse demo`: an embedded moto S3 with sample data, mounted in the foreground.

No account and no network: moto's server runs in this process on a free
loopback port, gets a sample bucket, and the daemon mounts it until Ctrl-C.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

DEMO_BUCKET = "demo-data"
DEMO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_objects() -> dict[str, bytes]:
    """The demo bucket's keys and bytes (deterministic)."""
    rng = random.Random(42)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["sample", "sepal_length", "sepal_width", "species"])
    for i in range(150):
        writer.writerow([i, round(rng.uniform(4, 8), 1), round(rng.uniform(2, 4.5), 1),
                         rng.choice(["setosa", "versicolor", "virginica"])])
    return {
        "README.txt": b"Welcome to the s3fuse demo bucket.\nEverything here lives in an embedded "
                      b"S3 server; reads are cached on disk.\n",
        "data/iris.csv": table.getvalue().encode(),
        "data/numbers.json": json.dumps({"primes": [2, 3, 5, 7, 11, 13]}).encode(),
        "logs/2024/01/app.log": b"".join(f"2024-01-{d:02d} INFO started\n".encode() for d in range(1, 31)),
        "notes/hello world.txt": b"names with spaces work too\n",
        "media/noise-24MiB.bin": rng.randbytes(24 << 20),
        "empty/": b"",
    }


def populate(endpoint_url: str) -> None:
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    s3.create_bucket(Bucket=DEMO_BUCKET)
    for key, body in sample_objects().items():
        s3.put_object(Bucket=DEMO_BUCKET, Key=key, Body=body)


def instructions(mountpoint: Path) -> str:
    m = str(mountpoint)
    return "\n".join([
        f"s3fuse demo: s3://{DEMO_BUCKET} is mounted at {m}. Try, in another terminal:",
        f"  ls -l {m}/{DEMO_BUCKET}/data",
        f"  cat {m}/{DEMO_BUCKET}/README.txt",
        f"  sha256sum {m}/{DEMO_BUCKET}/media/noise-24MiB.bin   # fetched in blocks, then cached",
        f"  getfattr -d {m}/{DEMO_BUCKET}/data/iris.csv",
        f"  find {m} | head",
        f"  s3fuse status {m}",
        "Press Ctrl-C here to unmount and stop.",
    ])


def run_demo(mountpoint: Path, say: Callable[[str], None]) -> int:
    from moto.server import ThreadedMotoServer

    from .config import build_config, check_mountpoint
    from .daemon import ReadySignal, run
    from .logs import setup_logging

    setup_logging("INFO")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(DEMO_CREDENTIALS)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    cache_dir = Path(tempfile.mkdtemp(prefix="s3fuse-demo-"))
    try:
        endpoint = f"http://127.0.0.1:{port}"
        populate(endpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        cfg = build_config({"mountpoint": str(mountpoint), "source": [f"s3://{DEMO_BUCKET}"],
                            "endpoint_url": endpoint, "cache_dir": str(cache_dir / "cache")})
        cfg = cfg.with_overrides(mountpoint=check_mountpoint(mountpoint), foreground=True)
        return run(cfg, ReadySignal(on_ready=lambda: say(instructions(mountpoint))))
    finally:
        server.stop()
        shutil.rmtree(cache_dir, ignore_errors=True)
