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
"""
from __future__ import annotations

import logging
import time
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any, Callable

import urllib3
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError,
                                ReadTimeoutError)

from ..errors import AccessDenied, NotFound, Offline, RemoteError, StaleObject

log = logging.getLogger(__name__)

ATTEMPTS = 4
RETRY_STATUS = {429, 500, 502, 503, 504}
CONNECT_ERRORS = (NewConnectionError, ConnectTimeoutError)


class PresignedReader:
    def __init__(self, presign: Callable[[str, str], str], *, connect_timeout: float,
                 read_timeout: float, ca_certs: str | None, proxy_url: str | None = None,
                 pool_size: int = 64):
        self._presign = presign
        options = dict(num_pools=16, maxsize=pool_size, block=False, retries=False,
                       timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
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
        error: Exception = RemoteError(what)
        for attempt in range(ATTEMPTS):
            try:
                resp = self._pool.request("GET", url, headers=headers, preload_content=True,
                                          decode_content=False, enforce_content_length=True)
            except CONNECT_ERRORS as exc:
                raise Offline(f"{what}: S3 unreachable ({type(exc).__name__})") from None
            except (ProtocolError, ReadTimeoutError) as exc:
                error = RemoteError(f"{what}: truncated response body ({type(exc).__name__})")
            except HTTPError as exc:
                error = Offline(f"{what}: {type(exc).__name__}")
            else:
                status = resp.status
                if status in (200, 206):
                    returned = (resp.headers.get("ETag") or "").strip('"')
                    if etag and returned and returned != etag:
                        raise StaleObject(f"{what}: object changed in S3")
                    return resp.data
                if status == 404:
                    raise NotFound(f"{what}: not found")
                if status == 403:
                    raise AccessDenied(f"{what}: access denied")
                if status == 412:
                    raise StaleObject(f"{what}: object changed in S3")
                if status not in RETRY_STATUS:
                    raise RemoteError(f"{what}: S3 error {status}")
                error = RemoteError(f"{what}: S3 error {status} after {ATTEMPTS} attempts")
            log.debug("%s: attempt %d failed (%s), retrying", what, attempt + 1, error)
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
        raise error


    def list_v2(self, url: str) -> dict[str, Any] | None:
        """One ListObjectsV2 page from a presigned URL, shaped like boto3's answer
        (LastModified left as text), or None when S3 did not answer 200 with a
        readable listing: the caller then asks boto3, which retries and maps errors.
        Offline when S3 cannot be reached at all."""
        try:
            resp = self._pool.request("GET", url, preload_content=True, decode_content=True)
        except CONNECT_ERRORS as exc:
            raise Offline(f"ListObjectsV2: S3 unreachable ({type(exc).__name__})") from None
        except HTTPError as exc:
            log.debug("ListObjectsV2 through a presigned URL failed (%s): asking boto3", exc)
            return None
        if resp.status != 200:
            return None
        try:
            return parse_list_v2(resp.data)
        except (ET.ParseError, ValueError, TypeError) as exc:
            log.debug("unreadable ListObjectsV2 answer (%s): asking boto3", exc)
            return None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_list_v2(body: bytes) -> dict[str, Any]:
    """A ListBucketResult (ListObjectsV2) document -> boto3's dict shape, keys decoded
    when the server says it url-encoded them (as botocore does)."""
    root = ET.fromstring(body)
    if _local(root.tag) != "ListBucketResult":
        raise ValueError(f"not a ListBucketResult: {_local(root.tag)}")
    contents: list[dict[str, Any]] = []
    prefixes: list[str] = []
    result: dict[str, Any] = {"IsTruncated": False}
    for child in root:
        tag = _local(child.tag)
        if tag == "Contents":
            obj = {_local(field.tag): field.text or "" for field in child}
            contents.append({"Key": obj["Key"], "Size": int(obj.get("Size") or 0),
                             "LastModified": obj.get("LastModified"), "ETag": obj.get("ETag", "")})
        elif tag == "CommonPrefixes":
            prefixes.extend(field.text or "" for field in child if _local(field.tag) == "Prefix")
        elif tag == "IsTruncated":
            result["IsTruncated"] = (child.text or "").strip().lower() == "true"
        elif tag in ("NextContinuationToken", "EncodingType"):
            result[tag] = child.text or ""
    if result.get("EncodingType") == "url":
        unquote = urllib.parse.unquote_plus
        prefixes = [unquote(p) for p in prefixes]
        for obj in contents:
            obj["Key"] = unquote(obj["Key"])
    result["Contents"] = contents
    result["CommonPrefixes"] = [{"Prefix": p} for p in prefixes]
    return result
