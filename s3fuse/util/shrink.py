"""When to copy a dict that entries keep leaving, so its memory goes back.

CPython never shrinks a dict's table as entries are removed: they leave dummy slots, and
the next resize sizes the table for three times the entries left. The tables of the
inodes the kernel holds churn (past the inode cap a fifth of them go at a time while new
ones come in): at 50,000 inodes each had grown to 2^18 slots (5.2 MiB for ino -> node).
A copy is sized for what it holds; made once the removals since the last one outnumber
the entries left, it keeps such a table at 2^17 slots (2.6 MiB), for O(1) amortized work
per removal.
"""
from __future__ import annotations

#: Tables this small are never worth a copy.
MIN_REMOVALS = 4096


class RemovalCounter:
    """Counts removals from one or more dicts; says when copying them is due."""

    __slots__ = ("removed",)

    def __init__(self) -> None:
        self.removed = 0

    def removed_one(self, left: int) -> bool:
        """One entry was removed and `left` remain: True when the dicts should be copied
        now (the count starts again)."""
        self.removed += 1
        if self.removed <= max(left, MIN_REMOVALS):
            return False
        self.removed = 0
        return True
