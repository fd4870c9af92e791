"""Model test of POSIX metadata: the same random operations on the mount and a local directory.

Hypothesis mixes chmod, chown (we run as root), utimensat, symlink, rename, unlink, rmdir,
write and mkdir on a few paths with offline periods (a cut proxy between the daemon and
S3) and remounts (with the same cache, possibly offline; or, online, with an empty cache,
so only what S3 stores shows). After every step both trees must show the same nodes with
the same type, mode, owner, size, bytes and symlink target; mtimes set explicitly must be
the same to the nanosecond, mtimes the operations set (now) close to each other.

Runs against moto behind the cuttable proxy (tests/test_offline.py's mechanism): moto keeps
user metadata on `dir/` markers, so directory modes and times are checked after an
empty-cache remount too (SeaweedFS drops them; see tests/support/posix_tree.py). The same
machine runs on a local directory against a local directory (`test_model_on_local_dir`),
which checks the model itself. Few examples in the suite; S3FUSE_FUZZ_EXAMPLES=N for a
long run by hand (fresh random examples; `-p no:timeout`).
"""
from __future__ import annotations

import errno
import itertools
import os
import stat
from pathlib import Path
from typing import Any, Callable, Protocol

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.support.mount import Mount
from tests.support.posix_tree import BASE_NS, OWNER
from tests.support.proxy import CuttableProxy
from tests.test_write_mount import sync

PATHS = ("a", "b", "c", "a/x", "b/y")
TARGETS = ("a", "b", "x", "a/x", "missing")
MODES = (0o644, 0o600, 0o755, 0o700, 0o750, 0o444)
OWNERS = ((0, 0), OWNER, (1, 1))
#: Seconds two "now" mtimes (one per tree, same operation) may differ by.
NOW_SLACK_NS = 30 * 10**9
_LONG = os.environ.get("S3FUSE_FUZZ_EXAMPLES")
_runs = itertools.count()
_names = itertools.count()


class Target(Protocol):
    """Where the machine's operations go, besides the local model directory."""

    def root(self) -> Path:
        """The directory the runs live in, as the current mount shows it."""

    def offline(self) -> None:
        """S3 becomes unreachable."""

    def online(self) -> None:
        """S3 is reachable again."""

    def remount(self, *, fresh: bool) -> None:
        """Unmount and mount again: with the same cache (online or not) or, `fresh`, online
        with everything in S3 and an empty cache."""


class LocalTarget:
    """A plain directory: offline and remount change nothing (the model's self-check)."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self._root = root

    def root(self) -> Path:
        return self._root

    def offline(self) -> None:
        pass

    def online(self) -> None:
        pass

    def remount(self, *, fresh: bool) -> None:
        pass


class MountTarget:
    """The real mount behind a cuttable proxy."""

    #: What the daemon logs, rightly, about offline periods and unmounting while offline.
    EXPECTED_LOG = r"S3 unreachable|offline|EHOSTUNREACH|not done at unmount|unreachable"

    def __init__(self, factory: Callable[..., Mount], bucket: str, proxy: CuttableProxy) -> None:
        self.factory = factory
        self.bucket = bucket
        self.proxy = proxy
        self.mount = self._start(None)

    def _start(self, cache_dir: Path | None) -> Mount:
        m = self.factory("--source", f"s3://{self.bucket}", "--drain-timeout", "2",
                         endpoint=self.proxy.endpoint, name=f"m{next(_names)}",
                         cache_dir=cache_dir, start=False)
        m.expect_log(self.EXPECTED_LOG)
        return m.start()

    def root(self) -> Path:
        return self.mount.path(self.bucket)

    def offline(self) -> None:
        self.proxy.cut()

    def online(self) -> None:
        self.proxy.restore()

    def remount(self, *, fresh: bool) -> None:
        if fresh:
            self.online()
            done = sync(self.mount.mountpoint)
            assert done.returncode == 0, done.stdout + done.stderr
        self.mount.stop()
        self.mount = self._start(None if fresh else self.mount.cache_dir)


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """A call's result, or its errno: what must match between the two trees."""
    try:
        fn(*args)
        return ("ok", None)
    except OSError as exc:
        return ("error", exc.errno)


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def shown(root: Path, *, offline: bool) -> dict[str, tuple[Any, ...]]:
    """(type, mode, uid, gid, size, bytes or target, mtime_ns) of every node below root.
    Offline, bytes the cache does not hold read as EHOSTUNREACH (a documented answer)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                body: Any = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                try:
                    body = path.read_bytes()
                except OSError as exc:
                    if not (offline and exc.errno == errno.EHOSTUNREACH):
                        raise
                    body = None
            else:
                body = ""
            found[str(path.relative_to(root))] = (
                stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid,
                0 if stat.S_ISDIR(st_.st_mode) else st_.st_size, body, st_.st_mtime_ns)
    return found


def _raise(exc: OSError) -> None:
    raise exc


def run_model(target: Target, local_root: Path, *, examples: int) -> None:
    """Run the machine: each example in a fresh directory of `target` and of `local_root`."""

    class PosixModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.run = f"run{next(_runs)}"
            self.local = local_root / self.run
            self.local.mkdir(parents=True)
            os.mkdir(self.mounted)
            self.is_offline = False
            self.explicit: set[str] = set()   # nodes whose mtime a utime set (exact match)
            self.steps: list[str] = []

        @property
        def mounted(self) -> Path:
            return target.root() / self.run

        def log(self, text: str) -> str:
            self.steps.append(text)
            return "\n".join(self.steps[-40:])

        def key(self, rel: str, *, follow: bool) -> str:
            """The node `rel` names in the local tree (symlinks resolved), as a relative path."""
            path = self.local / rel
            real = os.path.realpath(path) if follow else \
                os.path.join(os.path.realpath(path.parent), path.name)
            return os.path.relpath(real, self.local)

        def entries_changed(self, key: str) -> None:
            """`key` appeared or went away: its directory's mtime is now, not the one set."""
            self.explicit.discard(os.path.dirname(key))

        def forget(self, key: str) -> None:
            self.explicit = {k for k in self.explicit if k != key and not k.startswith(key + "/")}

        def both(self, text: str, fn: Callable[..., Any], *args: Any,
                 refusable_offline: bool = False) -> bool:
            """Do it on the mount, then locally; True when it happened. Offline, an operation
            S3 must do itself (a server-side copy) may answer EHOSTUNREACH and not happen."""
            got = outcome(fn, self.mounted, *args)
            if refusable_offline and self.is_offline and got == ("error", errno.EHOSTUNREACH):
                self.log(f"{text}: EHOSTUNREACH offline (not done)")
                return False
            want = outcome(fn, self.local, *args)
            assert got == want, self.log(f"{text}: mount {got} != local {want}")
            self.log(f"{text}: {want}")
            return want[0] == "ok"

        @rule(rel=st.sampled_from(PATHS), data=st.binary(max_size=3000))
        def write(self, rel: str, data: bytes) -> None:
            key = self.key(rel, follow=True)
            if self.both(f"write {rel} {len(data)}B", lambda d: write(d / rel, data)):
                self.forget(key)
                self.entries_changed(key)

        @rule(rel=st.sampled_from(PATHS), mode=st.sampled_from(MODES))
        def mkdir(self, rel: str, mode: int) -> None:
            if self.both(f"mkdir {rel} {mode:o}", lambda d: os.mkdir(d / rel, mode)):
                self.entries_changed(self.key(rel, follow=False))

        @rule(rel=st.sampled_from(PATHS), mode=st.sampled_from(MODES))
        def chmod(self, rel: str, mode: int) -> None:
            self.both(f"chmod {rel} {mode:o}", lambda d: os.chmod(d / rel, mode))

        @rule(rel=st.sampled_from(PATHS), owner=st.sampled_from(OWNERS))
        def chown(self, rel: str, owner: tuple[int, int]) -> None:
            self.both(f"lchown {rel} {owner}", lambda d: os.lchown(d / rel, *owner))

        @rule(rel=st.sampled_from(PATHS), seconds=st.integers(0, 10**6),
              nanos=st.integers(0, 999_999_999))
        def utime(self, rel: str, seconds: int, nanos: int) -> None:
            when = BASE_NS + seconds * 10**9 + nanos
            key = self.key(rel, follow=False)
            if self.both(f"lutimes {rel} {when}",
                         lambda d: os.utime(d / rel, ns=(when, when), follow_symlinks=False)):
                self.explicit.add(key)

        @rule(target_=st.sampled_from(TARGETS), rel=st.sampled_from(PATHS))
        def symlink(self, target_: str, rel: str) -> None:
            if self.both(f"symlink {target_} {rel}", lambda d: os.symlink(target_, d / rel)):
                self.entries_changed(self.key(rel, follow=False))

        @rule(old=st.sampled_from(PATHS), new=st.sampled_from(PATHS))
        def rename(self, old: str, new: str) -> None:
            old_key, new_key = self.key(old, follow=False), self.key(new, follow=False)
            if self.both(f"rename {old} {new}", lambda d: os.rename(d / old, d / new),
                         refusable_offline=True) and old_key != new_key:
                moved = {k for k in self.explicit if k == old_key or k.startswith(old_key + "/")}
                self.forget(new_key)
                self.explicit = (self.explicit - moved) | {new_key + k[len(old_key):] for k in moved}
                self.entries_changed(old_key)
                self.entries_changed(new_key)

        @rule(rel=st.sampled_from(PATHS))
        def unlink(self, rel: str) -> None:
            key = self.key(rel, follow=False)
            if self.both(f"unlink {rel}", lambda d: os.unlink(d / rel)):
                self.forget(key)
                self.entries_changed(key)

        @rule(rel=st.sampled_from(PATHS))
        def rmdir(self, rel: str) -> None:
            key = self.key(rel, follow=False)
            if self.both(f"rmdir {rel}", lambda d: os.rmdir(d / rel)):
                self.forget(key)
                self.entries_changed(key)

        @rule()
        def go_offline(self) -> None:
            target.offline()
            self.is_offline = True
            self.log("offline")

        @rule()
        def go_online(self) -> None:
            target.online()
            self.is_offline = False
            self.log("online")

        @rule(fresh=st.booleans())
        def remount(self, fresh: bool) -> None:
            self.log(f"remount {'with an empty cache' if fresh else 'with the same cache'}"
                     f"{' (offline)' if self.is_offline and not fresh else ''}")
            target.remount(fresh=fresh)
            if fresh:
                self.is_offline = False

        @invariant()
        def same_trees(self) -> None:
            want = shown(self.local, offline=False)
            got = shown(self.mounted, offline=self.is_offline)
            assert sorted(got) == sorted(want), self.log(f"paths {sorted(got)} != {sorted(want)}")
            for rel, w in want.items():
                g = got[rel]
                body_ok = g[5] == w[5] or (g[5] is None and self.is_offline)
                assert g[:5] == w[:5] and body_ok, self.log(f"{rel}: mount {g[:6]} != local {w[:6]}")
                if rel in self.explicit:
                    assert g[6] == w[6], self.log(f"{rel}: mtime {g[6]} != set {w[6]}")
                elif not stat.S_ISDIR(w[0]):
                    assert abs(g[6] - w[6]) < NOW_SLACK_NS, self.log(f"{rel}: mtime {g[6]} vs {w[6]}")

        def teardown(self) -> None:
            target.online()

    run_state_machine_as_test(PosixModel, settings=settings(
        max_examples=int(_LONG) if _LONG else examples, stateful_step_count=20, deadline=None,
        derandomize=not _LONG, database=None, print_blob=True,
        phases=[Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if _LONG else []),
        suppress_health_check=list(HealthCheck)))


def test_model_on_local_dir(tmp_path: Path) -> None:
    """The machine on two local directories: its bookkeeping (explicit mtimes through
    renames, symlinks, removals) and comparisons hold where nothing can differ."""
    run_model(LocalTarget(tmp_path / "target"), tmp_path / "model", examples=60)


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    """moto behind the cuttable proxy (it keeps metadata on `dir/` markers)."""
    return moto_backend


@pytest.mark.mount
@pytest.mark.timeout(240)
def test_mount_metadata_behaves_like_a_local_directory(
        bucket: str, mount_factory: Callable[..., Mount], proxy: CuttableProxy,
        tmp_path: Path) -> None:
    run_model(MountTarget(mount_factory, bucket, proxy), tmp_path / "model", examples=6)
