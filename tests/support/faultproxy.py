"""An HTTP proxy in front of S3 that records every request and can hold or fail chosen ones.

Tests use it to see which credentials signed each request (the Authorization header's
`Credential=AKID/...`), and to inject faults at exact points: hold the upload of part 2
of a multipart upload (then SIGKILL the daemon), answer 500s, and so on. Plain HTTP/1.1,
one upstream connection per request: slow, but exact.
"""
from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

_CREDENTIAL = re.compile(r"Credential=([^/]+)/")            # the Authorization header
_PRESIGNED = re.compile(r"X-Amz-Credential=([^%/&]+)(?:%2F|/)")  # a presigned URL


@dataclass(frozen=True)
class Seen:
    method: str
    path: str       # with the query string
    access_key: str  # from the SigV4 signature (header or presigned query; '' when unsigned)
    headers: dict[str, str]


Predicate = Callable[[str, str], bool]  # (method, path with query) -> matches


class FaultProxy:
    def __init__(self, target: str):
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.seen: list[Seen] = []
        self._holds: list[Predicate] = []
        self._failures: list[tuple[Predicate, int]] = []
        self._released = threading.Event()
        self._held = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def hold(self, predicate: Predicate) -> threading.Event:
        """Matching requests wait (unanswered) until `release()`; the event is set once one
        is being held."""
        with self._lock:
            self._holds.append(predicate)
            self._released.clear()
            self._held.clear()
        return self._held

    def fail(self, predicate: Predicate, status: int = 500) -> None:
        with self._lock:
            self._failures.append((predicate, status))

    def release(self) -> None:
        with self._lock:
            self._holds.clear()
            self._failures.clear()
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

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
                    status = next((s for p, s in proxy._failures if p(self.command, self.path)), 0)
                if hold:
                    proxy._held.set()
                    proxy._released.wait()
                if status:
                    payload = (b"<?xml version=\"1.0\"?><Error><Code>InternalError</Code>"
                               b"<Message>injected</Message></Error>")
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if "Content-Length" in headers or data:
                    headers["Content-Length"] = str(len(data))
                conn = http.client.HTTPConnection(*proxy.target, timeout=60)
                try:
                    conn.request(self.command, self.path, body=data, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for key, value in resp.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    # a HEAD answer has no body but the object's length (sizes come from it)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
