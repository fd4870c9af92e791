"""Logging setup: human lines on a terminal, priority-prefixed lines under systemd, and
one filter on the handler that every record passes, ours and other libraries' alike.

The filter is on the handler, not on our loggers, because the records that leak come
from libraries we do not control: urllib3 logs a presigned URL whole (signature and
session token) in its own warnings, botocore its signed headers at DEBUG. It redacts
those (redact.py), writes control characters in messages as escapes (printable.py: a
key holding `\\n<0>` would forge a journald entry, `\\x1b[` drive the reader's terminal),
and lets a repeated warning through a few times a minute only: a loop meeting the same
fault (a pool refusing connections, a server answering garbage) would otherwise fill the
log. The default log file is rotated by size; one given with `--log-file` is left to
logrotate (reopened when it was moved).
"""
from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import UsageError
from .printable import printable, printable_lines
from .redact import redact_text

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

#: Records of one kind (logger, level, message template) let through per RATE_PERIOD
#: seconds; the next one let through says how many were dropped meanwhile.
RATE_BURST = 20
RATE_PERIOD = 60.0
#: Kinds remembered at once (a message built with an f-string is a kind of its own).
RATE_KINDS = 1000


class JournalFormatter(logging.Formatter):
    """`<N>message`: journald reads the syslog priority from the prefix, on every line it
    gets (a traceback's lines too, which would otherwise be read as their own entries)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class SafeRecords(logging.Filter):
    """Redacts secrets and escapes control characters in every record it passes (the
    message and any traceback), and rate-limits repeated warnings."""

    def __init__(self, burst: int = RATE_BURST, period: float = RATE_PERIOD,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst = burst
        self.period = period
        self._clock = clock
        self._windows: dict[tuple[str, int, str], list[float]] = {}  # kind -> [start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        dropped = self._admit(record)
        if dropped is None:
            return False
        message = printable(redact_text(record.getMessage()))
        if dropped:
            message += f" [{dropped} more like this were not logged before it]"
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = printable_lines(redact_text(record.exc_text))
        if record.stack_info:
            record.stack_info = printable_lines(redact_text(record.stack_info))
        return True

    def _admit(self, record: logging.LogRecord) -> int | None:
        """None: drop the record; else how many of its kind were dropped before it."""
        if record.levelno < logging.WARNING:
            return 0  # asked for (INFO/DEBUG): the level is the user's choice
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self.period:
            if window is None and len(self._windows) >= RATE_KINDS:
                self._windows.clear()
            dropped = int(window[2]) if window is not None else 0
            self._windows[kind] = [now, 1, 0]
            return dropped
        if window[1] >= self.burst:
            window[2] += 1
            return None
        window[1] += 1
        return 0


class GoneReleases(logging.Filter):
    """pyfuse3 logs an ERROR when the reply to a release (or a releasedir) finds its request
    gone (ENOENT): the kernel sends a release after close(2) and stops waiting for it when
    the mount goes away or the caller dies meanwhile. The file was closed and nothing was lost, so such a
    line is debug output (shown with --debug pyfuse3), not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.name == "pyfuse3" and record.levelno >= logging.ERROR
                and record.getMessage() in _GONE_RELEASES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("pyfuse3").isEnabledFor(logging.DEBUG)
        return True


_GONE_RELEASES = frozenset(f"{call}(): fuse_reply_* failed with No such file or directory"
                           for call in ("fuse_release", "fuse_releasedir"))


class CredentialRefreshes(logging.Filter):
    """botocore logs each failed refresh of temporary credentials (a profile's role, an SSO
    session) with the whole traceback: with STS unreachable, a traceback at every request.
    The cause goes on the line instead (the rate limit then applies to one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "botocore.credentials" and record.exc_info:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} {type(error).__name__}: {error}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


#: The default log (`<cache-dir>/s3fuse.log` of a background mount) is rotated at this size,
#: keeping BACKUPS old ones: no log grows forever unless asked to.
ROTATE_BYTES = 10 << 20
BACKUPS = 3


def log_handler(log_file: Path | None = None, rotate: bool = False) -> logging.Handler:
    """Where the lines go: `log_file` (rotated here when `rotate`, else reopened when
    logrotate moved it: WatchedFileHandler), else stderr (journald's priority prefixes when
    systemd reads it)."""
    handler: logging.Handler
    if log_file is not None:
        handler = (logging.handlers.RotatingFileHandler(log_file, maxBytes=ROTATE_BYTES,
                                                        backupCount=BACKUPS)
                   if rotate else logging.handlers.WatchedFileHandler(log_file))
    else:
        handler = logging.StreamHandler(sys.stderr)
    if log_file is None and os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def setup_logging(level: str = "INFO", debug_modules: tuple[str, ...] = (),
                  log_file: Path | None = None, rotate: bool = False) -> None:
    try:
        handler = log_handler(log_file, rotate)
    except OSError as exc:
        raise UsageError(f"cannot open the log file {log_file}: {exc.strerror}") from None
    handler.addFilter(GoneReleases())
    handler.addFilter(CredentialRefreshes())
    handler.addFilter(SafeRecords())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("s3fuse").setLevel(level)
    for module in debug_modules:
        logging.getLogger(module).setLevel(logging.DEBUG)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
