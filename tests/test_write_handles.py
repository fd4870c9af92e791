"""How write handles use the kernel's page cache (fs/pagecache.py `open_write`), through
the real mount: a write-only handle bypasses it, a read-write one keeps it for mmap."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from s3fuse.demo import free_port
from tests.test_metrics import scrape, value
from tests.test_security import as_nobody, needs_other_user, start, stop
from tests.test_write_mount import body, sync

pytestmark = pytest.mark.mount

MiB = 1 << 20


def test_a_write_only_handle_writes_past_the_page_cache(s3, bucket, mount_factory):
    """No `security.capability` query before each write call (the kernel makes one for
    writes through the page cache), no blend for a reader opened before, and the next
    open reads the new bytes, not pages of the old ones."""
    s3.put_object(Bucket=bucket, Key="f.bin", Body=b"o" * (2 * MiB))
    port = free_port()
    m = mount_factory("--source", f"s3://{bucket}", "--metrics-address", f"127.0.0.1:{port}")
    path = m.path(bucket, "f.bin")
    reader = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(reader, MiB, 0) == b"o" * MiB            # its pages are cached
        before = scrape(port)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        for n in range(8):
            assert os.write(fd, bytes([65 + n]) * MiB) == MiB
        os.close(fd)
        after = scrape(port)
        assert value(after, "s3fuse_fuse_operation_seconds_count", operation="write") - \
            value(before, "s3fuse_fuse_operation_seconds_count", operation="write") >= 8
        asked = value(after, "s3fuse_fuse_operation_seconds_count", operation="getxattr") - \
            value(before, "s3fuse_fuse_operation_seconds_count", operation="getxattr")
        assert asked <= 1, asked  # the truncating open's own; none per write
        old = os.pread(reader, 2 * MiB, 0)                       # the version it opened
        assert old in (b"o" * (2 * MiB), b"A" * MiB + b"B" * MiB)
    finally:
        os.close(reader)
    expected = b"".join(bytes([65 + n]) * MiB for n in range(8))
    assert path.read_bytes() == expected
    assert sync(m.mountpoint).returncode == 0 and body(s3, bucket, "f.bin") == expected


def test_a_read_write_handle_can_be_mapped_and_written_through_the_map(s3, bucket,
                                                                       mount_factory):
    """In a process of its own: msync waits for the upload (fsync), and Python's
    mmap.flush holds the GIL that this process's moto server needs to answer it."""
    s3.put_object(Bucket=bucket, Key="m.bin", Body=b"." * 8192)
    m = mount_factory("--source", f"s3://{bucket}")
    path = m.path(bucket, "m.bin")
    subprocess.run([sys.executable, "-c", MAP_AND_WRITE, str(path)], check=True, timeout=60)
    assert path.read_bytes()[4096:4100] == b"MMAP"
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "m.bin") == b"." * 4096 + b"MMAP" + b"." * 4092


MAP_AND_WRITE = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
with mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mapped:
    mapped[4096:4100] = b"MMAP"
    mapped.flush()
os.close(fd)
"""


def test_a_write_by_another_user_clears_set_id_bits(s3, bucket, backend, public_base,
                                                    fuse_available):
    """A write-only handle writes past the page cache, where the kernel leaves clearing
    set-id bits to the file system (fs/setid.py): set before the open, set while it is
    open, a write by an unprivileged user clears them; root's writes keep them."""
    needs_other_user()
    m = start(public_base / "setid", backend.env(), "--source", f"s3://{bucket}",
              "--allow-other")
    try:
        root = m.path(bucket)
        os.mkdir(root / "open", 0o777)
        os.chmod(root / "open", 0o777)
        before, during, roots = (root / "open" / n for n in ("before", "during", "roots"))
        for path in (before, during, roots):
            path.write_bytes(b"x")
            os.chmod(path, 0o777 if path == during else 0o6777)
        assert as_nobody("sh", "-c", f"echo more >> {before}").returncode == 0
        assert stat.S_IMODE(os.stat(before).st_mode) == 0o777
        script = ("import os, sys, time; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND); "
                  "os.write(fd, b'1'); print('open', flush=True); sys.stdin.readline(); "
                  "os.write(fd, b'2'); os.close(fd)")
        writer = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534",
                                   "--clear-groups", sys.executable, "-c", script, str(during)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline() == "open\n"                    # type: ignore[union-attr]
        os.chmod(during, 0o6777)                                       # set while it is open
        writer.communicate("go\n", timeout=30)
        assert writer.returncode == 0
        assert stat.S_IMODE(os.stat(during).st_mode) == 0o777
        assert during.read_bytes() == b"x12"
        with open(roots, "ab") as fh:                                   # root keeps them
            fh.write(b"y")
        assert stat.S_IMODE(os.stat(roots).st_mode) == 0o6777
        m.assert_idle()
    finally:
        stop(m)
