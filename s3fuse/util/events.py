"""Waiting for the first of several trio events.

State changes (the link, the upload queue, the supervisor) are broadcast as trio events
that are replaced on every change; a waiter often cares about more than one of them
(e.g. "the link came back, or the queue is stopping") and must not poll for either.
"""
from __future__ import annotations

import trio


async def first_set(*events: trio.Event) -> None:
    """Return once any of `events` is set (at once if one already is)."""
    if any(event.is_set() for event in events):
        await trio.lowlevel.checkpoint()
        return

    async def wait(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(wait, event, nursery.cancel_scope)
