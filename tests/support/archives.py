"""Tar archives of incompressible members for archive tests: what a shard test reads back."""
from __future__ import annotations

import io
import random
import tarfile


def random_tar(seed: int, count: int, size: int) -> tuple[bytes, dict[str, bytes]]:
    """A PAX tar of `count` members `mNN.bin` of `size` random bytes (seeded: the same
    archive every call); its bytes and the members by name."""
    rng = random.Random(seed)
    members = {f"m{i:02d}.bin": rng.randbytes(size) for i in range(count)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), members
