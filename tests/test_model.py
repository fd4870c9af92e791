"""model.new_entry: the fast Entry constructor of the stored-row hot path is an Entry."""
from __future__ import annotations

import dataclasses

import pytest

from s3fuse.model import Entry, new_entry
from s3fuse.posix import NO_HEADERS, Posix


@pytest.mark.parametrize("posix", [None, NO_HEADERS, Posix(mode=0o100640, uid=1000, gid=1000,
                                                           mtime_ns=1_700_000_000_123_456_789)])
@pytest.mark.parametrize("is_dir", [False, True])
def test_new_entry_is_the_entry_the_constructor_makes(posix: Posix | None, is_dir: bool) -> None:
    values = ("f0000001.dat", is_dir, 4096, 1_733_450_000_000_000_000, "d41d8cd9", 1.5, posix)
    fast, slow = new_entry(*values), Entry(*values)
    assert type(fast) is Entry
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    assert dataclasses.replace(fast, size=1) == dataclasses.replace(slow, size=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.size = 1  # type: ignore[misc]
