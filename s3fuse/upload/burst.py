"""Writers first: uploads wait while a burst of closes (`cp -r`, `tar -x`) goes on.

On two cores, uploading while a writer goes on slows the writer about 2x (CPU, the GIL,
the disk) and the uploads finish no sooner; so once closes (and removals) come closer
together than BURST_GAP, uploads wait until they pause for BURST_QUIET, for at most
MAX_DEFER. Metadata copies (`chmod -R`) do not wait: holding 1,000 of them until the
chmod ended made it return 2x sooner but left every object unchanged in S3 1.5x longer.
Only the queue's light workers wait for a burst of them to pause (queue.py).
A lone close, `fsync` and `sync` never wait (the queue stops holding while someone is
urgent). Waiting costs the writer nothing: a waiting worker sleeps until the burst could
have paused, and is not woken by each close (four workers woken per close cost `cp -r`
of small files about 5% of the loop's time).
"""
from __future__ import annotations

import math
from typing import Callable

import trio

BURST_GAP = 0.05        # closes closer together than this are a burst
BURST_QUIET = 0.1       # uploads wait until a burst pauses this long ...
MAX_DEFER = 5.0         # ... or for this long at most


class BurstGate:
    def __init__(self) -> None:
        self._last_close = -math.inf      # trio clock of the last close (submit or delete)
        self._burst_start = -math.inf     # ... and of the first close of its burst
        self._burst_closes = 0            # closes in that burst

    def closed_one(self) -> None:
        """A file was closed or removed."""
        now = trio.current_time()
        if now - self._last_close > BURST_GAP:
            self._burst_start, self._burst_closes = now, 0
        self._last_close = now
        self._burst_closes += 1

    def quiet_in(self, max_defer: float = MAX_DEFER) -> float:
        """Seconds until the burst going on could have paused: 0 when there is none, it
        paused, or it ran `max_defer`."""
        now = trio.current_time()
        if self._burst_closes < 2 or now - self._burst_start >= max_defer:
            return 0.0
        return max(0.0, self._last_close + BURST_QUIET - now)

    async def wait_for_pause(self, holding: Callable[[], bool],
                             changed: Callable[[], trio.Event]) -> None:
        """Return once a burst paused (or ran MAX_DEFER), at once when there is none, or as
        soon as `holding()` turns false (woken by the `changed()` event, which only fsync,
        sync and stop set: changes of the burst itself are seen when the wait times out)."""
        while holding():
            pause = self.quiet_in()
            if pause <= 0:
                return
            event = changed()
            with trio.move_on_after(pause):
                await event.wait()
