"""Headers that are not ASCII (as mc, s3cmd or curl store them: raw UTF-8) survive a
metadata change and a rewrite: botocore refuses non-ASCII user metadata, and such an
upload was retried forever; a Content-Disposition read as latin-1 was sent back as
UTF-8 of that (mojibake, doubled at every change)."""
from __future__ import annotations

import email.header
import http.client
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from s3fuse.store import retry
from s3fuse.store.copysources import kept_headers
from s3fuse.store.presigned import Presigner
from s3fuse.store.s3 import translate
from s3fuse.upload.headers import carried
from tests.conftest import Backend
from tests.test_store_contract import moto_store

TITLE = "café 中文"
DISPOSITION = 'attachment; filename="résumé.pdf"'


def raw_put(backend: Backend, bucket: str, key: str, headers: dict[str, str]) -> None:
    """A PUT whose header values go out as UTF-8 bytes, signed as they are."""
    signer = boto3.client("s3", endpoint_url=backend.endpoint, region_name="us-east-1",
                          aws_access_key_id=backend.access_key,
                          aws_secret_access_key=backend.secret_key,
                          config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
    url = Presigner(signer, 600).put_url(bucket, key, headers)
    assert url is not None
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    conn.putrequest("PUT", f"{parts.path}?{parts.query}", skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name.encode(), value.encode("utf-8"))
    conn.putheader("Content-Length", "4")
    conn.endheaders(b"body")
    answer = conn.getresponse()
    assert answer.status == 200, answer.read()


def raw_headers(backend: Backend, bucket: str, key: str) -> dict[str, bytes]:
    """The answer's header values as the bytes the server sent."""
    parts = urllib.parse.urlsplit(backend.client.generate_presigned_url(
        "head_object", Params={"Bucket": bucket, "Key": key}))
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    conn.request("HEAD", f"{parts.path}?{parts.query}")
    answer = conn.getresponse()
    return {name.lower(): value.encode("latin-1") for name, value in answer.getheaders()}


def test_values_read_as_latin1_are_their_utf8_text_and_metadata_goes_as_rfc2047() -> None:
    wire = {"content-disposition": DISPOSITION.encode().decode("latin-1"),
            "x-amz-meta-title": TITLE.encode().decode("latin-1"), "x-amz-meta-plain": "ascii"}
    kept = kept_headers(wire)
    assert kept["ContentDisposition"] == DISPOSITION
    assert kept["Metadata"]["plain"] == "ascii"
    encoded = kept["Metadata"]["title"]
    assert encoded.isascii() and str(email.header.make_header(
        email.header.decode_header(encoded))) == TITLE
    assert kept_headers({"x-amz-meta-title": "caf\xe9"})["Metadata"]["title"].isascii()  # latin-1


def test_a_request_botocore_refuses_to_send_is_a_permanent_failure() -> None:
    refused = botocore.exceptions.ParamValidationError(report="Non ascii characters found")
    assert retry.is_permanent(translate(refused, "PutObject s3://b/k"))


def test_a_chmod_and_a_rewrite_keep_non_ascii_headers(backend: Backend, bucket: str,
                                                      tmp_path: Path) -> None:
    raw_put(backend, bucket, "doc.pdf", {"x-amz-meta-title": TITLE,
                                         "content-disposition": DISPOSITION})
    store = moto_store(backend, tmp_path)
    info = store.head(bucket, "doc.pdf")
    etag = store.copy_object(bucket, "doc.pdf", "doc.pdf", info.etag, size=info.size,
                             metadata={"mode": "33152"})  # a chmod 600
    after: Any = backend.client.head_object(Bucket=bucket, Key="doc.pdf")
    assert after["Metadata"]["mode"] == "33152"
    title = after["Metadata"]["title"]
    assert str(email.header.make_header(email.header.decode_header(title))) == TITLE
    assert raw_headers(backend, bucket, "doc.pdf")["content-disposition"] == DISPOSITION.encode()
    kept_type, extra = carried(store, bucket, "doc.pdf", etag, {"mode": "33152"})
    store.put_object(bucket, "doc.pdf", b"new bytes", content_type=kept_type, if_match=etag,
                     **extra)  # a rewrite
    assert raw_headers(backend, bucket, "doc.pdf")["content-disposition"] == DISPOSITION.encode()
    again: Any = backend.client.head_object(Bucket=bucket, Key="doc.pdf")
    assert str(email.header.make_header(email.header.decode_header(
        again["Metadata"]["title"]))) == TITLE

