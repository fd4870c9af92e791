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
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

DEMO_BUCKET = "demo-data"
ML_BUCKET = "demo-ml"
MANIFEST_KEY = "training/run-1/samples/manifest.jsonl"
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


def _clip(rng: random.Random, seconds: float = 0.2) -> bytes:
    """A tiny valid 8 kHz mono 8-bit WAV file."""
    frames = rng.randbytes(int(8000 * seconds))
    header = (b"RIFF" + (36 + len(frames)).to_bytes(4, "little") + b"WAVEfmt "
              + (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
              + (8000).to_bytes(4, "little") + (8000).to_bytes(4, "little")
              + (1).to_bytes(2, "little") + (8).to_bytes(2, "little") + b"data"
              + len(frames).to_bytes(4, "little"))
    return header + frames


def shard_archive(archive_key: str, members: dict[str, bytes], gzip: bool) -> bytes:
    """A shard as s3exchange writes it: PAX tar, `__manifest__.jsonl` first."""
    lines = [json.dumps({"kind": "file", "key": f"{archive_key}#{path}", "member_path": path,
                         "id": path.rsplit("/", 1)[-1].split(".")[0], "meta": {"label": i % 3},
                         "size_bytes": len(data)}, separators=(",", ":"))
             for i, (path, data) in enumerate(members.items())]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in {"__manifest__.jsonl": "\n".join(lines).encode() + b"\n", **members}.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def sample_manifest() -> dict[str, bytes]:
    """An s3exchange manifest with loose files, a .tar and a .tar.gz shard (deterministic)."""
    rng = random.Random(7)
    base = MANIFEST_KEY.rsplit("/", 1)[0] + "/"
    objects: dict[str, bytes] = {}
    lines = []
    for i in range(1, 4):
        key = f"{base}audio/{i:04d}.wav"
        objects[key] = _clip(rng)
        lines.append({"kind": "file", "key": key, "id": f"{i:04d}", "meta": {"speaker": f"s{i}"},
                      "content_type": "audio/wav", "size_bytes": len(objects[key]), "etag": None})
    for number, gzip in ((0, False), (1, True)):
        key = f"{base}shards/shard-{number:05d}.tar" + (".gz" if gzip else "")
        members = {f"clips/{number}{j:03d}.wav": _clip(rng) for j in range(4)}
        objects[key] = shard_archive(key, members, gzip)
        lines.append({"kind": "shard", "archive_key": key, "format": "tar",
                      "compression": "gzip" if gzip else None, "count": len(members),
                      "size_bytes": len(objects[key]), "meta": {"split": "train"}})
    objects[MANIFEST_KEY] = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return objects


def populate(endpoint_url: str) -> None:
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    for bucket, objects in ((DEMO_BUCKET, sample_objects()), (ML_BUCKET, sample_manifest())):
        s3.create_bucket(Bucket=bucket)
        for key, body in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)


def own_command() -> str:
    """How to run this s3fuse from a new shell in the current directory: `s3fuse` when
    that is what PATH finds, else the script's path (`make demo` runs .venv/bin/s3fuse,
    which a new terminal does not find unless the venv is activated)."""
    script = Path(sys.argv[0])
    if script.name == "__main__.py":  # python -m s3fuse
        return f"{_shown(Path(sys.executable))} -m s3fuse"
    found = shutil.which("s3fuse")
    if found and Path(found).resolve() == script.resolve():
        return "s3fuse"
    return _shown(script)


def _shown(path: Path) -> str:
    """`path` relative to the current directory when it is under it, else absolute."""
    try:
        shown = str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())
    return shown if "/" in shown else f"./{shown}"


def instructions(mountpoint: Path, command: str = "s3fuse") -> str:
    m = str(mountpoint)
    return "\n".join([
        f"s3fuse demo: s3://{DEMO_BUCKET} and the manifest s3://{ML_BUCKET}/{MANIFEST_KEY} (as 'train')",
        f"are mounted at {m}. Try, in another terminal:",
        f"  ls -l {m}/{DEMO_BUCKET}/data",
        f"  cat {m}/{DEMO_BUCKET}/README.txt",
        f"  sha256sum {m}/{DEMO_BUCKET}/media/noise-24MiB.bin   # fetched in blocks, then cached",
        f"  getfattr -d {m}/{DEMO_BUCKET}/data/iris.csv",
        f"  find {m}/train",
        f"  sha256sum {m}/train/shards/shard-00001.tar.gz/clips/*.wav   # members of a .tar.gz",
        f"  getfattr -d {m}/train/audio/0001.wav            # user.s3exchange.id / .meta",
        f"  {command} status {m}",
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
        mountpoint.mkdir(exist_ok=True)  # its parent exists (cli.py): no tree of typos
        cfg = build_config({"mountpoint": str(mountpoint), "source": [f"s3://{DEMO_BUCKET}"],
                            "manifest": [f"train=s3://{ML_BUCKET}/{MANIFEST_KEY}"],
                            "endpoint_url": endpoint, "cache_dir": str(cache_dir / "cache")})
        cfg = cfg.with_overrides(mountpoint=check_mountpoint(mountpoint), foreground=True)
        return run(cfg, ReadySignal(on_ready=lambda: say(instructions(mountpoint, own_command()))))
    finally:
        server.stop()
        shutil.rmtree(cache_dir, ignore_errors=True)
