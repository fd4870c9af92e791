"""Run the POSIX conformance suites (pjdfstest, fsx) on one FUSE filesystem over local S3.

    python benchmarks/conformance.py TOOL [--server seaweedfs|moto] [--out DIR] [--fsx-ops N]
                                     [PJDFSTEST_DIR ...]

TOOL is s3fuse, s3fs or rclone. One reproducible command for the table in docs/posix.md: it
starts a throw-away S3 server (SeaweedFS, or moto's), mounts TOOL on an empty bucket the way
users mount it for POSIX work (``MOUNT_OPTIONS``: every tool with allow_other, since pjdfstest
switches uid as root), runs ``../shared/conformance/run.sh`` (fsx without mmap, then
pjdfstest) plus fsx with mmap reads and writes, unmounts and prints one line per suite. The
suites are development tools kept outside the project: ``--suites`` points at them (default:
the shared copy).

Needs root and /dev/fuse. Raw outputs stay in ``--out`` (default /tmp/conformance-TOOL):
``build/pjd.<dir>.out``, ``build/fsx.out``, ``build/fsx-mmap.out``, ``summary.txt``,
``result.json`` and the daemon log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and `tests` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.filesystems import FILESYSTEMS, FileSystem  # noqa: E402
from benchmarks.s3 import S3Target  # noqa: E402
from tests.support.seaweedfs import SeaweedFS  # noqa: E402

BUCKET = "conformance"
DEFAULT_SUITES = ROOT.parent / "shared" / "conformance"
# Added to the benchmark mount command of each tool: what a user sets to work in the mount.
MOUNT_OPTIONS: dict[str, list[str]] = {
    "s3fuse": ["--allow-other"],
    "s3fs": ["-o", "allow_other,use_xattr"],
    "rclone": ["--allow-other"],
}
FSX_MMAP_TIMEOUT = 1800
_PJD_LINE = re.compile(r"^pjdfstest (\w+): (\d+) of (\d+) ok")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", choices=sorted(FILESYSTEMS))
    parser.add_argument("dirs", nargs="*", help="pjdfstest directories (default: run.sh's)")
    parser.add_argument("--out", type=Path, help="raw outputs (default /tmp/conformance-TOOL)")
    parser.add_argument("--suites", type=Path, default=DEFAULT_SUITES,
                        help=f"directory with run.sh and build.sh (default {DEFAULT_SUITES})")
    parser.add_argument("--fsx-ops", type=int, default=20000, help="fsx operations (20000)")
    parser.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs",
                        help="the S3 server (default seaweedfs; SeaweedFS keeps no user "
                             "metadata on `dir/` markers, moto does)")
    return parser.parse_intermixed_args(argv)


@contextmanager
def s3_server(kind: str, workdir: Path) -> Iterator[S3Target]:
    """A throw-away S3 server of `kind` with an empty bucket BUCKET."""
    if kind == "seaweedfs":
        with SeaweedFS(workdir / "seaweedfs") as sw:
            target = S3Target(sw.endpoint_url, BUCKET, sw.access_key, sw.secret_key)
            target.client().create_bucket(Bucket=BUCKET)
            yield target
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        target = S3Target(f"http://127.0.0.1:{port}", BUCKET, "testing", "testing")
        target.client().create_bucket(Bucket=BUCKET)
        yield target
    finally:
        server.stop()


def conformance_fs(tool: str, target: S3Target, root: Path) -> FileSystem:
    """The benchmark filesystem `tool` with ``MOUNT_OPTIONS`` appended to its command."""
    base = FILESYSTEMS[tool]
    extra = MOUNT_OPTIONS[tool]

    class WithOptions(base):  # type: ignore[valid-type, misc]
        def command(self) -> list[str]:
            return [*super().command(), *extra]

    return WithOptions(target, root)


def run_suites(args: argparse.Namespace, workdir: Path, build: Path) -> str:
    """run.sh (fsx without mmap, pjdfstest), then fsx with mmap; returns the summary lines."""
    env = {**os.environ, "BUILD": str(build), "FSX_N": str(args.fsx_ops)}
    proc = subprocess.run([str(args.suites / "run.sh"), str(workdir), *args.dirs],
                          env=env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    mmap_dir = workdir / "fsx-mmap"
    mmap_dir.mkdir(exist_ok=True)
    out = build / "fsx-mmap.out"
    with open(out, "w") as log:
        try:
            rc = subprocess.run([str(build / "fsx"), "-N", str(args.fsx_ops), "-S", "7",
                                 "-l", "1048576", "-p", "5000", "testfile"],
                                cwd=mmap_dir, stdout=log, stderr=subprocess.STDOUT,
                                timeout=FSX_MMAP_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    last = out.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    lines.insert(1, f"fsx (-N {args.fsx_ops} -S 7 -l 1M, mmap reads and writes): "
                    f"rc={rc} {last[0]}")
    return "\n".join(lines)


def parse_summary(summary: str) -> dict[str, Any]:
    """Per pjdfstest directory [ok, total], and the two fsx lines."""
    pjd = {m[1]: [int(m[2]), int(m[3])] for m in map(_PJD_LINE.match, summary.splitlines())
           if m}
    fsx = [line for line in summary.splitlines() if line.startswith("fsx")]
    return {"pjdfstest": pjd, "fsx": fsx}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("conformance.py needs root: pjdfstest switches uid and gid")
    out = (args.out or Path(f"/tmp/conformance-{args.tool}")).resolve()
    build = out / "build"
    subprocess.run([str(args.suites / "build.sh"), str(build)], check=True,
                   stdout=subprocess.DEVNULL)
    # the S3 server is new every run: a cache (and upload journal) of an earlier run
    # belongs to its server, and s3fuse refuses to mount it for another
    shutil.rmtree(out / args.tool, ignore_errors=True)
    with s3_server(args.server, out) as target:
        fs = conformance_fs(args.tool, target, out / args.tool)
        fs.mount()
        try:
            workdir = fs.data_root / "conformance"
            workdir.mkdir()
            summary = (f"{args.tool} on {args.server}: {fs.version()}\n"
                       + run_suites(args, workdir, build))
        finally:
            fs.unmount()
    (out / "summary.txt").write_text(summary + "\n")
    result = {"tool": args.tool, "server": args.server, "command": fs.command(),
              **parse_summary(summary)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(summary)
    print(f"raw outputs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
