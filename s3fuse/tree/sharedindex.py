"""The fleet's shared archive index in S3: fetch what another machine published before
indexing a shard, publish what this one built after.

Opt-in (`--shared-index s3://BUCKET/PREFIX`, or `auto`: `.s3fuse-index/` beside each
manifest). One object per archive version, `PREFIX/<sha256("bucket/key")>/<etag>.idx`,
in archive/published.py's format. Everything here is best effort: a fetch that fails or
finds no index means indexing locally, a publish that fails is one log line, and a
destination that refuses writes (403) or does not exist (no such bucket) is not tried
again by this daemon. A publish still running at the unmount is abandoned. A fetched
index is hostile input: archive/published.py validates it before it is used. A
read-only mount (`publish=False`) fetches but never publishes: it sends no write request.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import trio

from ..archive.index import ArchiveIndex
from ..archive.limits import Limits
from ..archive.published import Rejected, allowance, decode, encode
from ..config import ManifestSpec, split_s3_uri
from ..errors import AccessDenied, NotFound, S3FuseError
from ..model import ObjectRef
from ..store.protocol import Store
from ..util.supervisor import Kind, Policy, Supervisor

log = logging.getLogger(__name__)

AUTO = "auto"
#: The folder `auto` uses, next to each manifest.
BESIDE_MANIFEST = ".s3fuse-index/"
SUFFIX = ".idx"
#: Background publishing, counted by the idle query (work in flight until it lands).
PUBLISH = Kind("index-publish", Policy.DROP)
_PLAIN_ETAG = re.compile(r"[A-Za-z0-9-]{1,128}")


@dataclass(frozen=True)
class Place:
    """Where one archive version's published index lives."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class SharedIndex:
    """Fetch and publish archive indexes at one location (a prefix, or beside manifests)."""

    def __init__(self, store: Store, location: str, background: Supervisor | None = None,
                 publish: bool = True):
        self.store = store
        self.publishing = publish
        self.location = location
        self.background = background
        self._fixed = None if location == AUTO else split_s3_uri(location)
        self._refused: set[tuple[str, str]] = set()  # (bucket, prefix) that answered 403
        self._limiter = trio.CapacityLimiter(1)

    def prefix(self, manifest: ManifestSpec) -> tuple[str, str]:
        """(bucket, prefix ending in "/" or empty) of the index objects for `manifest`."""
        if self._fixed is not None:
            bucket, prefix = self._fixed
            prefix = prefix.strip("/")
            return bucket, prefix + "/" if prefix else ""
        parent = manifest.key.rsplit("/", 1)[0] + "/" if "/" in manifest.key else ""
        return manifest.bucket, parent + BESIDE_MANIFEST

    def place(self, manifest: ManifestSpec, archive: ObjectRef) -> Place:
        bucket, prefix = self.prefix(manifest)
        name = hashlib.sha256(f"{archive.bucket}/{archive.key}".encode()).hexdigest()
        etag = archive.etag if _PLAIN_ETAG.fullmatch(archive.etag) else \
            hashlib.sha256(archive.etag.encode()).hexdigest()
        return Place(bucket, f"{prefix}{name}/{etag}{SUFFIX}")

    # ------------------------------------------------------------ fetch (worker thread)

    def fetch(self, manifest: ManifestSpec, archive: ObjectRef, limits: Limits) -> ArchiveIndex | None:
        """The published index of `archive`, validated; None (after at most one log line)
        when there is none or it cannot be used. Blocking."""
        place = self.place(manifest, archive)
        uri = f"s3://{archive.bucket}/{archive.key}"
        try:
            _, blob = self.store.get_whole(place.bucket, place.key, "", allowance(archive.size))
        except NotFound:
            log.debug("no shared index for %s at %s", uri, place.uri)
            return None
        except S3FuseError as exc:
            log.info("shared index of %s not fetched (%s): indexing locally", uri, exc)
            return None
        try:
            index = decode(blob, archive.bucket, archive.key, archive.etag, archive.size, limits)
        except Rejected as exc:
            log.warning("shared index %s of %s ignored (%s: %s): indexing locally and "
                        "publishing anew", place.uri, uri, "stale" if exc.stale else "invalid", exc)
            return None
        log.info("shard %s: index fetched from %s (%d members, %d bytes), not rebuilt", uri,
                 place.uri, len(index.members), len(blob))
        return index

    # ------------------------------------------------------------ publish (background)

    def publish_later(self, manifest: ManifestSpec, archive: ObjectRef, index: ArchiveIndex,
                      limits: Limits) -> None:
        """Publish `index` of `archive` in the background, unless a fetcher with `limits`
        would refuse it; never waits, never raises."""
        bucket, prefix = self.prefix(manifest)
        if not self.publishing or (bucket, prefix) in self._refused:
            return
        if self.background is None or not self.background.spawn(
                self._publish, manifest, archive, index, limits, kind=PUBLISH, name=archive.key):
            log.debug("shared index of %s not published: no background runner", archive.key)

    async def _publish(self, manifest: ManifestSpec, archive: ObjectRef, index: ArchiveIndex,
                       limits: Limits) -> None:
        place, where = self.place(manifest, archive), self.prefix(manifest)
        try:
            # abandoned at exit: a PUT that hangs must not hold the unmount (best effort)
            await trio.to_thread.run_sync(self._put, place, where, archive, index, limits,
                                          limiter=self._limiter, abandon_on_cancel=True)
        except (AccessDenied, NotFound) as exc:  # 403, or no such bucket: the same next time
            if where in self._refused:  # told by a publish that waited beside this one
                return
            self._refused.add(where)
            log.warning("shared index not published to %s (%s): this mount publishes no more "
                        "there", place.uri, exc)
        except S3FuseError as exc:
            log.warning("shared index of s3://%s/%s not published (%s)", archive.bucket,
                        archive.key, exc)

    def _put(self, place: Place, where: tuple[str, str], archive: ObjectRef, index: ArchiveIndex,
             limits: Limits) -> None:
        if where in self._refused:  # refused while this publish waited for its turn
            return
        blob = encode(index, archive.bucket, archive.key, archive.etag, archive.size)
        try:  # what every fetcher would refuse (over its size allowance, seek points denser
            # than it takes) stays here
            decode(blob, archive.bucket, archive.key, archive.etag, archive.size, limits)
        except Rejected as exc:
            log.info("shard s3://%s/%s: index not published: a fetcher would refuse it (%s)",
                     archive.bucket, archive.key, exc)
            return
        self.store.put_object(place.bucket, place.key, blob, content_type="application/octet-stream")
        log.info("shard s3://%s/%s: index published to %s (%d bytes)", archive.bucket, archive.key,
                 place.uri, len(blob))
