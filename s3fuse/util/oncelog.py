"""A logger wrapper that reports each subject once per daemon.

Hostile or clashing keys (hidden from listings) and similar per-object oddities are
met again at every listing; logging them each time would flood the log, so each
subject is logged the first time only (up to `limit` subjects remembered).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class OnceLogger:
    """Logs a message about a given subject only once per daemon (hidden keys etc.)."""

    def __init__(self, logger: logging.Logger, limit: int = 100_000):
        self._log = logger
        self._seen: set[str] = set()
        self._limit = limit

    def info(self, subject: str, msg: str, *args: object) -> None:
        self._emit(logging.INFO, subject, msg, *args)

    def warning(self, subject: str, msg: str, *args: object) -> None:
        self._emit(logging.WARNING, subject, msg, *args)

    def _emit(self, level: int, subject: str, msg: str, *args: object) -> None:
        if subject in self._seen:
            return
        if len(self._seen) < self._limit:
            self._seen.add(subject)
        self._log.log(level, msg, *args)
