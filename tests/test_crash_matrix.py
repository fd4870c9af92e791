"""Crash matrix: SIGKILL the daemon anywhere in a write workload, remount, `s3fuse sync`,
and S3 holds exactly what was closed before the kill.

The promise (docs/writing.md): a `close()` that returned is journalled and uploaded by
the next mount with the same cache dir; an `unlink()` that returned is journalled the
same way. A file whose close (or unlink) had not returned when the daemon died is
"in flight": S3 then holds either its previous state (the last closed version, the
object as it was before the test, or no object) or the in-flight version, and nothing
else — never a blend, never a truncated or stale older version, and never a
`*.s3fuse-conflict-*` copy (nobody else writes the bucket). After the sync no multipart
upload is left and the staging directory is empty.

Kill points (`mode`):
- delay: at a random byte of the workload (usually while a file is being written);
- hold-put / hold-create / hold-part / hold-complete: the N-th single PUT,
  CreateMultipartUpload, multipart part or CompleteMultipartUpload is held by the
  proxy, then the daemon is killed (the held request is then let through to S3, as a
  request in flight at a crash may still be applied: a late landing the next mount
  must recognise);
- staged / journalled / uploaded: the daemon SIGKILLs itself at the N-th passage of that
  point (s3fuse/util/crashpoint.py): a closing file fsynced but not journalled,
  journalled but close not answered, an upload confirmed by S3 but not yet recorded.

The seed of each round is printed (and named in the failure): rerun one with
`CRASH_SEED=<seed> pytest tests/test_crash_matrix.py -k <mode>`. `make soak` runs
SOAK_ROUNDS more rounds with random modes.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.mount import Mount, s3_env
from tests.test_write_mount import body, keys, sync

log = logging.getLogger(__name__)

pytestmark = pytest.mark.mount

MODES = ["delay", "hold-put", "hold-create", "hold-part", "hold-complete", "staged", "journalled",
         "uploaded"]
SOAK_ROUNDS = int(os.environ.get("CRASH_SOAK_ROUNDS", "40"))
CHUNK = 256 << 10
ABSENT = None  # the state "no object"
#: Names the workload writes (two exist in S3 before the mount: If-Match uploads).
NAMES = ["pre-0.txt", "pre-1.bin", "a.txt", "b.csv", "c.bin", "d.dat"]
PRE = {"pre-0.txt": b"object before the test\n", "pre-1.bin": b"\x00\x01" * 3000}


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    """Fault injection sits in front of moto (see test_write_durability.py)."""
    return moto_backend


# ---------------------------------------------------------------- helpers


def kill(m: Mount) -> None:
    """SIGKILL the daemon (if it did not kill itself) and clear its dead mount."""
    assert m.proc is not None
    if m.proc.poll() is None:
        m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    subprocess.run(["fusermount3", "-uz", str(m.mountpoint)], capture_output=True)
    m.expect_log(r".*")  # a killed daemon's log is not this test's subject


def let_held_requests_land(faults: FaultProxy, timeout: float = 30.0) -> None:
    """Release held requests and wait until the proxy has forwarded every one of them, so a
    request the dead daemon sent lands before the remount (as S3 may apply a request whose
    answer a crash lost), never in the middle of the next mount's uploads."""
    faults.release()
    deadline = time.monotonic() + timeout
    while any("process_request_thread" in t.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the fault proxy did not finish its requests"
        time.sleep(0.05)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def mount_env(faults: FaultProxy, crash_at: str | None = None) -> dict[str, str]:
    env = s3_env(faults.endpoint)
    if crash_at:
        env["S3FUSE_TEST_CRASH_AT"] = crash_at
    return env


@dataclass
class Ledger:
    """What the writer knows: per name the state its last returned close/unlink left
    (bytes, or ABSENT), and the change whose call had not returned when the daemon died."""

    done: dict[str, bytes | None] = field(default_factory=dict)
    in_flight: dict[str, bytes | None] = field(default_factory=dict)
    error: OSError | None = None
    written: int = 0  # bytes written so far (the delay mode kills at a random byte)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allowed(self, name: str) -> list[bytes | None]:
        with self.lock:
            states = [self.done.get(name, PRE.get(name, ABSENT))]
            if name in self.in_flight:
                states.append(self.in_flight[name])
        return states


def write_file(path: Path, content: bytes, ledger: Ledger | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(content)
        while view:
            n = os.write(fd, view[:CHUNK])
            view = view[n:]
            if ledger is not None:
                ledger.written += n
            time.sleep(0.001)  # a write workload, not one syscall: room for a kill mid-file
    finally:
        os.close(fd)  # close = flush: journalled when it returns (its error ends the run)


def plan_workload(rng: random.Random, ops: int) -> list[tuple[str, bytes | None]]:
    """Writes (small, medium, multipart) and unlinks of NAMES; overwrites are frequent so
    versions of one key queue behind each other."""
    present = set(PRE)
    plan: list[tuple[str, bytes | None]] = []
    for _ in range(ops):
        name = rng.choice(NAMES)
        if name in present and rng.random() < 0.15:
            plan.append((name, ABSENT))
            present.discard(name)
            continue
        roll = rng.random()
        if roll < 0.65:
            size = rng.randrange(0, 200 << 10)
        elif roll < 0.88:
            size = rng.randrange(1 << 20, 3 << 20)
        else:
            size = rng.randrange((8 << 20) + 1, 17 << 20)   # multipart: 2-3 parts
        plan.append((name, rng.randbytes(size)))
        present.add(name)
    return plan


def run_workload(root: Path, plan: list[tuple[str, bytes | None]], ledger: Ledger) -> None:
    for name, content in plan:
        with ledger.lock:
            ledger.in_flight[name] = content
        try:
            if content is ABSENT:
                os.unlink(root / name)
            else:
                write_file(root / name, content, ledger)
        except OSError as exc:  # the daemon died under this call
            ledger.error = exc
            return
        with ledger.lock:
            ledger.done[name] = ledger.in_flight.pop(name)


def upload_request(kind: str, nth: int) -> Callable[[str, str], bool]:
    """A fault-proxy predicate matching the `nth` request of a kind of upload request."""
    seen = [0]
    lock = threading.Lock()

    def matches(method: str, path: str) -> bool:
        if kind == "hold-put":
            hit = method == "PUT" and "uploadId=" not in path
        elif kind == "hold-part":
            hit = method == "PUT" and "partNumber=" in path
        elif kind == "hold-create":
            hit = method == "POST" and "uploads" in path and "uploadId=" not in path
        else:
            hit = method == "POST" and "uploadId=" in path
        if not hit:
            return False
        with lock:
            seen[0] += 1
            return seen[0] == nth

    return matches


def requests(faults: FaultProxy, name: str) -> list[str]:
    """The requests the proxy saw for a name (for failure messages)."""
    return [f"{s.method} {s.path.split('/', 2)[-1]} {s.headers.get('Content-Length', '')}"
            for s in faults.seen if f"/{name}" in s.path]


def recorded_multiparts(cache_dir: Path) -> tuple[set[str], int]:
    """The dead daemon's journal: the UploadIds it recorded, and how many creations it began
    whose answer it never recorded (a kill between S3's answer and the journal write)."""
    with sqlite3.connect(cache_dir / "journal.sqlite") as db:
        rows = db.execute("SELECT upload_id FROM multipart").fetchall()
    return {r[0] for r in rows if r[0]}, sum(1 for r in rows if not r[0])


def verify(s3: Any, bucket: str, again: Mount, ledger: Ledger, seed: int,
           faults: FaultProxy, recorded: tuple[set[str], int]) -> tuple[int, int]:
    """The promise, checked after the remount's sync; returns (files, bytes) verified.
    What the remounted tree shows before the sync must already be what S3 ends with."""
    root = again.path(bucket)
    shown = {name: (root / name).read_bytes() if name in os.listdir(root) else ABSENT
             for name in NAMES}
    result = sync(again.mountpoint)
    assert result.returncode == 0, f"seed {seed}: sync failed: {result.stdout}{result.stderr}"
    present = keys(s3, bucket)
    extra = sorted(present - set(NAMES))
    assert not extra, f"seed {seed}: unexpected keys {extra}; requests: " + "; ".join(
        f"{name}: {requests(faults, name)}" for name in NAMES if any(k.startswith(name) for k in extra))
    files = nbytes = 0
    for name in NAMES:
        actual = body(s3, bucket, name) if name in present else ABSENT
        allowed = ledger.allowed(name)
        assert actual in allowed, (
            f"seed {seed}: requests: {requests(faults, name)}; s3://{bucket}/{name} holds "
            f"{'nothing' if actual is None else f'{len(actual)} bytes'}, allowed: "
            f"{['nothing' if a is None else f'{len(a)} bytes' for a in allowed]}")
        assert shown[name] == actual, (
            f"seed {seed}: the remount showed {len(shown[name] or b'')} bytes of {name}, S3 "
            f"ended with {len(actual or b'')}; requests: {requests(faults, name)}")
        files += 1
        nbytes += len(actual or b"")
    # A creation whose answer the kill lost leaves an UploadId the journal never saw: it is
    # left alone (only recorded uploads are ours to abort; docs/writing.md: lifecycle rule).
    # Every recorded one is aborted.
    ours, unanswered = recorded
    wait_for(lambda: not {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)
                          .get("Uploads", [])} & ours, 10)
    left = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert len(left) <= unanswered, f"seed {seed}: {len(left)} multipart uploads left, " \
        f"{unanswered} creation(s) unrecorded"
    for upload in left:
        assert upload["Key"] in NAMES, f"seed {seed}: a multipart upload of {upload['Key']}"
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    staging = again.cache_dir / "staging"
    wait_for(lambda: not list(staging.iterdir()), 10)
    return files, nbytes


def crash_round(seed: int, mode: str, s3: Any, bucket: str, mount_factory: Callable[..., Mount],
                faults: FaultProxy) -> tuple[int, int]:
    """One round: workload, kill at the chosen point, remount, sync, verify."""
    rng = random.Random(seed)
    print(f"crash round: seed={seed} mode={mode}")
    for name, data in PRE.items():
        s3.put_object(Bucket=bucket, Key=name, Body=data)
    plan = plan_workload(rng, rng.randrange(6, 12))
    multipart = any(c and len(c) > 8 << 20 for _, c in plan)
    if mode in ("hold-create", "hold-part", "hold-complete") and not multipart:
        plan.insert(rng.randrange(len(plan)), ("c.bin", rng.randbytes(9 << 20)))
    self_kill = mode in ("staged", "journalled", "uploaded")
    crash_at = f"{mode}:{rng.randrange(1, 5)}" if self_kill else None
    m = mount_factory("--source", f"s3://{bucket}", env=mount_env(faults, crash_at),
                      name=f"s{seed}")
    root = m.path(bucket)
    os.listdir(root)
    ledger = Ledger()
    held = None
    if mode.startswith("hold-"):
        held = faults.hold(upload_request(mode, rng.randrange(1, 3)))
    writer = threading.Thread(target=run_workload, args=(root, plan, ledger), daemon=True)
    began = time.monotonic()
    writer.start()
    assert m.proc is not None
    if mode == "delay":  # at a random byte of the workload (mostly mid-file), or mid-close
        target = rng.randrange(sum(len(c or b"") for _, c in plan) + 1)
        while ledger.written < target and writer.is_alive():
            time.sleep(0.001)
        time.sleep(rng.choice([0.0, 0.0, rng.uniform(0, 0.05)]))
    elif held is not None:  # not held when the workload has fewer such requests: killed
        deadline = time.monotonic() + 20  # anyway, a few seconds after the last close
        finished = None
        while not held.is_set() and time.monotonic() < deadline:
            if not writer.is_alive():
                finished = finished or time.monotonic()
                if time.monotonic() - finished > 3:
                    break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
    else:  # the daemon kills itself at the point (or, past its N-th passage, is killed idle)
        deadline = time.monotonic() + 20
        while m.proc.poll() is None and time.monotonic() < deadline and (
                writer.is_alive() or time.monotonic() - began < 5):
            time.sleep(0.02)
    kill(m)
    writer.join(30)
    assert not writer.is_alive(), f"seed {seed}: the writer hung after the kill"
    let_held_requests_land(faults)
    recorded = recorded_multiparts(m.cache_dir)
    again = mount_factory("--source", f"s3://{bucket}", env=mount_env(faults), name=f"s{seed}b",
                          cache_dir=m.cache_dir)
    again.expect_log(r"still to send|interrupted|staging file\(s\) no upload needs"
                     r"|aborted a multipart")
    files, nbytes = verify(s3, bucket, again, ledger, seed, faults, recorded)
    print(f"crash round: seed={seed} mode={mode} ops={len(plan)} closed={len(ledger.done)} "
          f"in_flight={sorted(ledger.in_flight)} killed_by={type(ledger.error).__name__} "
          f"verified {files} names, {nbytes} bytes in {time.monotonic() - began:.1f}s")
    again.stop()
    if os.environ.get("CRASH_STATS"):  # figures for docs/reliability.md
        with open(os.environ["CRASH_STATS"], "a") as stats:
            stats.write(json.dumps({"seed": seed, "mode": mode, "ops": len(plan), "files": files,
                                    "bytes": nbytes, "in_flight": len(ledger.in_flight),
                                    "killed_mid_call": ledger.error is not None}) + "\n")
    return files, nbytes


def base_seed() -> int:
    return int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(1 << 32))


# ---------------------------------------------------------------- deterministic cases


@pytest.mark.timeout(120)
@pytest.mark.parametrize("existing", [True, False], ids=["if-match", "if-none-match"])
def test_upload_landed_before_the_journal_knew_with_a_newer_version_queued(
        s3, bucket, mount_factory, faults, existing):
    """Version 1 reached S3, the daemon died before recording it, version 2 was queued
    behind it: the next mount must upload version 2 over version 1, not call version 1 a
    remote change and make a conflict copy."""
    if existing:
        s3.put_object(Bucket=bucket, Key="k.txt", Body=b"before")
    m = mount_factory("--source", f"s3://{bucket}", env=mount_env(faults, "uploaded:1"))
    path = m.path(bucket, "k.txt")
    os.listdir(m.path(bucket))
    held = faults.hold(lambda method, p: method == "PUT")
    path.write_bytes(b"version 1")
    assert held.wait(30), "version 1 was never sent"
    path.write_bytes(b"version 2")                  # journalled behind version 1
    faults.release()                                # version 1 lands, then the daemon dies
    assert m.proc is not None and m.proc.wait(30) == -signal.SIGKILL
    assert body(s3, bucket, "k.txt") == b"version 1"
    kill(m)
    again = mount_factory("--source", f"s3://{bucket}", env=mount_env(faults), name="again",
                          cache_dir=m.cache_dir)
    again.expect_log(r"interrupted|still to send")
    assert sync(again.mountpoint).returncode == 0
    assert keys(s3, bucket) == {"k.txt"}, "a conflict copy of our own upload"
    assert body(s3, bucket, "k.txt") == b"version 2"
    wait_for(lambda: not list((m.cache_dir / "staging").iterdir()), 10)  # sync pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", ["staged", "journalled"])
def test_kill_inside_close(s3, bucket, mount_factory, faults, point):
    """Killed inside close(): not journalled yet (staged: the old object stays, the staging
    file is removed at the next start) or journalled (uploaded by the next mount), and the
    closing process gets an error, never a success."""
    s3.put_object(Bucket=bucket, Key="k.txt", Body=b"before")
    m = mount_factory("--source", f"s3://{bucket}", env=mount_env(faults, f"{point}:2"))
    root = m.path(bucket)
    (root / "first.txt").write_bytes(b"closed before the kill")
    with pytest.raises(OSError):
        write_file(root / "k.txt", b"being closed at the kill")
    kill(m)
    again = mount_factory("--source", f"s3://{bucket}", env=mount_env(faults), name="again",
                          cache_dir=m.cache_dir)
    again.expect_log(r"still to send|interrupted|never closed")
    assert sync(again.mountpoint).returncode == 0
    assert body(s3, bucket, "first.txt") == b"closed before the kill"
    expected = b"before" if point == "staged" else b"being closed at the kill"
    assert body(s3, bucket, "k.txt") == expected
    assert keys(s3, bucket) == {"first.txt", "k.txt"}
    wait_for(lambda: not list((m.cache_dir / "staging").iterdir()), 10)  # sync pass


@pytest.mark.timeout(120)
def test_kill_while_rewriting_a_file_whose_upload_finished(s3, bucket, mount_factory, faults):
    """Version 1 is uploaded while the file is open again and being rewritten; the daemon
    dies before that close. The next mount must show version 1 whole: the listing store
    once recorded the size of the rewrite in progress (the overlay's) for version 1's ETag."""
    m = mount_factory("--source", f"s3://{bucket}", env=mount_env(faults))
    path = m.path(bucket, "k.txt")
    os.listdir(m.path(bucket))
    held = faults.hold(lambda method, p: method == "PUT")
    version1 = os.urandom(100_000)
    path.write_bytes(version1)
    assert held.wait(30)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"rewrite in progress")
    faults.release()
    wait_for(lambda: "k.txt" in keys(s3, bucket))
    time.sleep(0.5)                                 # the daemon records the upload
    kill(m)
    try:
        os.close(fd)                                # a descriptor of the dead mount
    except OSError:
        pass
    again = mount_factory("--source", f"s3://{bucket}", env=mount_env(faults), name="again",
                          cache_dir=m.cache_dir)
    again.expect_log(r"never closed")
    assert again.path(bucket, "k.txt").stat().st_size == len(version1)
    assert again.path(bucket, "k.txt").read_bytes() == version1
    assert sync(again.mountpoint).returncode == 0 and body(s3, bucket, "k.txt") == version1


# ---------------------------------------------------------------- randomized rounds


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_crash_round(s3, bucket, mount_factory, faults, mode):
    seed = base_seed()
    crash_round(seed, mode, s3, bucket, mount_factory, faults)


@pytest.mark.soak
@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_no", range(SOAK_ROUNDS))
def test_crash_round_soak(s3, bucket, mount_factory, faults, round_no):
    seed = base_seed() + round_no
    crash_round(seed, random.Random(seed).choice(MODES), s3, bucket, mount_factory, faults)
