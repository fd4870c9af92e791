"""Page-cache coherence rules (fs/pagecache.py), one inode at a time, without a mount.

tests/test_concurrency.py proves the same rules through the kernel; these pin each
rule down: keep_cache across opens of one version, direct I/O while another version's
pages are in use, the size and mtime shown to the kernel meanwhile, and what a
readdirplus reply the kernel refused must not count as told.
"""
from __future__ import annotations

from s3fuse.fs.pagecache import KEEP_CACHE_MEMORY, Opened, PageCache, told_memory_for
from s3fuse.model import Entry

INO = 42


def version(etag: str, size: int, mtime_ns: int = 1) -> Entry:
    return Entry("f", False, size, mtime_ns, etag)


def open_read(pages: PageCache, entry: Entry) -> Opened:
    return pages.open_read(INO, entry, entry.size, entry.etag)


def test_keep_cache_only_when_the_same_version_is_opened_again():
    pages = PageCache()
    v1, v2 = version("e1", 10), version("e2", 10)
    first = open_read(pages, v1)
    assert first == Opened(keep_cache=False, paged=True, cached_reader=True)
    pages.release(INO, first)
    again = open_read(pages, v1)
    assert again.keep_cache and not again.direct_io
    pages.release(INO, again)
    changed = open_read(pages, v2)
    assert not changed.keep_cache and not changed.direct_io  # no handle of v1 is open
    pages.release(INO, changed)


def test_a_new_version_opened_while_the_old_one_is_read_bypasses_the_page_cache():
    pages = PageCache()
    v1, v2 = version("e1", 100, mtime_ns=1), version("e2", 60, mtime_ns=2)
    reading = open_read(pages, v1)
    pages.told(INO, pages.shown(INO, v2))         # a lookup of the new version meanwhile
    newer = open_read(pages, v2)
    assert newer.direct_io and not newer.paged    # it neither reads nor fills v1's pages
    assert pages.shown(INO, v2) == version("e1", 100, mtime_ns=1)  # v1's readers not cut short
    pages.release(INO, newer)
    pages.release(INO, reading)
    assert pages.shown(INO, v2) == v2             # all closed: the truth


def test_a_writer_here_makes_the_truth_shown_for_good():
    """A writer of this mount needs the real size (O_APPEND), and once it wrote, readers
    of the older version follow its bytes (tree/bucket/localsource.py): the truth stays
    shown after it closed, also when its upload gives the file a new ETag. Showing the
    old size then made the next `>>` write over the last append."""
    pages = PageCache()
    v1, v2, v3 = version("e1", 100), version("e2", 150), version("e3", 160)
    reading = open_read(pages, v1)
    assert pages.read_cached(INO)
    assert pages.shown(INO, v2).size == 100       # changed elsewhere: v1's readers kept whole
    writing = pages.open_write(INO)
    assert pages.shown(INO, v2) == v2
    pages.release(INO, writing)
    assert pages.shown(INO, v2) == v2
    assert pages.shown(INO, v3) == v3             # its upload landed under a new ETag
    joined = open_read(pages, v3)                 # a new reader shares the followed pages
    assert not joined.direct_io
    pages.release(INO, reading)
    pages.release(INO, joined)
    assert not pages.read_cached(INO)


def test_direct_readers_do_not_count_as_page_cache_readers():
    pages = PageCache()
    v1, v2 = version("e1", 100), version("e2", 60)
    reading = open_read(pages, v1)
    pages.told(INO, pages.shown(INO, v2))
    newer = open_read(pages, v2)
    assert newer.direct_io
    pages.release(INO, reading)
    assert not pages.read_cached(INO)             # the direct one reads past the pages
    pages.release(INO, newer)


def test_writing_drops_keep_cache_for_the_next_open():
    pages = PageCache()
    v1 = version("e1", 10)
    pages.release(INO, open_read(pages, v1))
    pages.release(INO, pages.open_write(INO))
    assert not open_read(pages, v1).keep_cache


def test_open_bypasses_when_the_kernel_was_told_another_size():
    pages = PageCache()
    v1, v2 = version("e1", 10), version("e2", 20)
    pages.told(INO, v2)                           # a lookup raced this open with v2's size
    assert open_read(pages, v1).direct_io
    handle_of_other_size = pages.open_read(INO, v2, 12, "local:x")  # the entry changed
    assert handle_of_other_size.direct_io


def test_a_version_this_mount_wrote_and_uploaded_opens_through_the_page_cache():
    """The kernel's size came from this mount's writes; the upload then gave the entry an
    ETag it was never told. A direct_io handle cannot be mapped shared (numpy.memmap,
    np.load(mmap_mode='r') failed with ENODEV): the open asks the kernel to fetch the
    attributes again instead. Another S3 version told still bypasses."""
    pages = PageCache()
    pages.told(INO, version("e1", 10))
    pages.wrote_here(INO)                          # written in place, then uploaded as e2
    uploaded = open_read(pages, version("e2", 10))
    assert not uploaded.direct_io and uploaded.refresh_attrs
    pages.release(INO, uploaded)
    pages.told(INO, version("e2", 10))
    pages.release(INO, open_read(pages, version("e2", 10)))
    again = open_read(pages, version("e2", 10))
    assert not again.refresh_attrs and not again.direct_io
    pages.release(INO, again)
    pages.told(INO, version("e3", 10))
    pages.told(INO, Entry("f", False, 12, 1, ""))  # a local version told: its size is ours
    assert not open_read(pages, version("e4", 12)).direct_io
    pages.told(INO, version("e5", 12))
    assert open_read(pages, version("e4", 12)).direct_io


def test_the_first_open_after_a_new_version_was_told_has_the_kernel_ask_again():
    """The kernel may have ignored the reply that told it the new version (an older
    reply's attributes applied after that request was sent win: `attr_version`), and
    kept the old size: a read through the page cache was cut at it (seen once in
    test_concurrency.py). The first open of an inode told a new version drops the
    kernel's attributes; the next opens and a first-ever told version do not."""
    pages = PageCache()
    v2, v3 = version("e2", 10), version("e3", 20)
    pages.told(INO, v2)
    first = open_read(pages, v2)
    assert not first.refresh_attrs and not first.direct_io  # the first version it heard of
    pages.release(INO, first)
    pages.told(INO, v3)                           # S3 changed: a lookup told the new size
    moved = open_read(pages, v3)
    assert moved.refresh_attrs and not moved.direct_io
    pages.release(INO, moved)
    assert not open_read(pages, v3).refresh_attrs
    pages.told(INO + 1, v2)
    pages.told(INO + 1, v3)
    pages.forget(INO + 1)                         # the kernel let go of it: nothing to ask
    assert not pages.open_read(INO + 1, v3, v3.size, v3.etag).refresh_attrs


def test_a_refused_readdir_entry_is_not_told():
    """readdir tells only what readdir_reply accepted: an entry shown but not sent leaves
    the kernel with the size it had, so an open of that version keeps the page cache."""
    pages = PageCache()
    v1, v2 = version("e1", 10), version("e2", 20)
    pages.told(INO, v1)
    pages.shown(INO, v2)                          # computed for a reply the kernel refused
    assert not open_read(pages, v1).direct_io


def test_versionless_entries_are_never_paged():
    pages = PageCache()
    local = Entry("f", False, 5, 1, "")            # a local file not uploaded yet
    opened = pages.open_read(INO, local, 5, "local:1")
    assert not opened.paged and not opened.direct_io
    pages.release(INO, opened)
    assert pages.shown(INO, version("e1", 9)) == version("e1", 9)


def test_memory_is_bounded():
    pages = PageCache(memory=3)
    for ino in range(10):
        pages.told(ino, version(f"e{ino}", 1))
        opened = pages.open_read(ino, version(f"e{ino}", 1), 1, f"e{ino}")
        pages.release(ino, opened)
    assert pages.open_read(9, version("e9", 1), 1, "e9").keep_cache      # recent: remembered
    assert not pages.open_read(0, version("e0", 1), 1, "e0").keep_cache  # oldest: forgotten


def test_what_the_kernel_was_told_is_remembered_for_the_newest_inodes_only():
    """Past the cap the older half is forgotten at once (a listing of a million keys tells
    the kernel of each): the newest inodes still open bypassing the page cache when the
    kernel holds another version's size, the forgotten ones are taken to hold the entry's."""
    pages = PageCache(told_memory=1000)
    for ino in range(10_000):
        pages.told(ino, version(f"old{ino}", 1))
    newest, oldest = 9_999, 0

    def bypasses(ino: int, entry: Entry) -> bool:
        opened = pages.open_read(ino, entry, entry.size, entry.etag)
        pages.release(ino, opened)
        return opened.direct_io

    assert bypasses(newest, version("new", 2))
    assert not bypasses(oldest, version("new", 2))
    pages.told(oldest, version("old0", 1))          # told again: remembered again
    assert bypasses(oldest, version("newer", 3))


def test_versions_opened_outlive_versions_told():
    """The told table has its own, smaller bound (a manifest's `find` tells the kernel of
    every entry and never gets them back): filling it forgets no version opened, so the
    page cache of a file read again is still kept."""
    pages = PageCache(memory=100, told_memory=10)
    opened = pages.open_read(1, version("e1", 1), 1, "e1")
    pages.release(1, opened)
    for ino in range(2, 50):
        pages.told(ino, version(f"e{ino}", 1))
    assert len(pages._told) <= 10
    assert pages.open_read(1, version("e1", 1), 1, "e1").keep_cache


def test_told_memory_follows_the_inode_cap():
    assert told_memory_for(40_000) == 40_000
    assert told_memory_for(0) == told_memory_for(10**7) == KEEP_CACHE_MEMORY  # no cap, or above


def test_only_a_write_only_handle_bypasses_the_page_cache():
    pages = PageCache()
    assert pages.open_write(INO, direct=True).direct_io         # write-only (fs/setid.py)
    assert not pages.open_write(INO).direct_io                  # O_RDWR: mmap needs pages
