"""sd_notify: tell systemd (Type=notify) when the mount is live, what it is doing, when it stops.

A datagram to $NOTIFY_SOCKET ('@' = abstract namespace); silently nothing when
not started by systemd.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str) -> None:
        """notify(READY="1", STATUS="...") -> 'READY=1\\nSTATUS=...'."""
        if not self._address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
