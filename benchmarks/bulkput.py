"""PUT a very large number of tiny objects into the benchmark bucket, fast.

The scale sections need directories of up to 1,000,000 keys, seeded once per benchmark run.
boto3 spends ~3 ms of CPU per request under the GIL (~500 PUT/s here: over half an hour for
a million keys); these are plain S3 PUTs too (SigV4-signed, path-style, each acknowledged
with 200), written by hand on keep-alive sockets: ~60 µs of client CPU per PUT, so the
server is the limit (SeaweedFS: 3,000-5,000 PUT/s of empty objects on 2 busy cores, about
twice its rate for bodies it must store in a volume). The connections are served by threads
(the sockets release the GIL while the server works), many at once so that the server
always has work.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

from benchmarks.s3 import S3Target

log = logging.getLogger(__name__)

CONNECTIONS = 128  # SeaweedFS answers each connection's requests one after the other
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SIGNED_HEADERS = "host;x-amz-content-sha256;x-amz-date"


class BulkPutError(RuntimeError):
    """The server refused or broke off a PUT."""


class Signer:
    """SigV4 for PUTs of one (empty) body on one host, with the day's signing key."""

    def __init__(self, target: S3Target, host: str) -> None:
        self.target, self.host = target, host
        self.stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.scope = f"{self.stamp[:8]}/{target.region}/s3/aws4_request"
        key = ("AWS4" + target.secret_key).encode()
        for part in (self.stamp[:8], target.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self.key = key

    def put(self, key: str) -> bytes:
        """The whole HTTP/1.1 request that PUTs an empty object at ``key``."""
        path = f"/{self.target.bucket}/{quote(key, safe='/~')}"
        canonical = (f"PUT\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:{EMPTY_SHA256}\n"
                     f"x-amz-date:{self.stamp}\n\n{SIGNED_HEADERS}\n{EMPTY_SHA256}")
        to_sign = (f"AWS4-HMAC-SHA256\n{self.stamp}\n{self.scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(self.key, to_sign.encode(), hashlib.sha256).hexdigest()
        return (f"PUT {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"x-amz-content-sha256: {EMPTY_SHA256}\r\nx-amz-date: {self.stamp}\r\n"
                f"Authorization: AWS4-HMAC-SHA256 Credential={self.target.access_key}/"
                f"{self.scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}\r\n"
                "Content-Length: 0\r\n\r\n").encode()


def put_empty(target: S3Target, keys: Sequence[str], connections: int = CONNECTIONS) -> int:
    """PUT an empty object at every key (plain http endpoints only); returns the count.

    BulkPutError on the first PUT not answered 200 (the rest are abandoned)."""
    url = urlsplit(target.endpoint_url)
    if url.scheme != "http" or url.hostname is None:
        raise ValueError(f"bulk PUTs need a plain http endpoint, not {target.endpoint_url}")
    signer = Signer(target, url.netloc)
    address = (url.hostname, url.port or 80)
    lanes = [keys[i::connections] for i in range(min(connections, len(keys)))]
    with ThreadPoolExecutor(len(lanes) or 1) as pool:
        return sum(pool.map(lambda lane: _put_lane(address, signer, lane), lanes))


def _put_lane(address: tuple[str, int], signer: Signer, keys: Sequence[str]) -> int:
    """One keep-alive connection: each PUT sent once the previous one is answered."""
    with socket.create_connection(address, timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = sock.makefile("rb")
        for key in keys:
            sock.sendall(signer.put(key))
            _expect_ok(replies, key)
    return len(keys)


def _expect_ok(replies, key: str) -> None:
    """Read one response; BulkPutError unless it is a 200."""
    status = replies.readline()
    length = 0
    while (line := replies.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = replies.read(length)
    if status.split(b" ", 2)[1:2] != [b"200"]:
        raise BulkPutError(f"PUT {key}: {status.decode(errors='replace').strip()} "
                           f"{body[:300].decode(errors='replace')}")
