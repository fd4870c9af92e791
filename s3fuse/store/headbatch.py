"""Many HEADs at once: pipelined on a few keep-alive connections, parsed by hand.

A cold `ls -l` sends one HEAD per file (POSIX metadata lives in object headers, which
ListObjectsV2 does not return). Through urllib3 one HEAD costs ~400 us of CPU (http.client
parses headers with the email package, the pool does its bookkeeping) plus a thread hop
to trio, while the S3 server itself needs ~250 us: s3fs, in C, was 3x faster. Written as
plain bytes and read back by one thread, a HEAD costs ~40 us of CPU.

HTTP/1.1 pipelining: up to `depth` requests are written on each of `connections`
sockets before their answers arrive; the answers come back in order, and the answer to a
HEAD has no body (RFC 9110, whatever its Content-Length says), so each is one header
block. Servers answer pipelined requests one after another, so a few connections keep
both the server's cores and ours busy.

What cannot be answered here goes back to the caller, who asks the ordinary way
(retries, error mapping, offline detection): the keys of a connection that cannot be
opened, or that stalls past `first_byte_timeout`. A connection the server closes while
requests wait on it hands them to a new one (servers cap requests per connection, and an
idle connection may have been closed meanwhile); a fresh connection that closes or
stalls after answering fewer than one window of what was written is a server (or proxy)
that does not pipeline: from then on one request at a time per connection.
"""
from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

Tag = TypeVar("Tag")
#: (tag, HTTP status, headers: names in lower case) of one answer.
Answer = tuple[Tag, int, dict[str, str]]

#: Sockets per batch, and requests written ahead on each (64 in flight: the batch size of
#: tree/bucket/posixheads.py).
CONNECTIONS = 8
DEPTH = 8
#: Idle connections kept for the next batch.
IDLE = 8
RECV = 256 << 10
#: A fresh connection may close this often without answering before the batch gives up.
FRESH_FAILURES = 2


@dataclass(eq=False)
class _Conn(Generic[Tag]):
    sock: socket.socket
    reused: bool
    buf: bytearray = field(default_factory=bytearray)
    sent: deque[tuple[Tag, bytes]] = field(default_factory=deque)  # written, unanswered
    answered: int = 0


class PipelinedHeads:
    """HEADs of presigned URLs of one origin (scheme://host:port), many at a time."""

    def __init__(self, origin: str, *, connect_timeout: float, first_byte_timeout: float,
                 ca_certs: str | None, connections: int = CONNECTIONS, depth: int = DEPTH):
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._netloc = parts.netloc
        self._prefix = self.origin + "/"
        self._address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self._tls = ssl.create_default_context(cafile=ca_certs) if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._timeout = first_byte_timeout
        self.connections = connections
        self.depth = depth  # 1 once the server is seen not to pipeline
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def run(self, requests: Sequence[tuple[Tag, str]],
            answered: Callable[[list[Answer]], None]) -> list[Tag]:
        """HEAD each (tag, url) (every url of this origin); `answered` gets the answers as
        they arrive, in groups. Returns the tags left unanswered (see the module doc)."""
        todo: deque[tuple[Tag, bytes]] = deque()
        head = f"HEAD {{}} HTTP/1.1\r\nHost: {self._netloc}\r\nUser-Agent: s3fuse\r\n\r\n"
        for tag, url in requests:
            target = self._target(url)
            todo.append((tag, head.format(target).encode()))
        conns: list[_Conn[Tag]] = []
        selector = selectors.DefaultSelector()
        fresh_failures = 0
        answers: list[Answer] = []  # received, handed over once the next requests are out
        try:
            while todo or any(c.sent for c in conns):
                depth = self.depth
                wanted = min(self.connections, -(-(len(todo) + sum(len(c.sent) for c in conns))
                                                  // depth))
                while len(conns) < wanted and todo:
                    conn = self._open()
                    if conn is None:
                        break
                    conns.append(conn)
                    selector.register(conn.sock, selectors.EVENT_READ, conn)
                if not conns:
                    break  # cannot connect: the caller asks the ordinary way
                for conn in list(conns):
                    if not self._fill(conn, todo, depth):
                        fresh_failures += self._drop(conn, conns, selector, todo)
                if answers:  # the caller's work (storing them) overlaps the requests out;
                    given, answers = answers, []  # it groups them for its transactions
                    answered(given)
                events = selector.select(self._timeout) if any(c.sent for c in conns) else []
                if not events and any(c.sent for c in conns):
                    self._stalled(conns)
                    break
                for key, _ in events:
                    conn = key.data
                    if not self._receive(conn, answers):
                        fresh_failures += self._drop(conn, conns, selector, todo)
                if fresh_failures >= FRESH_FAILURES:
                    break
            if answers:
                given, answers = answers, []
                answered(given)
        finally:
            left = [tag for tag, _ in todo] + [tag for c in conns for tag, _ in c.sent] + \
                [tag for tag, _, _ in answers]  # received but not handed over: asked again
            for conn in conns:
                selector.unregister(conn.sock)
                if conn.sent or conn.buf:
                    conn.sock.close()
                else:
                    self._keep(conn.sock)
            selector.close()
        return left

    def _target(self, url: str) -> str:
        """The request target of `url` (path and query), which must be of this origin."""
        if url.startswith(self._prefix):  # as the presigner makes them: no parsing
            return url[len(self.origin):]
        parts = urllib.parse.urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            raise ValueError(f"{url.split('?')[0]} is not of {self.origin}")
        return f"{parts.path}?{parts.query}" if parts.query else parts.path

    # ------------------------------------------------------------ connections

    def _open(self) -> _Conn[Tag] | None:
        with self._lock:
            if self._idle:
                return _Conn(self._idle.pop(), reused=True)
        try:
            sock = socket.create_connection(self._address, timeout=self._connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._address[0])
            sock.settimeout(self._timeout)
        except OSError as exc:
            log.debug("HEAD batch: cannot connect to %s: %s", self.origin, exc)
            return None
        return _Conn(sock, reused=False)

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < IDLE:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def _drop(self, conn: _Conn[Tag], conns: list[_Conn[Tag]], selector: selectors.BaseSelector,
              todo: deque[tuple[Tag, bytes]]) -> int:
        """The server closed `conn` (or it broke): what waited on it goes first to another
        connection. Returns 1 when it was fresh and answered nothing (else 0)."""
        conns.remove(conn)
        selector.unregister(conn.sock)
        conn.sock.close()
        waiting = list(conn.sent)
        todo.extendleft(reversed(waiting))
        if waiting and not conn.reused and 0 < conn.answered < self.depth:
            self._no_pipelining("closed the connection with requests waiting")
        return int(bool(waiting) and not conn.reused and not conn.answered)

    def _stalled(self, conns: list[_Conn[Tag]]) -> None:
        for conn in conns:
            if conn.sent and 0 < conn.answered < self.depth and not conn.reused:
                self._no_pipelining("stopped answering")
                return
        log.debug("HEAD batch: no answer from %s within %gs", self.origin, self._timeout)

    def _no_pipelining(self, what: str) -> None:
        log.info("%s %s after answering some pipelined HEADs: one at a time from now on",
                 self.origin, what)
        self.depth = 1
        self.connections = max(self.connections, CONNECTIONS * 2)

    # ------------------------------------------------------------ the wire

    def _fill(self, conn: _Conn[Tag], todo: deque[tuple[Tag, bytes]], depth: int) -> bool:
        """Write requests on `conn` until `depth` wait there; False when it broke."""
        if not todo or len(conn.sent) >= depth:
            return True
        out = []
        while todo and len(conn.sent) < depth:
            conn.sent.append(todo.popleft())
            out.append(conn.sent[-1][1])
        try:
            conn.sock.sendall(b"".join(out))
        except OSError as exc:
            log.debug("HEAD batch: sending to %s: %s", self.origin, exc)
            return False
        return True

    def _receive(self, conn: _Conn[Tag], answers: list[Answer]) -> bool:
        """Read what arrived on `conn` and parse whole answers into `answers`; False when
        the connection is closed (or must be: it said so, or sent nonsense)."""
        try:
            data = conn.sock.recv(RECV)
            while data and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                data += conn.sock.recv(conn.sock.pending())
        except (OSError, ssl.SSLError) as exc:
            log.debug("HEAD batch: reading from %s: %s", self.origin, exc)
            return False
        if not data:
            return False
        conn.buf += data
        while True:
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                return True
            block = bytes(conn.buf[:end])
            del conn.buf[:end + 4]
            parsed = _parse(block)
            if parsed is None or not conn.sent:
                log.debug("HEAD batch: unreadable answer from %s", self.origin)
                return False
            status, headers = parsed
            if status < 200:  # 100 Continue and the like: not the answer
                continue
            answers.append((conn.sent.popleft()[0], status, headers))
            conn.answered += 1
            if headers.get("connection", "").lower() == "close":
                return False


def _parse(block: bytes) -> tuple[int, dict[str, str]] | None:
    """(status, headers) of one answer's header block, names in lower case (a repeated
    one joined with ", ", RFC 9110 5.3); None when it is not HTTP/1.x."""
    lines = block.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:  # no whitespace before the colon (RFC 9112 5.1): none to strip there
            name = name.lower()
            value = value.strip()
            if name in headers:
                headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value
    return int(code), headers
