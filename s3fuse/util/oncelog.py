"""Keeping repeated warnings about hostile or odd input to a few log lines.

Hostile or clashing keys (hidden from listings) and similar per-object oddities are
met again at every listing; logging them each time would flood a log that nobody
rotates, and remembering them whole would let a hostile bucket grow the daemon. So a
subject is logged the first time only and remembered as a short digest
(`OnceLogger`), and the bad lines of one manifest or the skipped members of one
archive are counted and reported as one summary line with the first few examples
(`Tally`).
"""
from __future__ import annotations

import hashlib
import logging

log = logging.getLogger(__name__)

#: Characters of one example kept in a summary line (the rest is cut: names may be MiBs).
EXAMPLE_CHARS = 120


class OnceLogger:
    """Logs a message about a given subject only once per daemon (hidden keys etc.).

    Subjects are remembered as 16-byte digests, up to `limit` of them: memory stays
    bounded however long the hostile names are."""

    def __init__(self, logger: logging.Logger, limit: int = 100_000):
        self._log = logger
        self._seen: set[bytes] = set()
        self._limit = limit

    def info(self, subject: str, msg: str, *args: object) -> None:
        self._emit(logging.INFO, subject, msg, *args)

    def warning(self, subject: str, msg: str, *args: object) -> None:
        self._emit(logging.WARNING, subject, msg, *args)

    def _emit(self, level: int, subject: str, msg: str, *args: object) -> None:
        digest = hashlib.blake2b(subject.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self._seen:
            return
        if len(self._seen) < self._limit:
            self._seen.add(digest)
        self._log.log(level, msg, *args)


def example(text: str) -> str:
    """`text` as a short, printable example: control characters escaped (repr), cut."""
    shown = repr(text[:EXAMPLE_CHARS])
    return shown + ("..." if len(text) > EXAMPLE_CHARS else "")


class Tally:
    """Counts the skipped items of one input and keeps the first `keep` reasons, for
    one summary line (`emit`) instead of one line per item."""

    def __init__(self, keep: int = 5):
        self.count = 0
        self.examples: list[str] = []
        self._keep = keep

    def add(self, reason: str) -> None:
        """Count one skipped item; `reason` must already be short and printable."""
        self.count += 1
        if len(self.examples) < self._keep:
            self.examples.append(reason)

    def emit(self, logger: logging.Logger, level: int, what: str, noun: str) -> None:
        """One line: '<what>: N <noun>(s) skipped (first: ...)', nothing when none was."""
        if not self.count:
            return
        more = ", ..." if self.count > len(self.examples) else ""
        logger.log(level, "%s: %d %s%s skipped (%s%s)", what, self.count, noun,
                   "" if self.count == 1 else "s", "; ".join(self.examples), more)
