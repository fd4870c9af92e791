"""A request-counting TCP proxy in front of SeaweedFS: how many S3 requests a tool sent.

s3fs and rclone report no request counts and SeaweedFS's metrics label HEAD as GET, so
the requests are counted on the wire. Responses are pumped through untouched; the request
direction is parsed just enough (request line, headers, Content-Length or chunked body)
to classify each request, then forwarded byte for byte, so keep-alive, pipelining and
``Expect: 100-continue`` behave as without the proxy.

Kinds: HEAD, GET (an object), LIST (a GET of the bucket), PUT (an object or a part),
COPY (a PUT with ``x-amz-copy-source``: CopyObject or UploadPartCopy), POST (multipart
create/complete, DeleteObjects), DELETE.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from typing import BinaryIO
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

KINDS = ("PUT", "COPY", "HEAD", "GET", "LIST", "POST", "DELETE")
CHUNK = 1 << 16


class CountingProxy:
    """Forwards 127.0.0.1:port to ``(host, port)`` and counts the requests by kind.

    Same shape as the test proxies (``endpoint``, ``restore``, ``close``), so
    ``FileSystem._through`` can mount through it.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last = time.monotonic()
        self._conns: set[socket.socket] = set()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> Counter[str]:
        """Requests seen so far, by kind (a copy)."""
        with self._lock:
            return Counter(self._counts)

    def since(self, before: Counter[str]) -> dict[str, int]:
        """Requests of each kind (every one of KINDS, and ``total``) since ``before``."""
        now = self.counts()
        diff = {kind: now[kind] - before[kind] for kind in KINDS}
        diff["total"] = sum(now.values()) - sum(before.values())
        return diff

    def wait_quiet(self, quiet: float, timeout: float) -> float:
        """Wait until no request has come for ``quiet`` s (a tool's trailing requests are
        counted too); gives up after ``timeout``. Returns the seconds waited."""
        start = time.monotonic()
        while True:
            with self._lock:
                idle = time.monotonic() - self._last
            if idle >= quiet or time.monotonic() - start >= timeout:
                return time.monotonic() - start
            time.sleep(max(0.01, quiet - idle))

    def restore(self) -> None:
        """Nothing to restore (the proxy is never cut): part of the proxies' shape."""

    def close(self) -> None:
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._server.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    # -- forwarding ------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError as exc:
                log.warning("counting proxy: cannot reach %s: %s", self.target, exc)
                _close(client)
                continue
            for sock in (client, upstream):  # as nginx and HAProxy do: without it, Nagle holds
                # a pipelined request (or answer) until the one before is ACKed (40 ms)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to S3: one request after another, counted, forwarded unchanged."""
        reader = client.makefile("rb")
        try:
            while True:
                head = _read_head(reader)
                if head is None:
                    break
                upstream.sendall(head)
                kind, length, chunked = _parse(head)
                with self._lock:
                    self._counts[kind] += 1
                    self._last = time.monotonic()
                if chunked:
                    _copy_chunked(reader, upstream)
                else:
                    _copy_exact(reader, upstream, length)
        except (OSError, ValueError):
            pass
        finally:
            reader.close()
            self._done(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """S3 to client, unparsed."""
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._done(src, dst)

    def _done(self, *socks: socket.socket) -> None:
        for sock in socks:
            _close(sock)
        with self._lock:
            self._conns -= set(socks)


def _read_head(reader: BinaryIO) -> bytes | None:
    """The request line and headers up to the blank line; None at a clean end of stream."""
    lines = []
    while True:
        line = reader.readline(CHUNK)
        if not line:
            if lines:
                raise ValueError("connection closed inside a request head")
            return None
        if not lines and line in (b"\r\n", b"\n"):  # stray blank line between requests
            continue
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _parse(head: bytes) -> tuple[str, int, bool]:
    """(kind, Content-Length, chunked?) of a request head."""
    first, *rest = head.decode("latin-1").split("\r\n")
    method, target = (first.split(" ") + ["", ""])[:2]
    headers = {}
    for line in rest:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = int(headers.get("content-length") or 0)
    return classify(method.upper(), target, "x-amz-copy-source" in headers), length, chunked


def classify(method: str, target: str, copy_source: bool) -> str:
    """The kind of one request (see the module docstring); path-style addressing."""
    if method == "PUT":
        return "COPY" if copy_source else "PUT"
    if method == "GET":
        path = urlsplit(target).path.strip("/")
        return "GET" if "/" in path else "LIST"
    return method


def _copy_exact(reader: BinaryIO, dst: socket.socket, length: int) -> None:
    while length > 0:
        data = reader.read1(min(CHUNK, length))  # type: ignore[attr-defined]
        if not data:
            raise ValueError("connection closed inside a request body")
        dst.sendall(data)
        length -= len(data)


def _copy_chunked(reader: BinaryIO, dst: socket.socket) -> None:
    """A chunked body: size lines, chunks, the last chunk and its trailers."""
    while True:
        line = reader.readline(CHUNK)
        if not line:
            raise ValueError("connection closed inside a chunked body")
        dst.sendall(line)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        _copy_exact(reader, dst, size + 2)  # the chunk and its CRLF
    while True:  # trailers, up to the blank line
        line = reader.readline(CHUNK)
        if not line:
            raise ValueError("connection closed inside chunked trailers")
        dst.sendall(line)
        if line in (b"\r\n", b"\n"):
            return


def _close(sock: socket.socket) -> None:
    """Shut down, then close: shutdown ends the connection at once even while the other
    thread's reader (``makefile``) still holds the descriptor open."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
