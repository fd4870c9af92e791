"""The hot GET path: retries truncated bodies and 5xx, maps statuses, never serves short."""
from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from urllib3.exceptions import ProtocolError

from s3fuse.errors import AccessDenied, NotFound, Offline, RemoteError, StaleObject
from s3fuse.store.presigned import CHUNK, INTO_CHUNK, PresignedReader

BODY = b"0123456789" * 100


class Script:
    """What the fake server answers, one entry per request: status or 'short'."""

    def __init__(self) -> None:
        self.replies: list[object] = []
        self.headers: list[dict[str, str]] = []
        self.body = BODY
        self.connections: set[int] = set()  # client ports seen: one per connection


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            script.headers.append(dict(self.headers))
            script.connections.add(self.client_address[1])
            reply = script.replies.pop(0) if script.replies else 200
            if reply == "portal":  # a captive portal: 200 and a page of its own, no ETag
                page = b"<html><body>Sign in to the Wi-Fi</body></html>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            etag = "other" if reply == "other-etag" else "e1"
            if reply in (200, "short", "other-etag"):
                body = script.body
                rng = self.headers.get("Range")
                if rng:
                    start, end = rng.split("=")[1].split("-")
                    body = script.body[int(start):int(end) + 1]
                self.send_response(206 if rng else 200)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if reply == "short" else body)
                if reply == "short":
                    self.close_connection = True
                return
            self.send_response(int(reply))  # type: ignore[arg-type]
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()


def reader(base: str) -> PresignedReader:
    return PresignedReader(lambda b, k: f"{base}/{b}/{k}?X-Amz-Signature=x", connect_timeout=2,
                           read_timeout=5, ca_certs=None)


def test_ranges_and_if_match(server):
    base, script = server
    assert reader(base).get("b", "k", "e1", 10, 20) == BODY[10:20]
    assert script.headers[-1]["Range"] == "bytes=10-19" and script.headers[-1]["If-Match"] == '"e1"'


def test_truncated_body_and_5xx_are_retried(server):
    base, script = server
    script.replies = ["short", 503, "short"]
    assert reader(base).get("b", "k", "e1") == BODY
    script.replies = ["short"] * 10
    with pytest.raises(RemoteError, match="truncated"):
        reader(base).get("b", "k", "e1")


def test_a_block_is_read_into_one_buffer_whole_and_the_connection_reused(server):
    """Bodies over CHUNK are read from the socket straight into their buffer: the bytes
    come whole, in order, and the connection serves the next GET."""
    base, script = server
    script.body = os.urandom(3 * INTO_CHUNK + 12345)
    got = reader(base)
    assert bytes(got.get("b", "k", "e1")) == script.body
    assert bytes(got.get("b", "k", "e1", CHUNK + 7, 2 * INTO_CHUNK + 3)) == \
        script.body[CHUNK + 7:2 * INTO_CHUNK + 3]
    assert len(script.connections) == 1


def test_a_truncated_block_is_retried_and_never_served_short(server):
    base, script = server
    script.body = os.urandom(2 * INTO_CHUNK)
    script.replies = ["short", "short"]
    assert bytes(reader(base).get("b", "k", "e1")) == script.body
    script.replies = ["short"] * 10
    with pytest.raises(RemoteError, match="truncated"):
        reader(base).get("b", "k", "e1")


@pytest.mark.parametrize("reply, error", [(404, NotFound), (403, AccessDenied), (412, StaleObject),
                                          ("other-etag", StaleObject), (400, RemoteError)])
def test_status_mapping(server, reply, error):
    base, script = server
    script.replies = [reply]
    with pytest.raises(error):
        reader(base).get("b", "k", "e1")


def test_unreachable_is_offline_fast():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Offline):
        reader(f"http://127.0.0.1:{port}").get("b", "k", "e1")


LIST_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<Prefix>d%2F</Prefix><KeyCount>3</KeyCount><MaxKeys>2</MaxKeys><Delimiter>%2F</Delimiter>
<IsTruncated>true</IsTruncated><EncodingType>url</EncodingType>
<NextContinuationToken>tok+/=</NextContinuationToken>
<Contents><Key>d%2Fa+b%2Bc%25.txt</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified>
<ETag>&quot;abc&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
<CommonPrefixes><Prefix>d%2F%C3%A9%20x%2F</Prefix></CommonPrefixes>
</ListBucketResult>"""


def test_list_page_parsed_like_boto3() -> None:
    from s3fuse.store.presigned import parse_list_v2

    page = parse_list_v2(LIST_XML)
    assert page["IsTruncated"] is True
    assert page["NextContinuationToken"] == "tok+/="  # tokens are never url-decoded
    assert page["Contents"] == [{"Key": "d/a b+c%.txt", "Size": 12,
                                 "LastModified": "2024-01-02T03:04:05.000Z", "ETag": '"abc"'}]
    assert page["CommonPrefixes"] == [{"Prefix": "d/é x/"}]
    # a server that ignores encoding-type: keys are taken as they are
    plain = parse_list_v2(LIST_XML.replace(b"<EncodingType>url</EncodingType>", b""))
    assert plain["Contents"][0]["Key"] == "d%2Fa+b%2Bc%25.txt"


def test_list_page_refusals(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [404]
    reader = PresignedReader(lambda b, k: url, connect_timeout=1, read_timeout=5, ca_certs=None)
    assert reader.list_v2(url) is None  # boto3 then maps the error


def test_a_portals_200_is_no_listing_and_no_object(server: tuple[str, Script]) -> None:
    """A captive portal answers anything with 200 and its own page. boto3 read that page
    as an empty listing (a directory listed before vanished), and a GET took it as the
    object's bytes: both are errors now, retried like a 5xx."""
    url, script = server
    script.replies = ["portal"]
    with pytest.raises(RemoteError, match="a 200 answer that is not a listing"):
        reader(url).list_v2(url)
    script.replies = ["portal"]
    with pytest.raises(RemoteError, match="a 200 answer without an ETag"):
        reader(url).get("b", "k", "e1", 0, 10)


@pytest.mark.parametrize("endpoint,style,token", [
    ("http://127.0.0.1:9000", "path", None),
    (None, "virtual", "session-token/+="),
    (None, "path", None),
])
def test_presigner_signs_like_botocore(endpoint: str | None, style: str, token: str | None) -> None:
    """Our SigV4 signature of a URL equals botocore's for the same timestamp (checked per
    bucket when learning the layout: a bucket whose check failed would have no layout)."""
    import urllib.parse

    import boto3
    from botocore.config import Config as BotoConfig

    from s3fuse.store.presigned import Presigner

    client = boto3.client("s3", region_name="eu-west-1", endpoint_url=endpoint,
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret/+key",
                          aws_session_token=token,
                          config=BotoConfig(signature_version="s3v4", s3={"addressing_style": style}))
    signer = Presigner(client, 3600)
    assert signer._layout("my-bucket") is not None
    key = "dir/a b+c%d/é~!*'().txt"
    url = urllib.parse.urlsplit(signer.get_url("my-bucket", key))
    theirs = urllib.parse.urlsplit(client.generate_presigned_url(
        "get_object", Params={"Bucket": "my-bucket", "Key": key}, ExpiresIn=3600))
    assert (url.scheme, url.netloc, url.path) == (theirs.scheme, theirs.netloc, theirs.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    assert query.get("X-Amz-Security-Token") == token
    listing = urllib.parse.urlsplit(signer.list_url("my-bucket", {"Prefix": "dir/", "Delimiter": "/"}))
    assert dict(urllib.parse.parse_qsl(listing.query))["prefix"] == "dir/"


def test_presigner_without_credentials_leaves_it_to_botocore() -> None:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config as BotoConfig

    from s3fuse.store.presigned import Presigner

    client = boto3.client("s3", region_name="us-east-1", config=BotoConfig(signature_version=UNSIGNED))
    signer = Presigner(client, 3600)
    assert signer._layout("b") is None
    assert signer.get_url("b", "k").startswith("https://")


class _PlainBody:
    """A response with none of http.client's internals: urllib3's public read1 only."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def read1(self, n: int) -> bytes:
        chunk, self._body = self._body[:n], self._body[n:]
        return chunk


@pytest.mark.parametrize("sent, error", [(3 * CHUNK + 5, None), (3 * CHUNK + 4, "of 786436 bytes"),
                                         (3 * CHUNK + 6, "longer than")])
def test_a_body_read_without_the_socket_path_is_exact(sent: int, error: str | None) -> None:
    """The fallback of the read-into path (other urllib3 internals): the whole body in
    its buffer, a short or a long one refused."""
    reader = object.__new__(PresignedReader)
    reader._read_timeout = 30.0
    body = os.urandom(sent)
    if error is None:
        assert bytes(reader._body_into(_PlainBody(body), bytearray(sent))) == body
    else:
        with pytest.raises(ProtocolError, match=error):
            reader._body_into(_PlainBody(body), bytearray(3 * CHUNK + 5))
