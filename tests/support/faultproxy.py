"""An HTTP proxy in front of S3 that records every request and injects faults by rule.

Tests use it to see which credentials signed each request (the Authorization header's
`Credential=AKID/...`), and to inject faults at exact points: hold the upload of part 2
of a multipart upload (then SIGKILL the daemon), answer 503 SlowDown to 20% of GETs,
cut a body short, trickle one slowly, reset or black-hole connections. Plain HTTP/1.1,
one upstream connection per request: slow, but exact.

Rules (`add` and its shorthands) match by method, path regex (on the path with query)
and multipart part number, fire with a probability (seeded: runs are repeatable) and at
most `times` times; the first matching rule that fires decides the request. Every
injection is counted (`injected`, and `Rule.hits`), so a test can assert the fault
really happened.
"""
from __future__ import annotations

import http.client
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

_CREDENTIAL = re.compile(r"Credential=([^/]+)/")            # the Authorization header
_PRESIGNED = re.compile(r"X-Amz-Credential=([^%/&]+)(?:%2F|/)")  # a presigned URL

#: What a rule can do to a request.
FAULTS = ("status", "reset", "hang", "truncate", "trickle")
#: S3 error codes for injected statuses (SlowDown is what S3 answers when throttling).
_CODES = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str       # with the query string
    access_key: str  # from the SigV4 signature (header or presigned query; '' when unsigned)
    headers: dict[str, str]


Predicate = Callable[[str, str], bool]  # (method, path with query) -> matches


@dataclass
class Rule:
    """One fault: which requests it hits and what it does to them."""

    fault: str                       # one of FAULTS
    method: str | None = None        # "GET", "PUT", ... (None: any)
    path: str | None = None          # regex searched in the path with query (None: any)
    part: int | None = None          # multipart partNumber (None: any request)
    probability: float = 1.0
    times: int | None = None         # fire at most this often (None: unlimited)
    status: int = 503                # fault "status"
    code: str | None = None          # fault "status": the error document's Code (None: by status)
    after: bool = False              # fault "status": forward first (S3 acts, the answer is lost)
    keep: float = 0.5                # fault "truncate": fraction of the body sent
    rate: int = 2048                 # fault "trickle": bytes per second
    predicate: Predicate | None = None  # instead of method/path/part
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.predicate is not None and not self.predicate(method, path):
            return False
        if self.method is not None and method != self.method:
            return False
        if self.path is not None and not re.search(self.path, path):
            return False
        if self.part is not None:
            numbers = parse_qs(urlsplit(path).query).get("partNumber", [])
            if str(self.part) not in numbers:
                return False
        return self.times is None or self.hits < self.times


class FaultProxy:
    def __init__(self, target: str, seed: int = 7):
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.seen: list[Seen] = []
        self.rules: list[Rule] = []
        self.injected: Counter[str] = Counter()   # fault name ("status:503", "reset", ...) -> n
        self.forwarded = 0                        # requests answered by S3 itself
        self.figures: dict[str, object] = {}      # what a test measured, for its report
        self._holds: list[Predicate] = []
        self._released = threading.Event()
        self._held = threading.Event()
        self._cleared = threading.Event()         # ends every hang
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # ------------------------------------------------------------ rules

    def add(self, fault: str, **match: object) -> Rule:
        """Add a rule (see Rule for the fields); returns it, for its `hits`."""
        assert fault in FAULTS, fault
        rule = Rule(fault, **match)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
            self._cleared.clear()
        return rule

    def slowdown(self, **match: object) -> Rule:
        """503 with S3's throttling code SlowDown."""
        return self.add("status", status=503, **match)

    def error(self, status: int, **match: object) -> Rule:
        return self.add("status", status=status, **match)

    def reset(self, **match: object) -> Rule:
        """Read the request, then close the connection with a TCP RST (no answer)."""
        return self.add("reset", **match)

    def hang(self, **match: object) -> Rule:
        """Read the request and never answer, until `clear()` (then the connection drops)."""
        return self.add("hang", **match)

    def truncate(self, keep: float = 0.5, **match: object) -> Rule:
        """Forward, then send the full Content-Length but only `keep` of the body, and close."""
        return self.add("truncate", keep=keep, **match)

    def trickle(self, rate: int = 2048, **match: object) -> Rule:
        """Forward, then send the body at `rate` bytes per second."""
        return self.add("trickle", rate=rate, **match)

    def clear(self) -> None:
        """Remove every rule and end every hang: the fault is over."""
        with self._lock:
            self.rules.clear()
        self._cleared.set()

    def count(self, method: str, pattern: str = "") -> int:
        """Requests seen with `method` whose path matches `pattern`."""
        with self._lock:
            return sum(1 for s in self.seen if s.method == method and re.search(pattern, s.path))

    # ------------------------------------------------------------ holds (exact points)

    def hold(self, predicate: Predicate) -> threading.Event:
        """Matching requests wait (unanswered) until `release()`, then go to S3; the event
        is set once one is being held."""
        with self._lock:
            self._holds.append(predicate)
            self._released.clear()
            self._held.clear()
        return self._held

    def fail(self, predicate: Predicate, status: int = 500) -> None:
        """Answer `status` to matching requests (until `release()`)."""
        self.add("status", status=status, predicate=predicate)

    def release(self) -> None:
        with self._lock:
            self._holds.clear()
            self.rules = [r for r in self.rules if r.predicate is None]
        self._released.set()

    def close(self) -> None:
        self.release()
        self.clear()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ the server

    def _decide(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if not rule.matches(method, path):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                rule.hits += 1
                name = f"status:{rule.status}" if rule.fault == "status" else rule.fault
                self.injected[name] += 1
                return rule
            self.forwarded += 1
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                expected = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(expected)
                if len(data) < expected:  # the client died mid-body: S3 would drop it too, never
                    raise ConnectionError("request body cut short")  # store a truncated object
                return data

            def _error(self, status: int, code: str | None = None) -> None:
                code = code or _CODES.get(status, "InternalError")
                payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                           f"<Message>injected by the fault proxy</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _drop(self, rst: bool) -> None:
                """Close the connection: with a RST (linger 0), or a plain FIN."""
                self.close_connection = True
                try:
                    if rst:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    self.connection.close()  # the last reference (rfile) closes it in finish()
                except OSError:
                    pass

            def _forward(self) -> None:
                try:
                    data = self._body()
                except (ConnectionError, ValueError):
                    self.close_connection = True
                    return
                auth = self.headers.get("Authorization", "")
                match = _CREDENTIAL.search(auth) or _PRESIGNED.search(self.path)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection")}
                with proxy._lock:
                    proxy.seen.append(Seen(self.command, self.path, match.group(1) if match else "",
                                           headers))
                    hold = any(p(self.command, self.path) for p in proxy._holds)
                if hold:
                    proxy._held.set()
                    proxy._released.wait()
                rule = proxy._decide(self.command, self.path)
                if rule is not None and rule.fault == "status" and not rule.after:
                    return self._error(rule.status, rule.code)
                if rule is not None and rule.fault == "reset":
                    return self._drop(rst=True)
                if rule is not None and rule.fault == "hang":
                    proxy._cleared.wait(600)
                    return self._drop(rst=False)
                if "Content-Length" in headers or data:
                    headers["Content-Length"] = str(len(data))
                conn = http.client.HTTPConnection(*proxy.target, timeout=60)
                try:
                    conn.request(self.command, self.path, body=data, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    if rule is not None and rule.fault == "status":   # after S3 acted
                        return self._error(rule.status, rule.code)
                    self.send_response(resp.status, resp.reason)
                    for key, value in resp.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    # a HEAD answer has no body but the object's length (sizes come from it)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(payload)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    if rule is not None and rule.fault == "truncate":
                        self.wfile.write(payload[:int(len(payload) * rule.keep)])
                        self.wfile.flush()
                        return self._drop(rst=False)
                    if rule is not None and rule.fault == "trickle":
                        return self._trickle(payload, rule.rate)
                    self.wfile.write(payload)
                finally:
                    conn.close()

            def _trickle(self, payload: bytes, rate: int) -> None:
                step = max(1, rate // 10)
                try:
                    for start in range(0, len(payload), step):
                        if proxy._cleared.is_set():
                            break
                        self.wfile.write(payload[start:start + step])
                        self.wfile.flush()
                        time.sleep(0.1)
                    else:
                        return
                except OSError:  # the client gave up: that is the point
                    pass
                self.close_connection = True
                self._drop(rst=False)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
