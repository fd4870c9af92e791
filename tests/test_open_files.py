"""Open descriptors through the real mount behave as on a local disk, each case a
reproduction a differential stress (a local directory as the oracle) found: two opens of
one file at once share its bytes, a reader follows its file across a rename and sees a
truncate by path or a writer opened beside it, and fchmod/fstat of a file whose name is
gone act on that file, not on whatever took the name."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.test_write_mount import sync

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


@pytest.fixture
def place(bucket, mount_factory):  # type: ignore[no-untyped-def]
    m = mount_factory("--source", f"s3://{bucket}")
    yield m.path(bucket), lambda: _synced(m.mountpoint)
    _synced(m.mountpoint)


def _synced(mountpoint: Path) -> None:
    done = sync(mountpoint)
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_opens_at_once_share_the_file(place):
    """Both appenders' lines land: the second open used to copy the file for itself while
    the first was still copying it, and the last close's version lost the other's line."""
    root, _ = place
    for attempt in range(10):
        path = root / f"f{attempt}"
        path.write_bytes(b"start\n")                  # closed, its upload pending
        fds: list[int] = [0, 0]
        together = threading.Barrier(2)

        def open_it(i: int) -> None:
            together.wait()
            fds[i] = os.open(path, os.O_WRONLY | os.O_APPEND)

        threads = [threading.Thread(target=open_it, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        os.write(fds[0], b"one\n")
        os.write(fds[1], b"two\n")
        os.close(fds[0])
        os.close(fds[1])
        assert path.read_bytes() == b"start\none\ntwo\n", attempt


def test_a_reader_follows_its_file_across_renames(place):
    """The file's S3 copy is not cached: the reader used to read the old key, deleted by
    the rename's server-side copy (ENOENT)."""
    root, settle = place
    (root / "x").write_bytes(b"hello\n")
    settle()
    os.rename(root / "x", root / "y")
    settle()
    fd = os.open(root / "y", os.O_RDONLY)
    try:
        os.rename(root / "y", root / "z")
        settle()
        assert os.read(fd, 100) == b"hello\n"
    finally:
        os.close(fd)


def test_a_reader_sees_a_truncate_by_path_and_a_writer_opened_beside_it(place):
    root, settle = place
    path = root / "a"
    path.write_bytes(b"0123456789\n")
    settle()
    with open(path, "rb", buffering=0) as reader:
        os.truncate(path, 0)
        settle()
        assert os.stat(path).st_size == os.fstat(reader.fileno()).st_size == 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)      # vim's save: the file keeps its ETag
    os.write(fd, b"0123456789\n")
    os.fsync(fd)
    os.fchmod(fd, 0o755)
    os.close(fd)
    writer = os.open(path, os.O_RDWR)
    reader_fd = os.open(path, os.O_RDONLY)            # opened while the writer is open
    try:
        os.pwrite(writer, b"more bytes\n", 11)
        os.close(writer)
        settle()
        path.read_bytes()                             # an open refreshes the kernel's size
        assert os.stat(path).st_size == 22
        assert os.pread(reader_fd, 100, 0) == b"0123456789\nmore bytes\n"
    finally:
        os.close(reader_fd)


def test_fchmod_and_fstat_of_a_file_whose_name_is_gone(place):
    root, _ = place
    (root / "b").write_bytes(b"old\n")
    os.chmod(root / "b", 0o600)
    fd = os.open(root / "b", os.O_RDONLY)
    try:
        (root / "a").write_bytes(b"new\n")
        os.chmod(root / "a", 0o640)
        os.rename(root / "a", root / "b")             # b is another file now
        assert oct(os.fstat(fd).st_mode) == oct(0o100600)
        os.fchmod(fd, 0o644)                          # changes the open file only
        assert oct(os.stat(root / "b").st_mode) == oct(0o100640)
        assert oct(os.fstat(fd).st_mode) == oct(0o100644)
        os.unlink(root / "b")
        os.fchmod(fd, 0o400)                          # no name at all: still fine
        assert oct(os.fstat(fd).st_mode) == oct(0o100400)
        assert os.read(fd, 100) == b"old\n"
    finally:
        os.close(fd)


def test_a_reader_keeps_the_written_file_when_its_name_goes(place):
    """A reader of a file that a writer changed, then removed (or renamed over), reads the
    writer's bytes, as on a local disk: it used to read the version from before them."""
    root, settle = place
    for remove in (lambda: os.unlink(root / "a"),
                   lambda: (root / "other").write_bytes(b"other\n") or os.rename(root / "other",
                                                                                root / "a")):
        (root / "a").write_bytes(b"old contents\n")
        settle()
        reader = os.open(root / "a", os.O_RDONLY)
        writer = os.open(root / "a", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(writer, b"new\n")
            remove()
            assert os.pread(reader, 100, 0) == b"new\n"
        finally:
            os.close(writer)
            os.close(reader)
        settle()
