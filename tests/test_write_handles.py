"""How write handles use the kernel's page cache (fs/pagecache.py `open_write`), through
the real mount: a write-only handle bypasses it, a read-write one keeps it for mmap."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from s3fuse.demo import free_port
from tests.test_metrics import scrape, value
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
