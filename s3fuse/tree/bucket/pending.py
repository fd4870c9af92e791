"""The view of pending uploads: local changes laid over the stored listings.

One job of the bucket namespace (see tree/bucket/__init__.py for the split): between
a write and the end of its upload S3 still lists the old state, so every lookup, stat
and listing asks this view first. It reads the overlay the write-back layer fills
(a local file with its size, a new directory, a removal, GONE, or new POSIX metadata
of an object S3 has: its entry keeps S3's ETag, so reads go there) and merges it into
listings; when an upload lands it tells the listings what S3 holds now (`uploaded`),
so the name does not flicker once the overlay lets go of it. It changes no overlay
field itself except through the overlay's own methods (`touch`).
"""
from __future__ import annotations

import logging
import time

from ...cache.meta import apply_changes
from ...cache.overlay import Overlay
from ...errors import CacheFull, Offline
from ...model import Entry
from ...names import join
from ...upload.uploader import UploadResult
from .keys import BucketKeys
from .listing import Listings

log = logging.getLogger(__name__)

GONE = object()  # a name removed locally that S3 still lists
_NOTHING = object()  # no landing recorded for a key (not even a removal, whose result is None)
#: Landings remembered for their second telling: one per upload in flight, and a few
#: whose second telling never came (the journal failed in between): the oldest go.
RECORDED_MAX = 1024



class PendingView:
    """The overlay of one bucket tree's pending changes, as entries."""

    def __init__(self, keys: BucketKeys, overlay: Overlay, listings: Listings):
        self._keys = keys
        self._overlay = overlay
        self._listings = listings
        # The landing just recorded per key: the queue tells each one twice (before and
        # after its journal row ends) and the second telling must not write it again
        self._recorded: dict[str, UploadResult | None] = {}

    def local(self, path: str, name: str) -> Entry | object | None:
        """The entry local changes give `path/name` (GONE when removed), or None."""
        bucket, key = self._keys.bucket, self._keys.key(join(path, name))
        file_change = self._overlay.get(bucket, key)
        dir_change = self._overlay.get(bucket, key + "/")
        for change, is_dir in ((file_change, False), (dir_change, True)):
            if change is not None and not change.deleted:
                posix = change.posix
                mtime_ns = change.mtime_ns if posix is None or posix.mtime_ns is None \
                    else posix.mtime_ns
                return Entry(name, is_dir, change.size, mtime_ns, change.etag, time.time(),
                             posix)
        if file_change is not None or dir_change is not None:
            entry = self._listings.entry(path, name)
            if entry is not None and entry.is_dir and dir_change and file_change is None:
                # the directory is removed: a file of its name it hid in S3 shows
                return self._listings.hidden_file(path, name) or GONE
            if entry is None or (entry.is_dir and dir_change) or (not entry.is_dir and file_change):
                return GONE
        return None

    def merge(self, path: str, entries: list[Entry]) -> list[Entry]:
        """The listing of `path` (sorted by name) with local changes applied."""
        changes = self._overlay.children(self._keys.bucket, self._keys.dir_prefix(path))
        updates: dict[str, Entry | None] = {}
        for name in changes:
            local = self.local(path, name)
            if local is not None:
                updates[name] = local if isinstance(local, Entry) else None  # None: GONE
        return apply_changes(entries, updates)

    async def listing_or_local(self, path: str) -> None:
        """The stored listing of `path` made fresh; offline, a directory made here (not
        yet in S3) lists its local entries instead."""
        try:
            await self._listings.ensure(path)
        except Offline:
            change = self._overlay.get(self._keys.bucket, self._keys.dir_prefix(path))
            if change is None or change.deleted:
                raise

    def made_here(self, marker: str) -> bool:
        """Was directory `marker` made by this mount and not yet uploaded? (Offline, its
        rename moves what is local: S3 has nothing below a directory made here since.)"""
        change = self._overlay.get(self._keys.bucket, marker)
        return change is not None and change.made and not change.deleted

    def removed(self, key: str) -> bool:
        """Was `key` removed locally (S3 may still hold it)?"""
        change = self._overlay.get(self._keys.bucket, key)
        return change is not None and change.deleted

    def live_keys_under(self, prefix: str) -> list[str]:
        """Keys below `prefix` written or made locally (removals left out)."""
        return [k for k in self._overlay.keys_under(self._keys.bucket, prefix)
                if not self.removed(k)]

    # ----------------------------------------------------------- uploads landing

    def uploaded(self, key: str, result: UploadResult | None) -> bool:
        """A change reached S3: the listings learn it (`result` None: a removal). The
        queue tells each landing twice; the second telling of one recorded already is
        skipped (a listing point write on the loop costs as much as the rest of a
        `chmod`'s request), one that failed the first time (a full disk) is tried again.
        False when it could not be recorded: the overlay must keep showing the change,
        since the stored listing does not (write-back layer, `_uploaded`)."""
        place = self._keys.place(key)
        if place is None:
            return True
        if self._recorded.pop(key, _NOTHING) == result:
            return True
        try:
            self._record_upload(key, *place, result)
        except CacheFull as exc:  # S3 has it; the listing shows it once refreshed with room
            log.warning("%s is uploaded but not recorded in the stored listing: %s",
                        self._keys.uri(key), exc)
            return False
        self._recorded[key] = result
        if len(self._recorded) > RECORDED_MAX:
            del self._recorded[next(iter(self._recorded))]
        return True

    def _record_upload(self, key: str, parent: str, name: str,
                       result: UploadResult | None) -> None:
        if result is None:
            # A file `n` and a directory `n` (marker `n/`) are two keys sharing one name, and
            # only the jobs of one key are ordered: the removal of an old directory may land
            # after the new file of its name did (rmdir, create), and must not hide it.
            stored = self._listings.entry(parent, name)
            if stored is None or stored.is_dir == key.endswith("/"):
                if not (key.endswith("/") and self._listings.uncover(join(parent, name))):
                    self._listings.learn(parent, name, None)
        elif result.conflict_key is not None or result.kept_remote:  # S3's version: look again
            self._listings.unknown(parent, name)
        else:
            # the uploaded version's size: the overlay already shows a newer local change
            # when the file was opened or written again meanwhile (an entry stored with its
            # size showed this version cut short once that change was dropped, e.g. at a crash)
            change = self._overlay.get(self._keys.bucket, key)
            size = result.size if result.size is not None else change.size if change else 0
            self._listings.know_dir(parent)
            if key.endswith("/"):
                self._listings.know_dir(join(parent, name))
            posix = result.posix  # what the request stored: no HEAD needed for it
            mtime_ns = time.time_ns() if posix is None or posix.mtime_ns is None else posix.mtime_ns
            # checked now when its metadata (mtime included) is what the request stored: a
            # stat then needs no HEAD (rsync stats every file it just wrote); else the next
            # stat HEADs it for S3's LastModified
            checked = time.time() if posix is not None and posix.mtime_ns is not None else 0.0
            entry = Entry(name, key.endswith("/"), size, mtime_ns, result.etag, checked, posix)
            self._listings.learn(parent, name, entry)
