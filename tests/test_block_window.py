"""The in-memory block window: a block fetched ahead makes its room before it comes."""
from __future__ import annotations

from s3fuse.util.lru import ByteLRU


def test_make_room_evicts_blocks_already_read_never_ones_fetched_ahead() -> None:
    lru = ByteLRU(4 * 10)
    lru.put("passed", b"p" * 10)
    lru.put("reading", b"r" * 10)
    lru.put("next", b"n" * 10, ahead=True)
    lru.put("after", b"a" * 10, ahead=True)
    lru.get("reading")  # the block being read is the most recently used
    lru.make_room(10)   # one more on its way: the passed block goes now, not once it lands
    assert "passed" not in lru and lru.size == 30
    assert all(key in lru for key in ("reading", "next", "after"))
    lru.make_room(40)   # never the blocks fetched ahead: only those read go
    assert "reading" not in lru and "next" in lru and "after" in lru and lru.size == 20
