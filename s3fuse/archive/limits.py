"""Caps on what one archive may cost, and the one error this package raises.

Archives are untrusted input: sizes in headers lie, and a few KiB of gzip can
expand to terabytes. Every cap is counted as bytes stream by, never taken from
a header. Header bytes count too: a PAX or GNU long-name header is an entry and
its bytes are archive bytes, and headers may not outweigh the data they describe
(a flood of 1 MiB names would otherwise cost memory and reads for nothing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s3fuse.archive.index import ArchiveIndex

GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Caps per archive; going over one raises ArchiveError naming the cap."""

    max_members: int = 1_000_000        # entries of any type, counted as parsed
    max_total_bytes: int = 64 * GiB     # member data, and decompressed bytes
    max_ratio: float = 200.0            # decompressed / compressed, once past ratio_grace_bytes
    #: Output decompressed before max_ratio is judged. A bomb's cost up to here is bounded
    #: (256 MiB of zeros: about a second of CPU, at most 32 MiB of seek-point windows), so
    #: a legit archive of modest size compresses as well as it likes (a 64 MiB zero-filled
    #: disk image gzips 1,000x); was 1 MiB, which refused such archives as bombs.
    ratio_grace_bytes: int = 256 << 20
    max_member_bytes: int = 16 * GiB    # one member's size
    max_header_ratio: float = 16.0      # header bytes / member data bytes (padded), after 32 MiB
    max_name_bytes: int = 256 << 20     # the member paths kept, all together


class ArchiveError(Exception):
    """The archive is corrupt, truncated or over a cap (the daemon answers EIO).

    `partial` holds what was indexed before the failure when at least one
    member was found, so the daemon may choose to serve those members.
    """

    def __init__(self, message: str, partial: ArchiveIndex | None = None) -> None:
        super().__init__(message)
        self.partial = partial
