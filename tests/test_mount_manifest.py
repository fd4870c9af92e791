"""s3exchange manifests through the real mount: fixtures written by the real library,
checked with os.walk, shell tools and xattrs."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.support import s3exchange_fixtures as fx

pytestmark = pytest.mark.mount

WELL_FORMED = ["overwrite_manifest", "append_parts_manifest", "writer_manifest", "targz_shards",
               "mixed_compressions"]


def walk(top: Path) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        found += [name if rel == "." else f"{rel}/{name}" for name in files]
    return found


def check_view(top: Path, fixture: fx.ManifestFixture) -> None:
    assert fixture.listing_problems(walk(top)) == []
    for path, data in fixture.files.items():
        assert (top / path).read_bytes() == data, path
    for path, attrs in fixture.xattrs.items():
        for name, value in attrs.items():
            assert os.getxattr(top / path, name) == value, (path, name)


def write(backend, name: str, bucket: str) -> fx.ManifestFixture:  # type: ignore[no-untyped-def]
    return getattr(fx, name)(backend.endpoint, bucket, "data", access_key=backend.access_key,
                             secret_key=backend.secret_key)


def test_well_formed_manifests(backend, bucket, mount_factory):
    fixtures = {name: write(backend, name, bucket) for name in WELL_FORMED}
    args = []
    for name, fixture in fixtures.items():
        args += ["--manifest", f"{name}={fixture.uri}"]
    m = mount_factory(*args)
    assert sorted(os.listdir(m.mountpoint)) == sorted(fixtures)
    for name, fixture in fixtures.items():
        check_view(m.path(name), fixture)
    some = next(p for p, s in fixtures["targz_shards"].sources.items() if s.member)
    out = subprocess.run(["sha256sum", str(m.path("targz_shards", some))], capture_output=True,
                         text=True, check=True).stdout.split()[0]
    assert out == hashlib.sha256(fixtures["targz_shards"].files[some]).hexdigest()
    dump = subprocess.run(["getfattr", "-d", str(m.path("targz_shards", some))], capture_output=True,
                          text=True, check=True).stdout
    assert "user.s3.uri=" in dump and "#" in dump
    with pytest.raises(OSError) as info:
        (m.path("overwrite_manifest") / "new.txt").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        os.chmod(m.path("targz_shards", some), 0o600)  # as chmod on a read-only fs: not EPERM
    assert info.value.errno == errno.EROFS


def test_append_parts_appear_after_ttl(backend, bucket, mount_factory):
    fixture = write(backend, "append_parts_manifest", bucket)
    m = mount_factory("--manifest", f"parts={fixture.uri}", "--metadata-ttl", "1")
    check_view(m.path("parts"), fixture)
    before = os.stat(m.path("parts", next(iter(fixture.files)))).st_ino
    grown = fx.append_more(backend.endpoint, bucket, "data", access_key=backend.access_key,
                           secret_key=backend.secret_key)
    time.sleep(1.5)
    check_view(m.path("parts"), grown)
    assert os.stat(m.path("parts", next(iter(fixture.files)))).st_ino == before  # stable inode


def test_hostile_manifest_is_served_around_its_problems(backend, bucket, mount_factory):
    fixture = write(backend, "hostile_manifest", bucket)
    m = mount_factory("--manifest", f"hostile={fixture.uri}")
    for pattern in (r"skipped", r"cycle", r"missing", r"unusable", r"not shown", r"POSIX",
                    r"too many|over|cap|ratio"):
        m.expect_log(pattern)
    check_view(m.path("hostile"), fixture)
    assert m.proc.poll() is None   # the daemon survived everything


def test_index_is_reused_across_remounts(backend, bucket, mount_factory):
    fixture = write(backend, "targz_shards", bucket)
    first = mount_factory("--manifest", f"t={fixture.uri}", name="first")
    check_view(first.path("t"), fixture)
    first.stop()
    second = mount_factory("--manifest", f"t={fixture.uri}", name="second", cache_dir=first.cache_dir)
    at_start = second.status()["requests"].get("GetObject", 0)  # the credentials' check:
    assert at_start <= 1                                          # one byte of the manifest
    check_view(second.path("t"), fixture)
    requests = second.status()["requests"]
    assert requests.get("GetObject", 0) == at_start  # index and member bytes all from the cache


def test_members_of_a_plain_tar_are_read_from_the_blocks_its_index_fetched(
        backend, bucket, mount_factory):
    fixture = write(backend, "targz_shards", bucket)
    m = mount_factory("--manifest", f"t={fixture.uri}")
    top = m.path("t")
    plain = {path: data for path, data in fixture.files.items() if ".tar/" in path}
    assert len(plain) == 3
    shard_dir = top / next(iter(plain)).partition(".tar/")[0]
    os.listdir(shard_dir.parent / (shard_dir.name + ".tar"))  # indexes it: the archive fetched
    before = m.status()["requests"].get("GetObject", 0)
    for path, data in plain.items():
        assert (top / path).read_bytes() == data
        assert os.getxattr(top / path, "user.s3fuse.cached") == b"1"  # readable offline
    assert m.status()["requests"].get("GetObject", 0) == before  # no GET per member
    for path, data in fixture.files.items():  # the .tar.gz members still inflate
        assert (top / path).read_bytes() == data


def test_an_overlong_manifest_line_is_skipped_and_the_rest_served(s3, bucket, mount_factory):
    """A 17 MiB line (over the 16 MiB line cap; test_manifest_index.py streams a 2 GB one)
    between good lines: one clear log line, the daemon never holds the line whole."""
    s3.put_object(Bucket=bucket, Key="ml/run/a.txt", Body=b"alpha")
    s3.put_object(Bucket=bucket, Key="ml/run/b.txt", Body=b"bravo")
    huge = b'{"kind":"file","key":"ml/run/' + b"x" * (17 << 20) + b'"}'
    body = (b'{"kind":"file","key":"ml/run/a.txt"}\n' + huge + b'\n'
            b'{"kind":"file","key":"ml/run/b.txt"}\n')
    s3.put_object(Bucket=bucket, Key="ml/run/manifest.jsonl", Body=body)
    m = mount_factory("--manifest", f"run=s3://{bucket}/ml/run/manifest.jsonl")
    m.expect_log(r"1 line skipped \(line 2: longer than 16777216 bytes\)")
    assert sorted(os.listdir(m.path("run"))) == ["a.txt", "b.txt"]
    assert m.path("run", "b.txt").read_bytes() == b"bravo"
    assert "1 line skipped (line 2: longer than 16777216 bytes)" in m.log()


def test_an_entry_whose_object_is_missing_fails_its_read_not_its_directory(s3, bucket,
                                                                            mount_factory):
    """Lines without an ETag are HEADed when listed: a 404 for one of them emptied the whole
    `ls` (readdir failed with ENOENT, which ls and os.listdir read as the end). Now it is
    listed as the manifest says (as a line with an ETag is, without a HEAD), one log line
    names it, and reading it fails with ENOENT."""
    s3.put_object(Bucket=bucket, Key="m/d/exists.txt", Body=b"here\n")
    s3.put_object(Bucket=bucket, Key="m/manifest.jsonl", Body=(
        b'{"kind":"file","key":"m/d/exists.txt","size_bytes":5}\n'
        b'{"kind":"file","key":"m/d/gone1.txt","size_bytes":5}\n'
        b'{"kind":"file","key":"m/d/gone2.txt"}\n'))
    m = mount_factory("--manifest", f"v=s3://{bucket}/m/manifest.jsonl")
    m.expect_log(r"gone[12]\.txt is not in S3: listed as the manifest says")
    top = m.path("v", "d")
    listed = subprocess.run(["ls", "-l", str(top)], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[-1] for line in listed.stdout.splitlines()[1:]] == [
        "exists.txt", "gone1.txt", "gone2.txt"]
    assert sorted(os.listdir(top)) == ["exists.txt", "gone1.txt", "gone2.txt"]
    assert (top / "exists.txt").read_bytes() == b"here\n"
    for name in ("gone1.txt", "gone2.txt"):
        with pytest.raises(FileNotFoundError):
            (top / name).read_bytes()
    assert os.getxattr(top / "gone1.txt", "user.s3fuse.cached") == b"0"


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_shard_replaced_in_s3_is_indexed_again_after_the_read_that_found_it(
        s3, bucket, mount_factory):
    """The manifest unchanged, its shard archive re-uploaded: a read that misses the cache
    finds the archive changed (ESTALE, as for any object changed under an open handle), and
    the shard is indexed again at its next lookup. Its index used to stay, keyed by the old
    ETag, and every read failed with ESTALE, past the TTL and across remounts."""
    s3.put_object(Bucket=bucket, Key="s/shards/x.tar", Body=tar_of({"a.txt": b"version 1\n"}))
    s3.put_object(Bucket=bucket, Key="s/manifest.jsonl", Body=(
        b'{"kind":"shard","archive_key":"s/shards/x.tar","format":"tar","compression":null}\n'))
    args = ("--manifest", f"v=s3://{bucket}/s/manifest.jsonl", "--metadata-ttl", "1")
    m = mount_factory(*args)
    assert m.path("v", "shards", "x.tar", "a.txt").read_bytes() == b"version 1\n"
    m.stop()
    cleared = subprocess.run([sys.executable, "-m", "s3fuse", "cache", "clear", "--cache-dir",
                              str(m.cache_dir)], env=m.env, capture_output=True, text=True)
    assert cleared.returncode == 0, cleared.stderr
    s3.put_object(Bucket=bucket, Key="s/shards/x.tar", Body=tar_of({"a.txt": b"version 2!\n"}))
    again = mount_factory(*args, name="again", cache_dir=m.cache_dir)
    again.expect_log(r"x\.tar changed in S3: indexing it again|read .*a\.txt failed: ESTALE")
    member = again.path("v", "shards", "x.tar", "a.txt")
    with pytest.raises(OSError) as info:
        member.read_bytes()
    assert info.value.errno == errno.ESTALE
    time.sleep(1.5)  # the kernel's entry expires: the next lookup indexes the shard again
    assert member.read_bytes() == b"version 2!\n"


def test_members_in_a_directory_of_a_replaced_shard_read_again_without_waiting(
        s3, bucket, mount_factory):
    """Members laid out in a directory of the shard (`clips/`, as s3exchange users do): after
    the read that found the archive changed, the kernel still holds `clips/` and never asks
    for the shard's directory again. The next lookup or open in it indexes the shard again,
    and the paths keep their inode numbers, so the other members read at once: they were
    ENOENT for the whole metadata TTL, `ls` again or not. And a manifest entry whose object
    is gone is named in the log by the read that finds it."""
    old = {f"clips/m{n}.bin": f"version 1 of {n}\n".encode() for n in range(3)}
    s3.put_object(Bucket=bucket, Key="s/shards/x.tar", Body=tar_of(old))
    s3.put_object(Bucket=bucket, Key="s/loose.txt", Body=b"loose\n")
    loose_etag = s3.head_object(Bucket=bucket, Key="s/loose.txt")["ETag"].strip('"')
    s3.put_object(Bucket=bucket, Key="s/manifest.jsonl", Body=(
        b'{"kind":"shard","archive_key":"s/shards/x.tar","format":"tar","compression":null}\n'
        + b'{"kind":"file","key":"s/loose.txt","size_bytes":6,"etag":"%s"}\n'
        % loose_etag.encode()))
    args = ("--manifest", f"v=s3://{bucket}/s/manifest.jsonl")
    m = mount_factory(*args)
    assert m.path("v", "shards", "x.tar", "clips", "m1.bin").read_bytes() == old["clips/m1.bin"]
    m.stop()
    cleared = subprocess.run([sys.executable, "-m", "s3fuse", "cache", "clear", "--cache-dir",
                              str(m.cache_dir)], env=m.env, capture_output=True, text=True)
    assert cleared.returncode == 0, cleared.stderr
    new = {f"clips/m{n}.bin": f"version 2 of {n}, longer\n".encode() for n in range(3)}
    s3.put_object(Bucket=bucket, Key="s/shards/x.tar", Body=tar_of(new))
    again = mount_factory(*args, name="again", cache_dir=m.cache_dir)
    again.expect_log(r"x\.tar changed in S3: indexing it again|read .*m0\.bin failed: ESTALE|"
                     r"loose\.txt is not in S3 any more|read .*loose\.txt failed")
    clips = again.path("v", "shards", "x.tar", "clips")
    assert sorted(os.listdir(clips)) == ["m0.bin", "m1.bin", "m2.bin"]  # the old index
    inode = os.stat(clips / "m1.bin").st_ino
    with pytest.raises(OSError) as info:
        (clips / "m0.bin").read_bytes()                 # uncached: finds the archive changed
    assert info.value.errno == errno.ESTALE
    assert (clips / "m1.bin").read_bytes() == new["clips/m1.bin"]   # at once, same inode
    assert os.stat(clips / "m1.bin").st_ino == inode
    assert sorted(os.listdir(clips)) == ["m0.bin", "m1.bin", "m2.bin"]
    assert (clips / "m0.bin").read_bytes() == new["clips/m0.bin"]

    s3.delete_object(Bucket=bucket, Key="s/loose.txt")
    with pytest.raises(FileNotFoundError):
        again.path("v", "loose.txt").read_bytes()
    assert "loose.txt is not in S3 any more" in again.log()


def test_a_walk_that_only_lists_gets_names_and_stats_after_it_are_right(backend, bucket,
                                                                        mount_factory):
    """`find` gets the files of a manifest as names only once it shows it stats none
    (fs/listingshape.py): their dirents still carry the inode `stat` gives, and `ls -l`
    and reads after it see every file as it is."""
    fixture = write(backend, "writer_manifest", bucket)
    m = mount_factory("--manifest", f"w={fixture.uri}")
    top = m.path("w")
    for _ in range(2):
        found = subprocess.run(["find", str(top), "-type", "f"], capture_output=True, text=True,
                               check=True).stdout.split("\n")
        assert sorted(os.path.relpath(p, top) for p in found if p) == sorted(walk(top))
    for dirpath, _dirs, _files in os.walk(top):
        with os.scandir(dirpath) as entries:
            for entry in entries:
                assert entry.inode() == os.lstat(entry.path).st_ino, entry.path
    for path, data in fixture.files.items():
        assert os.stat(top / path).st_size == len(data), path
    listed = subprocess.run(["ls", "-lR", str(top)], capture_output=True, text=True,
                            check=True).stdout
    assert "?" not in listed
    check_view(top, fixture)
