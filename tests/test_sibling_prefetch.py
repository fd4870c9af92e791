"""The cross-file read-ahead (data/prefetch.py): what it asks for, and how often it asks."""
from __future__ import annotations

import random

from s3fuse.data.prefetch import AHEAD_BYTES, WINDOW, SiblingPrefetcher
from s3fuse.model import ObjectRef

NAMES = [f"f{i:05d}" for i in range(1000)]


class FakeReader:
    block_size = 8 << 20

    def __init__(self) -> None:
        self.fetched: list[str] = []

    def prefetch(self, ref: ObjectRef, index: int) -> None:
        self.fetched.append(ref.key)


class Listing:
    """The stored listing's `files_after`, counting the queries."""

    def __init__(self, names: list[str], size: int = 4096, whole: set[str] = frozenset()) -> None:
        self.names, self.size, self.whole, self.queries = names, size, whole, 0

    def __call__(self, after: str, n: int) -> list[tuple[str, ObjectRef | None]]:
        self.queries += 1
        found = [name for name in self.names if name > after][:n]
        return [(name, None if name in self.whole else ObjectRef("b", name, "e", self.size))
                for name in found]


def read_in_order(count: int, listing: Listing, names: list[str] = NAMES) -> FakeReader:
    reader = FakeReader()
    prefetcher = SiblingPrefetcher(reader)  # type: ignore[arg-type]
    for name in names[:count]:
        prefetcher.opened("dir", name, listing)
    return reader


def test_nothing_is_fetched_before_a_second_open_in_order():
    listing = Listing(NAMES)
    assert read_in_order(1, listing).fetched == []
    assert listing.queries == 0


def test_a_shuffled_order_fetches_almost_nothing():
    """A sampler's random order is ascending every other open: only an open of one of
    the next few files after the last starts a run (each used to fetch 32 files)."""
    shuffled = list(NAMES)
    random.Random(7).shuffle(shuffled)
    reader = read_in_order(1000, Listing(NAMES), shuffled)
    assert len(reader.fetched) <= 8 * WINDOW  # the code before: 15,184 (972 files)


def test_a_reader_skipping_a_few_files_is_still_in_order():
    every_other = NAMES[::2]
    reader = read_in_order(100, Listing(NAMES), every_other)
    assert set(every_other[2:100]) <= set(reader.fetched)


def test_the_files_asked_for_stay_within_the_window_of_the_reader():
    """A reader that stops after 100 files of 1,000 leaves at most WINDOW fetched past it
    (each open used to ask for WINDOW more: 3,200 asked for after 100 opens)."""
    listing = Listing(NAMES)
    reader = read_in_order(100, listing)
    assert reader.fetched == NAMES[2:len(reader.fetched) + 2]  # each once, in order
    assert 100 + WINDOW // 2 <= len(reader.fetched) + 1 <= 100 + WINDOW


def test_the_listing_is_asked_once_per_half_window_not_per_open():
    listing = Listing(NAMES)
    read_in_order(1000, listing)
    assert listing.queries <= 1000 // (WINDOW // 2) + 2


def test_every_file_of_a_directory_read_through_is_fetched_once():
    listing = Listing(NAMES)
    reader = read_in_order(1000, listing)
    assert reader.fetched == NAMES[2:]


def test_reading_again_from_the_start_asks_again():
    listing = Listing(NAMES)
    reader = FakeReader()
    prefetcher = SiblingPrefetcher(reader)  # type: ignore[arg-type]
    for _ in range(2):
        for name in NAMES[:10]:
            prefetcher.opened("dir", name, listing)
    assert reader.fetched.count(NAMES[5]) == 2


def test_big_files_and_files_a_lookup_fetches_are_skipped_but_counted():
    listing = Listing(NAMES, whole={NAMES[3], NAMES[4]})
    reader = read_in_order(3, listing)
    assert NAMES[3] not in reader.fetched and NAMES[4] not in reader.fetched
    assert NAMES[5] in reader.fetched
    big = Listing(NAMES, size=(8 << 20) + 1)  # more than a block: its own read-ahead
    assert read_in_order(50, big).fetched == []
    assert big.queries <= 50 // (WINDOW // 2) + 2


def test_a_listing_that_grows_is_asked_again_once_the_reader_reaches_its_end():
    names = NAMES[:10]
    listing = Listing(names)
    reader = FakeReader()
    prefetcher = SiblingPrefetcher(reader)  # type: ignore[arg-type]
    for name in names[:3]:
        prefetcher.opened("dir", name, listing)
    queries = listing.queries
    for name in names[3:9]:  # the rest asked for already: no query until the end
        prefetcher.opened("dir", name, listing)
    assert listing.queries == queries
    listing.names = NAMES[:20]  # more files stored meanwhile
    prefetcher.opened("dir", NAMES[9], listing)
    prefetcher.opened("dir", NAMES[10], listing)
    assert NAMES[12] in reader.fetched


def test_files_of_a_few_mib_are_kept_in_flight_up_to_the_byte_budget():
    """Images or clips of 3 MiB: as many files ahead as 16 MiB holds (5), not 32 of them
    (96 MiB), and as many again after each open (not once half of them were read: the
    reader, faster than S3, caught up with the window and waited a round trip)."""
    size = 3 << 20
    listing = Listing(NAMES, size=size)
    reader = FakeReader()
    prefetcher = SiblingPrefetcher(reader)  # type: ignore[arg-type]
    for opened, name in enumerate(NAMES[:200], start=1):
        prefetcher.opened("dir", name, listing)
        if opened >= 2:
            past = [n for n in reader.fetched if n > name]
            assert len(past) == AHEAD_BYTES // size
    assert reader.fetched == NAMES[2:len(reader.fetched) + 2]
