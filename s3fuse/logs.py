"""Logging setup: human lines on a terminal, priority-prefixed lines under systemd."""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<N>message`: journald reads the syslog priority from the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(level: str = "INFO", debug_modules: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("s3fuse").setLevel(level)
    for module in debug_modules:
        logging.getLogger(module).setLevel(logging.DEBUG)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
