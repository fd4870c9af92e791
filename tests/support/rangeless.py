"""A fake S3 endpoint that ignores Range: every GET is answered 200 with the whole object.

Some proxies and S3-compatible servers do this. The object is a 1 MiB pattern repeated
(streamed, never held whole), so a test can tell how much a client read and kept.
"""
from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MiB = 1 << 20


class RangelessServer:
    """Serves one object of `size` bytes (`PATTERN` repeated) at every path, ETag `etag`."""

    def __init__(self, size: int = 64 * MiB, etag: str = "e1"):
        self.size = size
        self.etag = etag
        self.pattern = os.urandom(MiB)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)  # whatever the Range header asked for
                self.send_header("Content-Length", str(owner.size))
                self.send_header("ETag", f'"{owner.etag}"')
                self.end_headers()
                try:
                    for start in range(0, owner.size, MiB):
                        self.wfile.write(owner.pattern[:min(MiB, owner.size - start)])
                except OSError:  # the client stopped reading and closed: as it should
                    self.close_connection = True
        return Handler
