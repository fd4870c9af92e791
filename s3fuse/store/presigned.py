"""Object GETs through presigned URLs on a plain urllib3 pool.

botocore spends about 4 ms of CPU per request on this class of machine (event
hooks, user agent, response parsing), which caps a Python daemon at a few hundred
small-file reads per second. Presigning costs a fraction of that and the GET
itself is one urllib3 call, so the hot read path does this instead; everything
else still goes through the boto3 client. Range and If-Match are ordinary
unsigned headers, so the presigned URL is the same for every block of an object.

Listings go the same way: botocore's shape-driven parsing of a ListObjectsV2 page
costs about 50 us per key, ElementTree's C parser a few; `find` lists one directory
after another, so that was most of its time.

Two deadlines, because a black-holed endpoint (accepts, never answers) and a slow but
alive link must be told apart: the response headers must come within a short
`first_byte_timeout` (a timeout then asks `alive()` whether S3 answers at all: if not,
Offline at once), while the body only has to keep arriving (`read_timeout` per socket
read, and LOW_SPEED). A body is never read past the length asked for: a server or proxy
that ignores Range cannot make one GET buffer a whole object.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any, Callable, Mapping

import urllib3
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError,
                                ReadTimeoutError)

from ..errors import AccessDenied, NotFound, Offline, RemoteError, S3FuseError, StaleObject
from . import retry
from .buffers import body_buffer
from .protocol import required_etag

log = logging.getLogger(__name__)

#: Attempts per GET: retry.GETS, as mountpoint-s3 (10 for quick transient failures: a 20%
#: error storm then fails one read in 10^7, not one in 600; 3 that may end in a timeout or
#: a stalled body, each costing a whole `read_timeout`: a black-holed endpoint answers
#: EIO after a bounded time).
CONNECT_ERRORS = (NewConnectionError, ConnectTimeoutError)
#: A body arriving slower than this (bytes/s, averaged over a `read_timeout` window) is a
#: stalled connection: the socket timeout alone never fires on a trickle.
LOW_SPEED = 4096
CHUNK = 256 << 10
#: Bytes per socket read into a block's buffer (each read checks the pace, LOW_SPEED).
INTO_CHUNK = 1 << 20
#: Bytes of an error answer's body read (S3's error documents are a few hundred bytes).
ERROR_BODY = 64 << 10
#: Connections kept per origin: as many as the requests this reader may have in flight at
#: once (a bucket tree's metadata GETs, posixheads.BATCH = 64, beside the block reader's 16,
#: the listings' 8 and the shard indexers'). With 64, a `cat dir/*` of a cold directory of
#: small files opened connections past the pool and closed them again, each with a urllib3
#: WARNING ("Connection pool is full").
POOL_SIZE = 128


class _Stalled(Exception):
    """The body trickled in slower than LOW_SPEED."""


class _Pace:
    """Stall detection for one body: a trickle slower than LOW_SPEED, averaged over a
    `window` (the read timeout), raises _Stalled; the socket timeout alone never fires on
    a trickle."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._start, self._bytes = time.monotonic(), 0

    def arrived(self, n: int) -> None:
        self._bytes += n
        elapsed = time.monotonic() - self._start
        if elapsed >= self._window:
            if self._bytes < LOW_SPEED * elapsed:
                raise _Stalled(f"{self._bytes} bytes in {elapsed:.1f}s")
            self._start, self._bytes = time.monotonic(), 0


class _TooLong(Exception):
    """The server sent more than the range asked for (it ignored Range, or the object is
    not the size its entry says)."""


class _Refused(Exception):
    """S3 answered a status worth another attempt (429, 5xx)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _judge(exc: Exception) -> retry.Verdict:
    """What a failed GET attempt is worth (store/retry.py decides what S3's answers are)."""
    if isinstance(exc, CONNECT_ERRORS):
        return retry.Verdict.STOP
    if isinstance(exc, (ReadTimeoutError, _Stalled)):
        return retry.Verdict.SLOW
    if isinstance(exc, (ProtocolError, HTTPError, _Refused)):
        return retry.Verdict.RETRY
    return retry.Verdict.STOP  # _TooLong too: the same server sends the same bytes again


class PresignedReader:
    def __init__(self, presign: Callable[[str, str], str], *, connect_timeout: float,
                 read_timeout: float, ca_certs: str | None, proxy_url: str | None = None,
                 pool_size: int = POOL_SIZE, first_byte_timeout: float | None = None,
                 alive: Callable[[], bool] | None = None,
                 answered: Callable[[str, str], None] | None = None,
                 failed: Callable[[str, Exception], None] | None = None):
        """`first_byte_timeout` (default `read_timeout`) bounds the wait for the response
        headers, `read_timeout` each read of the body; `alive()` is asked after a timeout
        (see retry.call). `answered(what, status)` and `failed(what, error)` hear of each
        attempt (for metrics)."""
        self._answered = answered
        self._attempt_failed = failed
        self._presign = presign
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._alive = alive
        first_byte = read_timeout if first_byte_timeout is None else first_byte_timeout
        options = dict(num_pools=16, maxsize=pool_size, block=False, retries=False,
                       timeout=urllib3.Timeout(connect=connect_timeout, read=first_byte),
                       ca_certs=ca_certs)
        self._pool = (urllib3.ProxyManager(proxy_url, **options) if proxy_url
                      else urllib3.PoolManager(**options))

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the version `etag`; never short, never another version."""
        what = f"GetObject s3://{bucket}/{key}"
        headers = {}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        if end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            headers["Range"] = f"bytes={start}-"
        url = self._presign(bucket, key)
        limit = None if end is None else end - start
        status, resp_headers, body = self._request(what, url, headers, limit, skip_ok=not start)
        if status in (200, 206):
            returned = required_etag(resp_headers.get("ETag"), what)  # a portal's page
            if etag and returned != etag:
                raise StaleObject(f"{what}: object changed in S3")
            return body
        raise answer_error(what, status, document_code(body))

    def get_whole(self, what: str, url: str, etag: str, limit: int) -> tuple[int, Any, bytes]:
        """(status, headers, body) of a GET of a whole object of at most `limit` bytes
        (If-Match `etag`); more: RemoteError."""
        headers = {"If-Match": f'"{etag}"'} if etag else {}
        try:
            return self._request(what, url, headers, limit)
        except _TooLong as exc:
            raise RemoteError(f"{what}: more bytes than asked for ({exc})") from None

    def head(self, what: str, url: str) -> tuple[int, Any]:
        """(status, headers) of a HEAD from a presigned URL: an object's size, ETag, dates
        and user metadata for a fraction of botocore's CPU (a cold `ls -l` sends one per
        file). Retried and judged as GETs are."""
        status, headers, _ = self._request(what, url, {}, method="HEAD")
        return status, headers

    def put(self, what: str, url: str, headers: dict[str, str],
            body: bytes = b"") -> tuple[int, Any, bytes]:
        """(status, headers, body) of a PUT of `body` to a presigned URL (a CopyObject:
        no body, the answer a small XML document; a small PutObject: the ETag in the
        headers); retried and judged as GETs are (the same bytes again: a PUT is
        idempotent, and a conditional one that landed before its answer was lost is
        the uploader's to recognise, as through botocore). The answer may take as long as a
        body may stall (`read_timeout`), as botocore's writes: S3 answers a PUT once it has
        the whole body, and a copy once it is made, past the first-byte deadline of reads
        on a slow link or for a big copy."""
        return self._request(what, url, headers, ERROR_BODY, method="PUT", body=body,
                             timeout=urllib3.Timeout(connect=self._connect_timeout,
                                                     read=self._read_timeout))

    def _send(self, method: str, url: str, **kwargs: Any) -> Any:
        """One request to `url`, its path sent as it is. urllib3 takes dot segments out of
        a whole URL's path (RFC 3986), but `a/./b` is an S3 key of its own: a HEAD answered
        for `a/b`, and a copy written over it. The request target goes to the host's pool
        instead; only plain HTTP through a proxy needs the whole URL (botocore sends it so
        too)."""
        parts = urllib.parse.urlsplit(url)
        if isinstance(self._pool, urllib3.ProxyManager) and parts.scheme == "http":
            return self._pool.urlopen(method, url, redirect=False, **kwargs)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return self._pool.connection_from_url(url).urlopen(method, target, redirect=False,
                                                           **kwargs)

    def _request(self, what: str, url: str, headers: dict[str, str], limit: int | None = None,
                 skip_ok: bool = False, method: str = "GET", body: bytes | None = None,
                 timeout: urllib3.Timeout | None = None) -> tuple[int, Any, bytes]:
        """(status, headers, body) of a GET (or a HEAD: no body), retried by the GETS
        policy of store/retry.py while the failure is transient.

        Errors and log lines name exception types only: urllib3's texts hold the signed URL.

        Offline at once when S3 cannot be connected to, or sent no headers in time and
        does not answer a probe either (`alive`; the link then fails fast); RemoteError
        when the attempts run out. A body shorter than its Content-Length is a failed
        attempt, never an answer. At most `limit` bytes are read (None: no limit): a 200
        to a ranged request (Range ignored) gives its first `limit` bytes when the range
        starts at 0 (`skip_ok`), an error otherwise; more than `limit` bytes in a 206 is
        an error (RemoteError: `EIO`).
        """
        attempts = 0

        def attempt() -> tuple[int, Any, bytes]:
            nonlocal attempts
            attempts += 1
            resp = self._send(method, url, body=body, headers=headers, preload_content=False,
                              decode_content=False, enforce_content_length=True,
                              **({} if timeout is None else {"timeout": timeout}))
            finished = False
            try:
                if resp.connection is not None and resp.connection.sock is not None:
                    resp.connection.sock.settimeout(self._read_timeout)  # the body: stall timeout
                ignored = resp.status == 200 and "Range" in headers
                if ignored and not skip_ok:
                    raise _TooLong("the server ignored Range")
                if method == "HEAD":  # Content-Length is the object's: there is no body
                    answer = resp.read()  # b"": and the connection goes back to the pool
                elif resp.status in (200, 206):
                    answer = self._body(resp, limit, cut=ignored)
                else:  # an error document: its start is all we read
                    answer = self._body(resp, ERROR_BODY, cut=True)
                finished = True
            finally:
                if not finished or not resp.closed:
                    resp.close()  # unread bytes are left: this connection cannot be reused
                resp.release_conn()
            if self._answered is not None:
                self._answered(what, str(resp.status))
            if retry.answered("", resp.status) is retry.Verdict.RETRY:
                raise _Refused(resp.status)
            return resp.status, resp.headers, answer

        def failed(what: str, exc: Exception) -> None:
            if self._attempt_failed is not None and not isinstance(exc, _Refused):  # answered
                self._attempt_failed(what, exc)

        try:
            return retry.call(what, attempt, _judge, retry.GETS, alive=self._alive, failed=failed)
        except _TooLong as exc:
            raise RemoteError(f"{what}: more bytes than asked for ({exc})") from None
        except CONNECT_ERRORS as exc:
            raise Offline(f"{what}: S3 unreachable ({type(exc).__name__})") from None
        except (ReadTimeoutError, _Stalled) as exc:
            raise RemoteError(f"{what}: no answer in time ({type(exc).__name__})") from None
        except ProtocolError as exc:
            raise RemoteError(f"{what}: truncated response body ({type(exc).__name__})") from None
        except HTTPError as exc:
            raise Offline(f"{what}: {type(exc).__name__}") from None
        except _Refused as exc:
            raise retry.tagged(RemoteError(f"{what}: S3 error {exc.status} after {attempts} "
                                           "attempts"), "", exc.status) from None

    def _body(self, resp: Any, limit: int | None = None, cut: bool = False) -> bytes:
        """The body, read as it arrives: a trickle slower than LOW_SPEED raises _Stalled
        after about one `read_timeout` window; a short one ProtocolError. Never more than
        `limit` bytes are read (one more tells that there are more): then the first
        `limit` bytes when `cut`, else _TooLong.

        A body of more than one chunk whose Content-Length is within `limit` is read into
        one buffer of that length (a bytearray): a list of chunks joined at the end held
        every block twice, and left its chunks in the heap of the thread that read them."""
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        if expected is not None and limit is not None and expected > limit and not cut:
            raise _TooLong(f"{expected} bytes, more than {limit}")  # said: not read first
        if expected is not None and expected > CHUNK and (limit is None or expected <= limit):
            return self._body_into(resp, body_buffer(expected))
        chunks: list[bytes] = []
        got = 0
        pace = _Pace(self._read_timeout)
        while True:
            want = CHUNK if limit is None else min(CHUNK, limit + 1 - got)
            chunk = resp.read1(want)
            if not chunk:
                break
            got += len(chunk)
            if limit is not None and got > limit:
                if not cut:
                    raise _TooLong(f"more than {limit} bytes")
                chunks.append(chunk[:len(chunk) - (got - limit)])
                return b"".join(chunks)
            chunks.append(chunk)
            pace.arrived(len(chunk))
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if expected is not None and expected != len(body):
            raise ProtocolError(f"body of {len(body)} bytes, Content-Length {length}")
        return body

    def _body_into(self, resp: Any, buffer: bytearray) -> bytes:
        """`_body` of a body of exactly len(`buffer`) bytes (its Content-Length), read into
        `buffer`; more or fewer bytes: ProtocolError.

        The socket reads straight into `buffer` (one read at a time from http.client's
        socket file, as much as has arrived, under urllib3's error mapping; http.client's
        count of the bytes left kept as its own readinto keeps it): urllib3's read1 made a
        bytes object of every chunk and copied it in, i.e. 256 MiB allocated and copied
        once more per 256 MiB read, with the GIL held, on the threads a cold read keeps
        busy. Each read returns what arrived, so a trickle still meets the pace check."""
        fp = getattr(resp, "_fp", None)  # http.client's response
        sock_file = getattr(fp, "fp", None)
        if (sock_file is None or not hasattr(sock_file, "readinto1") or getattr(fp, "chunked", True)
                or getattr(fp, "length", None) != len(buffer)
                or not hasattr(fp, "_close_conn") or not hasattr(resp, "_error_catcher")):
            return self._body_copied(resp, buffer)  # other internals: urllib3's public read1

        def read_into(view: memoryview) -> int:
            with resp._error_catcher():  # socket errors and timeouts as urllib3's (_judge)
                n = sock_file.readinto1(view[:INTO_CHUNK])
            fp.length -= n
            return n
        self._fill(buffer, read_into)
        fp._close_conn()  # the body is read (as http.client does): the connection is reused
        return buffer  # type: ignore[return-value]  # bytes-like: callers slice, hash, view it

    def _body_copied(self, resp: Any, buffer: bytearray) -> bytes:
        """`_body_into` through urllib3's public read1 (a copy per chunk)."""

        def read_into(view: memoryview) -> int:
            chunk = resp.read1(min(CHUNK, len(view)))
            view[:len(chunk)] = chunk
            return len(chunk)
        self._fill(buffer, read_into)
        if resp.read1(1):
            raise ProtocolError(f"body longer than its Content-Length {len(buffer)}")
        return buffer  # type: ignore[return-value]

    def _fill(self, buffer: bytearray, read_into: Callable[[memoryview], int]) -> None:
        """Fill `buffer` by `read_into(rest)` (the bytes it read, 0 at the end), the pace
        checked at every read; ProtocolError when the body ends short."""
        view = memoryview(buffer)
        got = 0
        pace = _Pace(self._read_timeout)
        while got < len(buffer):
            n = read_into(view[got:])
            if not n:
                break
            got += n
            pace.arrived(n)
        if got != len(buffer):
            raise ProtocolError(f"body of {got} bytes, Content-Length {len(buffer)}")

    def list_v2(self, url: str, parse: Callable[[bytes], Any] | None = None) -> Any:
        """One ListObjectsV2 page from a presigned URL, read by `parse` (parse_list_v2 by
        default: boto3's shape, LastModified left as text), or None when S3 answered
        something else than 200 (403, 404, ...): the caller then asks boto3, which maps
        the error. A 200 that is no listing: RemoteError.
        Transient failures are retried here (RemoteError when they persist); Offline when
        S3 cannot be reached at all."""
        status, _, body = self._request("ListObjectsV2", url, {})
        if status != 200:
            return None
        try:
            return (parse or parse_list_v2)(body)
        except (ET.ParseError, ValueError, TypeError) as exc:
            # Not a listing, although 200: a captive portal's or a proxy's page. boto3
            # read one as an empty listing, and a directory listed before vanished.
            raise RemoteError(f"ListObjectsV2: a 200 answer that is not a listing, not one "
                              f"from S3 (a captive portal or a proxy in the way?): {exc}") from None


def answer_error(what: str, status: int, code: str = "", *, service: str = "S3",
                 said: str = "") -> S3FuseError:
    """The error of an error answer, a request signed here or by botocore alike (its
    status and code kept: the retry policy and the store decide by them, and an expired
    session token is an "ExpiredToken" 400, not any 400). `said`: the service's message,
    told after the code (STS's explain; S3's may quote request details: not told)."""
    error: S3FuseError
    if code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404") or status == 404:
        error = NotFound(f"{what}: not found ({code or status})")
    elif code in ("AccessDenied", "Forbidden", "403", "InvalidAccessKeyId",
                  "SignatureDoesNotMatch") or status == 403:
        error = AccessDenied(f"{what}: access denied ({code or status}){said}")
    elif code in ("PreconditionFailed", "412") or status == 412:
        error = StaleObject(f"{what}: object changed in S3")
    else:
        error = RemoteError(f"{what}: {service} error {code or status}{said}")
    return retry.tagged(error, code, status)


def document_code(body: bytes) -> str:
    """The Code of an S3 Error document ('' for anything else), as botocore reads it."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    for child in root:
        if local_name(child.tag) == "Code" and child.text:
            return child.text.strip()
    return ""


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_list_v2(body: bytes) -> dict[str, Any]:
    """A ListBucketResult (ListObjectsV2) document -> boto3's dict shape, keys decoded
    when the server says it url-encoded them (as botocore does)."""
    root = ET.fromstring(body)
    if local_name(root.tag) != "ListBucketResult":
        raise ValueError(f"not a ListBucketResult: {local_name(root.tag)}")
    contents: list[dict[str, Any]] = []
    prefixes: list[str] = []
    result: dict[str, Any] = {"IsTruncated": False}
    for child in root:
        tag = local_name(child.tag)
        if tag == "Contents":
            obj = {local_name(field.tag): field.text or "" for field in child}
            size = obj.get("Size") or "0"  # as boto3 gives it; anything else checked later
            contents.append({"Key": obj["Key"],
                             "Size": int(size) if size.isascii() and size.isdigit() else size,
                             "LastModified": obj.get("LastModified"), "ETag": obj.get("ETag", "")})
        elif tag == "CommonPrefixes":
            prefixes.extend(field.text or "" for field in child if local_name(field.tag) == "Prefix")
        elif tag == "IsTruncated":
            result["IsTruncated"] = (child.text or "").strip().lower() == "true"
        elif tag in ("NextContinuationToken", "EncodingType"):
            result[tag] = child.text or ""
    if result.get("EncodingType") == "url":
        def unquote(text: str) -> str:  # bytes that are not UTF-8 stay visible (as surrogates)
            return urllib.parse.unquote_plus(text, errors="surrogateescape")
        prefixes = [unquote(p) for p in prefixes]
        for obj in contents:
            obj["Key"] = unquote(obj["Key"])
    result["Contents"] = contents
    result["CommonPrefixes"] = [{"Prefix": p} for p in prefixes]
    return result


class Presigner:
    """Presigned GET and ListObjectsV2 URLs, signed here (SigV4 query auth, ~20 us) instead
    of by botocore (~0.5 ms of event hooks and endpoint rules per URL: as much as the
    request itself for a small object).

    What botocore decides (endpoint, addressing style, signing region, key encoding) is
    learned per bucket from one URL botocore presigns, and our signature of that same
    URL must equal botocore's: otherwise, or without plain credentials, every URL of the
    bucket is botocore's.
    """

    PROBE_KEY = "s3fuse probe/+é~!*'()"
    PROBE_PREFIX = "s3fuse probe/+é~"

    def __init__(self, client: Any, expires: int):
        self._client = client
        self._expires = expires
        self._layouts: dict[str, tuple[str, str, str, str] | None] = {}  # bucket -> base
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._plain: tuple[tuple[str, str, str | None, str] | None, str] = (None, "")
        self._lock = threading.Lock()

    # ------------------------------------------------------------ public

    def signs(self, bucket: str) -> bool:
        """Are the URLs of `bucket` signed here? False: botocore presigns each one (slow),
        e.g. because the credentials could not be reached through botocore's signer."""
        return self._layout(bucket) is not None

    def get_url(self, bucket: str, key: str) -> str:
        layout = self._layout(bucket)
        if layout is None:
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._expires)
        base, key_path, _, region = layout
        return self._sign(base, key_path + _quote(key, "/~"), {}, region)

    def origin(self, bucket: str) -> str | None:
        """scheme://host[:port] of `bucket`'s URLs when they are signed here, else None."""
        layout = self._layout(bucket)
        return None if layout is None else layout[0]

    def head_url(self, bucket: str, key: str) -> str:
        layout = self._layout(bucket)
        if layout is None:
            return self._client.generate_presigned_url(
                "head_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._expires,
                HttpMethod="HEAD")
        base, key_path, _, region = layout
        return self._sign(base, key_path + _quote(key, "/~"), {}, region, method="HEAD")

    def put_url(self, bucket: str, key: str, headers: Mapping[str, str],
                amz_date: str | None = None) -> str | None:
        """A presigned PUT of `key` that signs `headers` (lower-case names, sent as they
        are); None when this bucket's URLs are botocore's."""
        layout = self._layout(bucket)
        if layout is None:
            return None
        base, key_path, _, region = layout
        return self._sign(base, key_path + _quote(key, "/~"), {}, region, amz_date, "PUT",
                          headers)

    def list_url(self, bucket: str, params: dict[str, Any]) -> str:
        """ListObjectsV2 of `params` (boto3's names: Prefix, Delimiter, MaxKeys,
        ContinuationToken, EncodingType)."""
        layout = self._layout(bucket)
        if layout is None:
            return self._client.generate_presigned_url(
                "list_objects_v2", Params={"Bucket": bucket, **params}, ExpiresIn=self._expires)
        base, _, list_path, region = layout
        return self._sign(base, list_path, _list_query(params), region)

    # ------------------------------------------------------------ signing

    def _credentials(self) -> Any:
        creds = getattr(getattr(self._client, "_request_signer", None), "_credentials", None)
        return None if creds is None else creds.get_frozen_credentials()

    def _signing_key(self, secret: str, date: str, region: str) -> bytes:
        cache_key = (secret, date, region)
        key = self._keys.get(cache_key)
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (date, region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            with self._lock:
                if len(self._keys) > 8:
                    self._keys.clear()
                self._keys[cache_key] = key
        return key

    def _sign(self, base: str, path: str, query: dict[str, str], region: str,
              amz_date: str | None = None, method: str = "GET",
              headers: Mapping[str, str] | None = None) -> str:
        creds = self._credentials()
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        scope = f"{date}/{region}/s3/aws4_request"
        host = _netloc(base)
        signed = {"host": host, **{name: " ".join(value.split())
                                   for name, value in (headers or {}).items()}}
        names = ";".join(sorted(signed))
        plain = (amz_date, creds.access_key, creds.token, region)  # a GET's or a HEAD's
        if query or headers or self._plain[0] != plain:
            params = {**query, "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                      "X-Amz-Credential": f"{creds.access_key}/{scope}", "X-Amz-Date": amz_date,
                      "X-Amz-Expires": str(self._expires), "X-Amz-SignedHeaders": names}
            if creds.token is not None:
                params["X-Amz-Security-Token"] = creds.token
            canonical_query = "&".join(sorted(f"{_quote(k)}={_quote(v)}"
                                              for k, v in params.items()))
            if not query and not headers:  # the same for every object in this second: a
                self._plain = (plain, canonical_query)  # cold `ls -l` signs 1,000
        else:
            canonical_query = self._plain[1]
        canonical_headers = "".join(f"{name}:{signed[name]}\n" for name in sorted(signed))
        request = "\n".join((method, path, canonical_query, canonical_headers, names,
                             "UNSIGNED-PAYLOAD"))
        to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(request.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(creds.secret_key, date, region), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        return f"{base}{path}?{canonical_query}&X-Amz-Signature={signature}"

    # ------------------------------------------------------------ learning from botocore

    def _layout(self, bucket: str) -> tuple[str, str, str, str] | None:
        if bucket in self._layouts:
            return self._layouts[bucket]
        try:
            layout = self._learn(bucket)
        except Exception as exc:  # noqa: BLE001 - whatever it is, botocore presigns
            log.debug("presigning for %s left to botocore: %s", bucket, exc)
            layout = None
        self._layouts[bucket] = layout
        return layout

    def _learn(self, bucket: str) -> tuple[str, str, str, str] | None:
        if self._credentials() is None:
            return None
        get_url = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": self.PROBE_KEY}, ExpiresIn=self._expires)
        list_params = {"Prefix": self.PROBE_PREFIX, "Delimiter": "/", "MaxKeys": 1000,
                       "EncodingType": "url", "ContinuationToken": "t+/="}
        list_url = self._client.generate_presigned_url(
            "list_objects_v2", Params={"Bucket": bucket, **list_params}, ExpiresIn=self._expires)
        got, listed = urllib.parse.urlsplit(get_url), urllib.parse.urlsplit(list_url)
        if got.netloc != listed.netloc or got.scheme != listed.scheme:
            return None
        base = f"{got.scheme}://{got.netloc}"
        encoded = _quote(self.PROBE_KEY, "/~")
        if not got.path.endswith(encoded):
            return None
        key_path = got.path[:-len(encoded)]
        query = dict(urllib.parse.parse_qsl(got.query, keep_blank_values=True))
        date = query["X-Amz-Date"]
        _, _, region, service, _ = query["X-Amz-Credential"].split("/")
        if service != "s3":
            return None
        ours = self._sign(base, got.path, {}, region, date)
        list_date = dict(urllib.parse.parse_qsl(listed.query))["X-Amz-Date"]
        ours_list = self._sign(base, listed.path, _list_query(list_params), region, list_date)
        if (signature_of(ours) != query.get("X-Amz-Signature")
                or signature_of(ours_list) != signature_of(list_url)):
            log.info("presigning for %s left to botocore (signatures differ)", bucket)
            return None
        return base, key_path, listed.path, region


def _quote(text: str, safe: str = "-_.~") -> str:
    """botocore's percent_encode (quote keeps letters, digits and "_.-~" anyway)."""
    return urllib.parse.quote(text, safe=safe)


def signature_of(url: str) -> str | None:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)).get("X-Amz-Signature")


_LIST_PARAMS = {"Prefix": "prefix", "Delimiter": "delimiter", "MaxKeys": "max-keys",
                "ContinuationToken": "continuation-token", "EncodingType": "encoding-type",
                "StartAfter": "start-after"}


def _list_query(params: dict[str, Any]) -> dict[str, str]:
    query = {"list-type": "2"}
    for name, value in params.items():
        query[_LIST_PARAMS[name]] = str(value)
    return query


@functools.lru_cache(maxsize=16)
def _netloc(base: str) -> str:
    """The host (and port) of an endpoint: signed into every URL, split once."""
    return urllib.parse.urlsplit(base).netloc
