"""benchmarks/pyfuse3_floor.py: the dict-backed pyfuse3 file system mounts, `ls -l` of it
succeeds (check=True), and the per-lookup figures come out (and it unmounts)."""
from __future__ import annotations

import pytest

from benchmarks import pyfuse3_floor

pytestmark = pytest.mark.mount


def test_the_floor_is_measured_over_a_real_mount() -> None:
    result = pyfuse3_floor.measure(files=50, rounds=1)
    assert result["files"] == 50 and result["ls_l_s"] > 0
    assert 0 < result["cpu_us_per_lookup"] < 5_000 and result["wall_us_per_lookup"] > 0
    assert not any(line.split()[0] == "pyfuse3-floor" for line in open("/proc/mounts"))


def test_the_warm_cat_floor_reads_every_file_through_a_real_mount() -> None:
    """The files' bytes are checked (a floor that read nothing would be no floor)."""
    assert 0 < pyfuse3_floor.warm_cat(files=50, size=4096, rounds=1) < 10
    assert not any(line.split()[0] == "pyfuse3-floor" for line in open("/proc/mounts"))


def test_the_write_floor_copies_the_whole_file_into_a_real_mount(tmp_path) -> None:
    """cp into the floor file system: its size is checked after (a floor that wrote
    nothing would be no floor), and it unmounts."""
    source = tmp_path / "src.bin"
    source.write_bytes(b"q" * (3 << 20) + b"tail")
    assert 0 < pyfuse3_floor.cp_write(source, rounds=2) < 10
    assert not any(line.split()[0] == "pyfuse3-floor" for line in open("/proc/mounts"))
