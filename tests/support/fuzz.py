"""Hypothesis settings shared by the fuzz tests (tests/test_fuzz_*.py).

In the suite the runs are small and derandomized, so CI sees the same examples every
time and stays fast. S3FUSE_FUZZ_EXAMPLES=N raises the example count for a long run by
hand and then draws fresh random examples (the point of a long run); a failure prints
the `@reproduce_failure` blob to replay it. A long run needs pytest-timeout off:
`S3FUSE_FUZZ_EXAMPLES=8000 python -m pytest -p no:timeout tests/test_fuzz_*.py`.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_LONG = os.environ.get("S3FUSE_FUZZ_EXAMPLES")


def fuzz_settings(examples: int) -> settings:
    """`examples` in the suite; S3FUSE_FUZZ_EXAMPLES instead when set (a run by hand)."""
    return settings(
        max_examples=int(_LONG) if _LONG else examples,
        deadline=None,
        derandomize=not _LONG,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


class MemSource:
    """An archive object in memory, as the RangeSource the archive package reads through."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]
