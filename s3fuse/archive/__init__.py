"""Shard archives (tar, tar.gz, tar.xz, tar.bz2) in S3: index them, read single members.

Blocking and dependency-light (no trio, no boto3): the daemon runs it in worker
threads over a RangeSource that reads through its block cache.
"""
from s3fuse.archive.index import ArchiveIndex, RangeSource, build_index, iter_decompressed, read_member
from s3fuse.archive.limits import ArchiveError, Limits
from s3fuse.archive.tar import Member

__all__ = [
    "ArchiveError",
    "ArchiveIndex",
    "Limits",
    "Member",
    "RangeSource",
    "build_index",
    "iter_decompressed",
    "read_member",
]
