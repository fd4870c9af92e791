"""Which conditional requests a bucket's server honours: probed once per bucket.

Some S3-compatible servers ignore If-Match / If-None-Match (they answer 200 and write or
delete anyway) instead of refusing them with 501: trusting them would overwrite or delete
the newer version a condition was meant to protect. So before the first conditional write
or delete to a bucket, a scratch key of our own beside the job's key (same prefix: the
same permissions) is written, written again with `If-None-Match: *` and with `If-Match` a
wrong ETag (both must fail with 412), deleted with `If-Match` a wrong ETag (must fail with
412), copied onto itself with a wrong `CopySourceIfMatch` where that saves a HEAD (must fail
with 412), then deleted. Writes and deletes are judged apart (a server may honour one only);
what is missing gets the uploader's HEAD check instead. Answers are kept for the mount's
lifetime. The scratch key is recorded in the journal before it is written, so one a
crash leaves behind is deleted at the next start (`remove_leftovers`); listings never show
one, and a writable mount that lists one older than PROBE_STALE (its journal was lost with
a wiped cache directory) removes it (tree/bucket/listing.py). Offline (or a
transient error) during the probe postpones it: the job waits and the probe runs again,
support is never assumed. A scratch key we may not write (403)
gives that one request the HEAD check, and the next one probes again. Blocking: call from
a worker thread.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from dataclasses import dataclass, replace
from typing import Callable

from ..errors import Offline, S3FuseError, StaleObject
from ..names import PROBE_HEX, PROBE_NAME, join, split
from ..store import retry
from ..store.protocol import Store
from .journal import Journal

log = logging.getLogger(__name__)

#: PutObject requests of a probe on a server that honours conditions (the scratch key,
#: If-None-Match, If-Match), for whoever counts requests.
PROBE_PUTS = 3
#: An ETag no object has (well-formed: some servers reject malformed ones with 400).
WRONG_ETAG = "0" * 32


@dataclass(frozen=True, slots=True)
class Capability:
    put: bool     # If-Match / If-None-Match on PutObject and CompleteMultipartUpload
    delete: bool  # If-Match on DeleteObject
    copy: bool = False  # CopySourceIfMatch on CopyObject (probed where it saves a HEAD)


NONE = Capability(False, False)


def probe_key(key: str) -> str:
    """A fresh scratch key in the directory of `key` (a marker's parent for `dir/`)."""
    return join(split(key.rstrip("/"))[0], PROBE_NAME + secrets.token_hex(PROBE_HEX // 2))


class ConditionProbe:
    """The per-bucket answers (see the module docstring), probed on first need."""

    def __init__(self, store: Store, journal: Journal):
        self.store = store
        self.journal = journal
        self._known: dict[str, Capability] = {}
        self._lock = threading.Lock()  # one probe at a time: other jobs wait for its answer

    def known(self, bucket: str) -> Capability | None:
        return self._known.get(bucket)

    def of(self, bucket: str, key: str) -> Capability:
        """What the server honours for `bucket`, probing next to `key` the first time.
        Offline or a transient error: raised, nothing remembered (probed again later)."""
        with self._lock:
            capability = self._known.get(bucket)
            if capability is None:
                capability = self._probe(bucket, probe_key(key))
                if capability is None:  # not probed: the HEAD check, this time only
                    return NONE
                self._known[bucket] = capability
                self._report(bucket, capability)
        return capability

    def probe_ahead(self, bucket: str, key: str) -> None:
        """Probe `bucket` now in a thread of its own, when it was never probed: a multipart
        upload needs the answer only at its completion, so its parts hide the probe's six
        requests (~25 ms on loopback, more over a network) instead of waiting for them.
        A failure is left to the `of` that needs the answer (it probes again)."""
        if bucket in self._known:
            return

        def probe() -> None:
            try:
                self.of(bucket, key)
            except Exception as exc:  # noqa: BLE001 - `of` meets it again where it counts
                log.debug("probe of s3://%s ahead of an upload: %s", bucket, exc)
        threading.Thread(target=probe, name="s3fuse-probe", daemon=True).start()

    def lacks(self, bucket: str, *, put: bool = False, delete: bool = False) -> None:
        """The server refused a condition later (501): HEAD checks from now on."""
        with self._lock:
            before = self._known.get(bucket)
            if before is None:  # not probed: nothing was trusted yet
                return
            after = replace(before, put=before.put and not put, delete=before.delete and not delete)
            self._known[bucket] = after
        if after != before:
            self._report(bucket, after)

    @staticmethod
    def _report(bucket: str, capability: Capability) -> None:
        missing = [what for what, ok in (("writes", capability.put),
                                         ("deletes", capability.delete)) if not ok]
        if missing:
            log.warning("s3://%s: the server does not honour conditional %s: checking with "
                        "HEAD first instead (a change between the HEAD and the request is "
                        "not detected)", bucket, " and ".join(missing))
        else:
            log.debug("s3://%s: conditional writes and deletes are honoured", bucket)

    def remove_leftovers(self) -> None:
        """Delete the scratch keys a crash left in S3 (Offline: tried at the next start)."""
        for bucket, key in self.journal.probe_keys():
            self._remove(bucket, key)

    def _remove(self, bucket: str, key: str) -> None:
        self.store.delete_object(bucket, key)  # a random name of ours: nobody else's object
        self.journal.probe_end(bucket, key)

    def _probe(self, bucket: str, key: str) -> Capability | None:
        self.journal.probe_begin(bucket, key)
        try:
            self.store.put_object(bucket, key, b"")
        except S3FuseError as exc:
            with contextlib.suppress(S3FuseError):  # its answer may be what was lost
                self._remove(bucket, key)
            if isinstance(exc, Offline) or not retry.is_permanent(exc):
                raise
            log.info("s3://%s/%s: cannot write a key to probe conditional requests (%s)",
                     bucket, key, exc)
            return None
        try:
            put = (_refused(lambda: self.store.put_object(bucket, key, b"", if_none_match="*"))
                   and _refused(lambda: self.store.put_object(bucket, key, b"",
                                                              if_match=WRONG_ETAG)))
            delete = _refused(lambda: self.store.delete_object(bucket, key, if_match=WRONG_ETAG))
            copy = self._copy_refused(bucket, key)
        finally:
            with contextlib.suppress(S3FuseError):  # left offline: deleted at the next start
                self._remove(bucket, key)
        return Capability(put, delete, copy)

    def _copy_refused(self, bucket: str, key: str) -> bool:
        """Is a copy of the scratch key onto itself with a wrong CopySourceIfMatch refused?
        Asked only of a store that skips its HEAD for a trusted condition (S3Store: moto
        ignores the condition, SeaweedFS and AWS honour it). It is told the headers of the
        wrong version (the scratch key's: none), so the copy goes out with the condition
        alone, as a trusted one does."""
        sources = getattr(self.store, "copy_sources", None)
        if sources is None:
            return False
        sources.learn(bucket, key, WRONG_ETAG, {})
        return _refused(lambda: self.store.copy_object(
            bucket, key, key, WRONG_ETAG, metadata={}, size=0, trust_condition=True))


def _refused(send: Callable[[], object]) -> bool:
    """Did the server answer the conditional request with 412, as it must?"""
    try:
        send()
    except StaleObject:
        return True
    except S3FuseError as exc:
        if isinstance(exc, Offline) or not retry.is_permanent(exc):
            raise
        return False  # 501, 400, 404: not the answer a condition must give
    return False
