"""Fire-and-forget background work (read-ahead, cache writes, listing prefetch).

Components get one shared Background at construction and the daemon binds it to
its nursery when trio starts; before that (and in tools that never bind it)
background work is simply skipped, which is always safe: it is only ahead-of-time.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio


class Background:
    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None

    def bind(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def active(self) -> bool:
        return self._nursery is not None

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Start `fn(*args)` in the background; False when no nursery is bound."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True
