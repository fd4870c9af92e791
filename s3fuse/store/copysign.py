"""CopyObject as a presigned PUT: a `chmod -R` of uploaded files is one copy per file.

A metadata change of an uploaded object is a server-side copy onto itself (posix.md).
Through botocore each CopyObject costs this daemon ~2 ms of CPU, which, with the HEAD
before it, made `chmod` of 1,000 files twice as slow as s3fs. The request itself is a PUT
with headers and no body, so it is signed here (store/presigned.py, SigV4 query auth with
the headers signed) and sent on the urllib3 pool.

The headers are built from boto3's CopyObject parameters the way botocore serialises them,
and every shape of request (which parameters, which metadata names) is checked once per
bucket: our signature of it must equal the one botocore presigns, else that shape stays
botocore's. Values that are not printable ASCII stay botocore's too.
"""
from __future__ import annotations

import logging
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any, Mapping

from .presigned import Presigner, local_name, signature_of

log = logging.getLogger(__name__)

#: boto3's CopyObject parameters that become plain headers, by their header name.
HEADERS = {"CopySourceIfMatch": "x-amz-copy-source-if-match",
           "MetadataDirective": "x-amz-metadata-directive",
           "ContentType": "content-type", "ContentEncoding": "content-encoding",
           "ContentDisposition": "content-disposition", "ContentLanguage": "content-language",
           "CacheControl": "cache-control", "ServerSideEncryption": "x-amz-server-side-encryption",
           "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}


class CopySigner:
    """Presigned CopyObject requests of the buckets `presigner` signs for."""

    def __init__(self, client: Any, presigner: Presigner, expires: int):
        self._client = client
        self._presigner = presigner
        self._expires = expires
        self._checked: dict[tuple[str, tuple[str, ...]], bool] = {}  # (bucket, shape) -> ours
        self._lock = threading.Lock()

    def request(self, params: Mapping[str, Any]) -> tuple[str, dict[str, str]] | None:
        """(url, headers) of the CopyObject of boto3's `params` (Bucket, Key, CopySource,
        Metadata, and HEADERS' names); None: send it through botocore."""
        headers = _headers(params)
        if headers is None:
            return None
        bucket, key = params["Bucket"], params["Key"]
        shape = (bucket, tuple(sorted(headers)))
        with self._lock:
            trusted = self._checked.get(shape)
        if trusted is None:
            trusted = self._check(params, headers)
            with self._lock:
                self._checked[shape] = trusted
        if not trusted:
            return None
        url = self._presigner.put_url(bucket, key, headers)
        return None if url is None else (url, headers)

    def distrust(self, bucket: str) -> None:
        """S3 refused a request signed here (403): this bucket's copies are botocore's."""
        log.info("a copy signed here was refused (403): copies of %s left to botocore", bucket)
        with self._lock:
            for shape in list(self._checked):
                if shape[0] == bucket:
                    self._checked[shape] = False
            self._checked[(bucket, ())] = False

    def _check(self, params: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
        """Does our signature of this request equal botocore's (same date)?"""
        bucket = params["Bucket"]
        with self._lock:
            if self._checked.get((bucket, ())) is False:
                return False
        try:
            theirs = self._client.generate_presigned_url(
                "copy_object", Params=dict(params), ExpiresIn=self._expires, HttpMethod="PUT")
            date = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(theirs).query))["X-Amz-Date"]
            ours = self._presigner.put_url(bucket, params["Key"], headers, date)
        except Exception as exc:  # noqa: BLE001 - whatever it is, botocore sends these copies
            log.debug("copies of %s left to botocore: %s", bucket, exc)
            return False
        same = ours is not None and signature_of(ours) == signature_of(theirs)
        if not same:
            log.info("copies of %s left to botocore (signatures differ)", bucket)
        return same


def _headers(params: Mapping[str, Any]) -> dict[str, str] | None:
    """The headers botocore sends for these CopyObject parameters; None for parameters
    or values it is not certain to serialise the same way."""
    headers: dict[str, str] = {}
    for name, value in params.items():
        if name in ("Bucket", "Key"):
            continue
        if name == "CopySource" and set(value) == {"Bucket", "Key"}:
            headers["x-amz-copy-source"] = urllib.parse.quote(
                f"{value['Bucket']}/{value['Key']}", safe="/~")
        elif name == "Metadata":
            for meta, text in value.items():
                headers[f"x-amz-meta-{meta.lower()}"] = text
        elif name in HEADERS:
            headers[HEADERS[name]] = value
        else:
            return None
    if not all(isinstance(v, str) and v.isascii() and v.isprintable() for v in headers.values()):
        return None
    return headers


def copy_etag(body: bytes) -> str | None:
    """The ETag of a CopyObjectResult document (quotes and entities removed); None for
    anything else (S3 may answer a copy with 200 and an Error document when it fails
    midway)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    if local_name(root.tag) != "CopyObjectResult":
        return None
    for child in root:
        if local_name(child.tag) == "ETag" and child.text:
            return child.text.strip().strip('"')
    return None
