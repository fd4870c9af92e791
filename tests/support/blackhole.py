"""A TCP proxy in front of S3 that a test can turn into a black hole, and back.

The offline tests' CuttableProxy resets connections: the easy case, noticed at once. A
black hole is the usual case on trains and hotel Wi-Fi (a captive portal, a dead VPN, a
half-open NAT): connections are accepted and requests are read, but nothing ever comes
back. `blackhole()` does that to new and open connections alike; `restore()` drops the
connections that saw it (as a NAT that forgot them would) and forwards again.
"""
from __future__ import annotations

import socket
import threading


class BlackHoleProxy:
    """Forwards 127.0.0.1:port to `target` until `blackhole()` (see the module docstring);
    `port` 0 picks a free one."""

    def __init__(self, target_host: str, target_port: int, port: int = 0):
        self.target = (target_host, target_port)
        self._black = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", port))
        self._server.listen(128)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def black(self) -> bool:
        return self._black.is_set()

    def blackhole(self) -> None:
        """From now on every byte sent is swallowed and nothing is answered."""
        self._black.set()

    def restore(self) -> None:
        """Forward again; connections open during the black hole are dropped."""
        with self._lock:
            conns, self._conns = self._conns, set()
            self._black.clear()
        for conn in conns:
            _close(conn)

    def close(self) -> None:
        self.restore()
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        _close(self._server)

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.update(socks)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._track(client)
            if self.black:  # accepted, read, never answered
                threading.Thread(target=self._pump, args=(client, None), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            self._track(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None) -> None:
        """src -> dst until either closes; in a black hole every byte is dropped."""
        try:
            while data := src.recv(65536):
                if dst is not None and not self.black:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            if dst is not None and not self.black:
                _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
