"""Keeping the link state true: probe back while offline, and notice a silent S3 in use.

A black hole (captive portal, dead VPN, half-open NAT) is only noticed by a request that
gets no answer within the first-byte deadline (2 s). Without the watch, the first `ls`
after the daemon sat idle on a link that died meanwhile pays that deadline before the
cache answers. The watch checks the link while the mount is in use (S3 answered some
request within `IN_USE`) but quiet (nothing answered for one interval), so the next
request already knows. A busy mount sends no extra request (its traffic is the proof),
an unused one none at all.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import trio

from .protocol import Store

log = logging.getLogger(__name__)

#: How often S3 is asked while offline.
PROBE_INTERVAL = 2.0
#: The watch stops once S3 has answered no request of the mount for this long.
IN_USE = 600.0
#: Bounds of the watch's interval (half the metadata TTL in between).
WATCH_MIN, WATCH_MAX = 1.0, 15.0


def watch_interval(metadata_ttl: float) -> float:
    """Half the TTL: a link that dies while the mount idles is known offline before the
    entries it would revalidate go stale (for TTLs up to 30 s; at most 15 s late after)."""
    return min(WATCH_MAX, max(WATCH_MIN, metadata_ttl / 2))


async def probe_while_offline(store: Store, interval: float = PROBE_INTERVAL) -> None:
    """Bring the link back online: from the moment it goes offline, one cheap request
    every `interval` seconds until S3 answers (or another request succeeds)."""
    link = store.link
    while True:
        await link.wait_offline()
        while not link.online:
            with trio.move_on_after(interval):
                await link.wait_online()
            if not link.online:
                await trio.to_thread.run_sync(store.probe)


async def watch_while_in_use(store: Store, interval: float, in_use: float = IN_USE,
                             clock: Callable[[], float] = time.monotonic) -> None:
    """While online and in use, ask S3 once per `interval` of quiet whether it still
    answers; silence takes the link offline (`Store.check_link`)."""
    link = store.link
    checked = -float("inf")
    while True:
        await link.wait_online()
        now = clock()
        if now - link.answered_at >= in_use:  # not in use: look again later
            await trio.sleep(interval)
            continue
        quiet_for = now - max(link.answered_at, checked)
        if quiet_for < interval:
            await trio.sleep(interval - quiet_for)
            continue
        checked = now
        if not await trio.to_thread.run_sync(store.check_link):
            log.info("S3 went silent while the mount was quiet: offline until it answers")
