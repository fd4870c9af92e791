"""CopyObject and small PutObject as presigned PUTs: a `chmod -R` of uploaded files is one
copy per file, a `cp -r` of small files one PUT per file.

A metadata change of an uploaded object is a server-side copy onto itself (posix.md).
Through botocore each CopyObject costs this daemon ~2 ms of CPU, which, with the HEAD
before it, made `chmod` of 1,000 files twice as slow as s3fs; a PutObject of 4 KiB costs
~1.3 ms of CPU, ~0.45 ms sent from here, and a `cp -r` of small files runs its uploads
beside the writes on the same two cores. Both requests are a PUT with headers (and a
small body), so they are signed here (store/presigned.py, SigV4 query auth with the
headers signed, the payload unsigned as in every presigned URL) and sent on the urllib3
pool.

The headers are built from boto3's parameters the way botocore serialises them, and every
shape of request (operation, which parameters, which metadata names) is checked once per
bucket: our signature of it must equal the one botocore presigns, else that shape stays
botocore's. Values that are not printable ASCII stay botocore's too.
"""
from __future__ import annotations

import logging
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any, Mapping

from .presigned import Presigner, document_code, local_name, signature_of

log = logging.getLogger(__name__)

#: Operations sent here, by boto3's name.
COPY, PUT = "copy_object", "put_object"
#: boto3's CopyObject and PutObject parameters that become plain headers, by their header name.
HEADERS = {"CopySourceIfMatch": "x-amz-copy-source-if-match",
           "IfMatch": "if-match", "IfNoneMatch": "if-none-match",
           "MetadataDirective": "x-amz-metadata-directive",
           "ContentType": "content-type", "ContentEncoding": "content-encoding",
           "ContentDisposition": "content-disposition", "ContentLanguage": "content-language",
           "CacheControl": "cache-control", "ServerSideEncryption": "x-amz-server-side-encryption",
           "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}


class PutSigner:
    """Presigned CopyObject and PutObject requests of the buckets `presigner` signs for."""

    def __init__(self, client: Any, presigner: Presigner, expires: int):
        self._client = client
        self._presigner = presigner
        self._expires = expires
        # (bucket, operation, header names) -> signed here
        self._checked: dict[tuple[str, ...], bool] = {}
        self._lock = threading.Lock()

    def request(self, operation: str, params: Mapping[str, Any]) -> tuple[str, dict[str, str]] | None:
        """(url, headers) of `operation` (COPY or PUT) with boto3's `params` (Bucket, Key,
        CopySource, Metadata, and HEADERS' names; a PUT's Body is not among them); None:
        send it through botocore."""
        headers = _headers(params)
        if headers is None:
            return None
        bucket, key = params["Bucket"], params["Key"]
        shape = (bucket, operation, *sorted(headers))
        with self._lock:
            trusted = self._checked.get(shape)
        if trusted is None:
            trusted = self._check(operation, params, headers)
            with self._lock:
                self._checked[shape] = trusted
        if not trusted:
            return None
        url = self._presigner.put_url(bucket, key, headers)
        return None if url is None else (url, headers)

    def distrust(self, bucket: str) -> None:
        """S3 refused a request signed here (403): this bucket's writes are botocore's."""
        log.info("a write signed here was refused (403): copies and puts of %s left to "
                 "botocore", bucket)
        with self._lock:
            for shape in list(self._checked):
                if shape[0] == bucket:
                    self._checked[shape] = False
            self._checked[(bucket,)] = False

    def _check(self, operation: str, params: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
        """Does our signature of this request equal botocore's (same date)?"""
        bucket = params["Bucket"]
        with self._lock:
            if self._checked.get((bucket,)) is False:
                return False
        try:
            theirs = self._client.generate_presigned_url(
                operation, Params=dict(params), ExpiresIn=self._expires, HttpMethod="PUT")
            date = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(theirs).query))["X-Amz-Date"]
            ours = self._presigner.put_url(bucket, params["Key"], headers, date)
        except Exception as exc:  # noqa: BLE001 - whatever it is, botocore sends these
            log.debug("%s of %s left to botocore: %s", operation, bucket, exc)
            return False
        same = ours is not None and signature_of(ours) == signature_of(theirs)
        if not same:
            log.info("%s of %s left to botocore (signatures differ)", operation, bucket)
        return same


def _headers(params: Mapping[str, Any]) -> dict[str, str] | None:
    """The headers botocore sends for these CopyObject or PutObject parameters; None for
    parameters or values it is not certain to serialise the same way."""
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
