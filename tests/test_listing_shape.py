"""Which files of a listing go out as names only (fs/listingshape.py); the readdir
replies that follow from it are tested in test_ops.py."""
from __future__ import annotations

from s3fuse.fs.listingshape import ListingShapes, Shape

BUCKET, MANIFEST = 0, 1


def listing(shapes: ListingShapes, ns: int, dir_ino: int, files: bool = True) -> Shape:
    """What readdir does: open the listing, and report a file sent as a name only."""
    shape = shapes.opened(ns, dir_ino)
    if files and shape is not Shape.ATTRS:
        shapes.sent_name(ns, dir_ino)
    return shape


def test_a_first_listing_sends_one_sentinel_and_a_walk_that_stats_keeps_attributes() -> None:
    shapes = ListingShapes()
    assert listing(shapes, BUCKET, 10) is Shape.SENTINEL
    shapes.looked_up(BUCKET, 10)               # `ls -l`, `du`: the sentinel was stat'ed
    assert listing(shapes, BUCKET, 11) is Shape.SENTINEL
    shapes.looked_up(BUCKET, 11)
    assert listing(shapes, BUCKET, 12) is Shape.SENTINEL
    assert listing(shapes, BUCKET, 10) is Shape.ATTRS   # stat'ed into: attributes for all


def test_a_walk_that_does_not_stat_gets_names_only_until_a_file_is_looked_up() -> None:
    shapes = ListingShapes()
    assert listing(shapes, BUCKET, 10) is Shape.SENTINEL
    assert listing(shapes, BUCKET, 11) is Shape.NAMES   # `find`: 10's sentinel was not looked up
    assert listing(shapes, BUCKET, 12) is Shape.NAMES
    shapes.looked_up(BUCKET, 7)                       # a file opened elsewhere by its path
    assert listing(shapes, BUCKET, 13) is Shape.NAMES
    shapes.looked_up(BUCKET, 13)                      # the listing just sent is stat'ed
    assert listing(shapes, BUCKET, 14) is Shape.SENTINEL
    assert listing(shapes, BUCKET, 13) is Shape.ATTRS


def test_a_listing_without_files_tells_nothing() -> None:
    """A directory of directories sends no sentinel: the walk is judged by the listings
    around it, not by the lookups it could not get."""
    shapes = ListingShapes()
    assert listing(shapes, BUCKET, 10, files=False) is Shape.SENTINEL
    assert listing(shapes, BUCKET, 11) is Shape.SENTINEL      # still undecided
    shapes.looked_up(BUCKET, 11)
    assert listing(shapes, BUCKET, 12, files=False) is Shape.SENTINEL
    assert listing(shapes, BUCKET, 13) is Shape.SENTINEL      # 11 was stat'ed: 12 changed nothing
    assert listing(shapes, BUCKET, 14, files=False) is Shape.NAMES  # 13 was not
    assert listing(shapes, BUCKET, 15) is Shape.NAMES


def test_the_same_directory_listed_again_is_not_judged_by_its_own_listing() -> None:
    """`ls` then `ls -l` of one directory: the second listing starts before any lookup."""
    shapes = ListingShapes()
    assert listing(shapes, BUCKET, 10) is Shape.SENTINEL
    assert listing(shapes, BUCKET, 10) is Shape.SENTINEL
    shapes.looked_up(BUCKET, 10)
    assert listing(shapes, BUCKET, 10) is Shape.ATTRS


def test_each_namespace_watches_its_own_walk() -> None:
    shapes = ListingShapes()
    assert listing(shapes, MANIFEST, 100) is Shape.SENTINEL
    assert listing(shapes, BUCKET, 10) is Shape.SENTINEL
    shapes.looked_up(BUCKET, 10)
    assert listing(shapes, MANIFEST, 101) is Shape.NAMES   # the bucket's lookup is not the manifest's
    assert listing(shapes, BUCKET, 11) is Shape.SENTINEL


def test_directories_stated_into_are_bounded() -> None:
    shapes = ListingShapes(capacity=3)
    for ino in (1, 2, 3):
        shapes.looked_up(BUCKET, ino)
    shapes.looked_up(BUCKET, 1)                       # used again: the newest
    shapes.looked_up(BUCKET, 4)                       # 2 goes
    assert [shapes.opened(BUCKET, i) is Shape.ATTRS for i in (1, 2, 3, 4)] == \
        [True, False, True, True]
