"""Randomized model test: the same file operations on the mount and on a local directory.

Hypothesis drives open/write-at-offset/truncate/read/fsync/close/rename/unlink on a few
names, on the mount and on a temp dir side by side; every result (bytes read, errors,
listings) must match. At the end of each run, after `s3fuse sync`, S3 must hold exactly
what the local directory holds.
"""
from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from tests.test_write_mount import body, keys, sync

pytestmark = pytest.mark.mount

NAMES = ("a", "b", "c")
MODES = {"w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC, "r+": os.O_RDWR,
         "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND}
_runs = itertools.count()


def outcome(fn, *args):  # type: ignore[no-untyped-def]
    """A call's result, or its errno: what must match between the mount and the model."""
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("error", exc.errno)


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


def test_mount_behaves_like_a_local_directory(s3, bucket, mount_factory, tmp_path):
    m = mount_factory("--source", f"s3://{bucket}")

    class FileModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            run = f"run{next(_runs)}"
            self.prefix = run + "/"
            self.mounted = m.path(bucket, run)
            self.local = tmp_path / "model" / run
            os.mkdir(self.mounted)
            self.local.mkdir(parents=True)
            self.handles: list[tuple[int, int]] = []  # (mount fd, local fd)
            self.steps: list[str] = []  # shown on failure (shrinking runs differ: S3 is external)

        def step(self, text: str) -> str:
            self.steps.append(text)
            return "\n".join(self.steps[-40:])

        def both(self, fn, *args):  # type: ignore[no-untyped-def]
            got, want = outcome(fn, self.mounted, *args), outcome(fn, self.local, *args)
            assert got == want, self.step(f"{fn.__name__}{args}: mount {got} != local {want}")
            return got

        @rule(name=st.sampled_from(NAMES), mode=st.sampled_from(sorted(MODES)))
        def open(self, name: str, mode: str) -> None:
            got = outcome(os.open, self.mounted / name, MODES[mode], 0o644)
            want = outcome(os.open, self.local / name, MODES[mode], 0o644)
            assert got[0] == want[0] and (got[0] == "ok" or got == want), self.step(
                f"open {name} {mode}: mount {got} local {want}")
            if got[0] == "ok":
                self.handles.append((got[1], want[1]))
            self.step(f"open {name} {mode} -> handle {len(self.handles) - 1}")

        @precondition(lambda self: self.handles)
        @rule(index=st.integers(0, 20), offset=st.integers(0, 20_000), data=st.binary(max_size=3000))
        def write(self, index: int, offset: int, data: bytes) -> None:
            fds = self.handles[index % len(self.handles)]
            got, want = outcome(os.pwrite, fds[0], data, offset), outcome(os.pwrite, fds[1], data, offset)
            assert got == want, self.step(f"pwrite {index % len(self.handles)} {len(data)}@{offset}: {got} {want}")
            self.step(f"pwrite {index % len(self.handles)} {len(data)}@{offset}")

        @precondition(lambda self: self.handles)
        @rule(index=st.integers(0, 20), size=st.integers(0, 25_000))
        def truncate(self, index: int, size: int) -> None:
            fds = self.handles[index % len(self.handles)]
            got, want = outcome(os.ftruncate, fds[0], size), outcome(os.ftruncate, fds[1], size)
            assert got == want, self.step(f"ftruncate {index % len(self.handles)} {size}: {got} {want}")
            self.step(f"ftruncate {index % len(self.handles)} {size}")

        @precondition(lambda self: self.handles)
        @rule(index=st.integers(0, 20), offset=st.integers(0, 25_000), size=st.integers(0, 30_000))
        def read(self, index: int, offset: int, size: int) -> None:
            fds = self.handles[index % len(self.handles)]
            got, want = outcome(os.pread, fds[0], size, offset), outcome(os.pread, fds[1], size, offset)
            assert got == want, self.step(f"pread {index % len(self.handles)} {size}@{offset}")

        @precondition(lambda self: self.handles)
        @rule(index=st.integers(0, 20))
        def fsync(self, index: int) -> None:
            fds = self.handles[index % len(self.handles)]
            os.fsync(fds[0])
            os.fsync(fds[1])
            self.step(f"fsync {index % len(self.handles)}")

        @precondition(lambda self: self.handles)
        @rule(index=st.integers(0, 20))
        def close(self, index: int) -> None:
            mounted_fd, local_fd = self.handles.pop(index % len(self.handles))
            os.close(mounted_fd)
            os.close(local_fd)
            self.step(f"close {index % (len(self.handles) + 1)}")

        @rule(old=st.sampled_from(NAMES), new=st.sampled_from(NAMES))
        def rename(self, old: str, new: str) -> None:
            self.both(lambda d, o, n: os.rename(d / o, d / n), old, new)
            self.step(f"rename {old} {new}")

        @rule(name=st.sampled_from(NAMES))
        def unlink(self, name: str) -> None:
            self.both(lambda d, n: os.unlink(d / n), name)
            self.step(f"unlink {name}")

        @invariant()
        def same_files(self) -> None:
            names = sorted(os.listdir(self.local))
            assert sorted(os.listdir(self.mounted)) == names, self.step("listdir")
            for name in names:
                assert (self.mounted / name).read_bytes() == (self.local / name).read_bytes(), \
                    self.step(f"read {name}")

        def teardown(self) -> None:
            for mounted_fd, local_fd in self.handles:
                os.close(mounted_fd)
                os.close(local_fd)
            result = sync(m.mountpoint)
            assert result.returncode == 0, result.stderr
            in_s3 = {k[len(self.prefix):] for k in keys(s3, bucket) if k.startswith(self.prefix)}
            assert in_s3 - {""} == set(os.listdir(self.local)), self.step("S3 keys")
            for name in in_s3 - {""}:
                assert body(s3, bucket, self.prefix + name) == (self.local / name).read_bytes(), \
                    self.step(f"S3 body of {name}")

    run_state_machine_as_test(FileModel, settings=settings(
        max_examples=int(os.environ.get("S3FUSE_MODEL_EXAMPLES", "25")), stateful_step_count=25,
        deadline=None, database=None, suppress_health_check=list(HealthCheck)))
