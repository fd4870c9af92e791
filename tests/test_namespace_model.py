"""Model test of the bucket namespace (issue 7): random keys, compared with design.md §2.

Hypothesis puts and deletes keys drawn to collide (file/prefix clashes, `dir/` markers,
empty markers, deep paths) and to be hostile ('.', '..', empty segments from '//', a
leading '/', 256-byte segments, NUL, control characters, unicode). After each check the
tree BucketTree shows (over moto's HTTP server, listing every time) must be exactly the
tree a tiny independent model derives from the key set. A few examples also go through
the real mount.

S3FUSE_MODEL_EXAMPLES raises the example count (default 20; CI keeps it modest).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, rule, run_state_machine_as_test

from s3fuse.cache.meta import MetaStore
from s3fuse.config import Config, parse_source
from s3fuse.store.s3 import S3Store
from s3fuse.tree.bucket import BucketTree

EXAMPLES = int(os.environ.get("S3FUSE_MODEL_EXAMPLES", "20"))
_runs = itertools.count()

# ------------------------------------------------------------------ the model (design.md §2)


def valid_segment(seg: str) -> bool:
    """A key segment that can be a POSIX name: not '', '.', '..', no NUL, <= 255 bytes."""
    return seg not in ("", ".", "..") and "\0" not in seg and len(seg.encode()) <= 255


def model_tree(keys: set[str]) -> dict[str, str]:
    """path -> 'dir' | 'file', as design.md §2 says the tree shows `keys`.

    Prefixes are directories (implicit or `dir/` markers; an empty marker is an empty
    directory); a key that is also a prefix is hidden (the directory wins); a key is shown
    down to its first segment that cannot be a POSIX name, and no further.
    """
    dirs: set[str] = set()
    files: set[str] = set()
    for key in keys:
        *parents, last = key.split("/")
        path = ""
        for seg in parents:
            if not valid_segment(seg):
                break
            path = f"{path}/{seg}" if path else seg
            dirs.add(path)
        else:
            if last and valid_segment(last):
                files.add(f"{path}/{last}" if path else last)
    tree = {d: "dir" for d in dirs}
    tree.update({f: "file" for f in files - dirs})
    return tree


# ------------------------------------------------------------------ keys to try

HOSTILE = [".", "..", "", "x" * 255, "y" * 256, "ü" * 128, "nul\0byte", "ctl\x01\x7f", "tab\t",
           " lead", "...", ".hidden", "%2e%2e", "\\..\\", "日本語", "🙂", "-rf"]
segments = st.one_of(
    st.sampled_from(["a", "b", "c", "dir"]),                    # small alphabet: clashes
    st.sampled_from(HOSTILE),
    st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
            min_size=1, max_size=6),
)
keys = st.builds(lambda segs, marker: "/".join(segs) + ("/" if marker else ""),
                 st.lists(segments, min_size=1, max_size=6),
                 st.booleans()).filter(lambda k: k != "" and len(k.encode()) <= 900)


def test_model_examples():
    """The model itself, on the cases design.md §2 names."""
    assert model_tree({"a/b/c", "a/", "e/", "clash", "clash/in"}) == {
        "a": "dir", "a/b": "dir", "a/b/c": "file", "e": "dir", "clash": "dir", "clash/in": "file"}
    assert model_tree({"a//b", "../x", "a/./y", "/abs", "z/" + "n" * 256, "ok"}) == {
        "a": "dir", "z": "dir", "ok": "file"}
    assert model_tree({"d/", "d//", "d/../../etc/passwd"}) == {"d": "dir"}


# ------------------------------------------------------------------ BucketTree against the model


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


@pytest.fixture
def store(moto_backend, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    for name, value in moto_backend.env().items():
        monkeypatch.setenv(name, value)
    return S3Store(Config(endpoint_url=moto_backend.endpoint, region="us-east-1", addressing_style="path"))


async def walk_tree(tree: BucketTree) -> dict[str, str]:
    """Everything the namespace shows, by listing and looking up, as the FUSE layer does."""
    seen: dict[str, str] = {}

    async def visit(path: str) -> None:
        for entry in await tree.listdir(path):
            child = f"{path}/{entry.name}" if path else entry.name
            found = await tree.lookup(path, entry.name)
            assert found is not None and found[1].is_dir == entry.is_dir, child
            seen[child] = "dir" if entry.is_dir else "file"
            if entry.is_dir:
                await visit(child)
        for hostile in (".", "..", "", "a/b"):
            assert await tree.lookup(path, hostile) is None

    await visit("")
    return seen


def shown(store: S3Store, meta: MetaStore, bucket: str, prefix: str) -> dict[str, str]:
    async def run() -> dict[str, str]:
        tree = BucketTree(parse_source(f"s3://{bucket}/{prefix}"), store, meta, None,  # type: ignore[arg-type]
                          ttl=0, list_limiter=trio.CapacityLimiter(8))
        return await walk_tree(tree)
    return trio.run(run)


def test_bucket_tree_matches_the_model(s3, bucket, store, tmp_path):
    meta = MetaStore(tmp_path / "meta.sqlite")

    class Namespace(RuleBasedStateMachine):
        stored = Bundle("stored")

        def __init__(self) -> None:
            super().__init__()
            self.prefix = f"run{next(_runs)}"
            self.keys: set[str] = set()

        @rule(target=stored, key=keys)
        def put(self, key: str) -> str:
            s3.put_object(Bucket=bucket, Key=f"{self.prefix}/{key}", Body=key.encode()[:16])
            self.keys.add(key)
            return key

        @rule(key=consumes(stored))
        def delete(self, key: str) -> None:
            s3.delete_object(Bucket=bucket, Key=f"{self.prefix}/{key}")
            self.keys.discard(key)

        @rule()
        def check(self) -> None:
            assert shown(store, meta, bucket, self.prefix) == model_tree(self.keys)

        def teardown(self) -> None:
            self.check()

    run_state_machine_as_test(Namespace, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=8, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    meta.close()


# ------------------------------------------------------------------ and through the real mount


def walk_mount(top: Path) -> dict[str, str]:
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        for name in dirnames:
            seen[name if rel == "." else f"{rel}/{name}"] = "dir"
        for name in filenames:
            seen[name if rel == "." else f"{rel}/{name}"] = "file"
    return seen


@pytest.mark.mount
def test_the_mount_shows_the_model(s3, bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "0")
    m.expect_log(r"hiding s3")
    fixed = {"a/b/c", "a/", "e/", "clash", "clash/in", "a//b", "../x", "a/./y", "/abs",
             "z/" + "n" * 256, "ctl\x01/t\tab", "ü" * 127 + "/f", "deep/" * 8 + "leaf"}

    @settings(max_examples=min(EXAMPLES, 3), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.filter_too_much])
    @given(st.sets(keys, max_size=8))
    def check(drawn: set[str]) -> None:
        prefix = f"mnt{next(_runs)}"
        for key in fixed | drawn:
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=b"x")
        assert walk_mount(m.path(bucket, prefix)) == model_tree(fixed | drawn)

    check()
    assert m.proc.poll() is None
