"""Requests S3 refuses (403) show in `s3fuse status` with their code and what was refused
(troubleshooting.md: "Reads fail with EACCES ... `status` shows the error"): before, only
link failures reached `recent_errors`, and a mount whose every request got 403 said
"online" and nothing else. And a start whose credentials S3 does not know (or whose
secret is wrong) fails with one line instead of mounting; other refusals, an offline
start and a silent S3 still mount. Against a local server that refuses everything."""
from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import trio

from s3fuse.cli import format_status
from s3fuse.config import Config, parse_manifest, parse_source
from s3fuse.daemon import credentials_refused, first_request
from s3fuse.errors import AccessDenied, CredentialsExpired, Offline
from s3fuse.store.memory import MemoryStore
from s3fuse.store.retry import tagged
from s3fuse.store.s3 import S3Store
from tests.test_upload import make_store


def refusing_server(code: str) -> http.server.ThreadingHTTPServer:
    """An S3 endpoint that answers every request 403 with the error `code`."""
    class Refuse(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _refuse(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>refused</Message></Error>").encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _refuse

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def denied(tmp_path: Path) -> Iterator[S3Store]:
    server = refusing_server("AccessDenied")
    try:
        yield make_store(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_every_refused_request_shows_in_the_status(denied: S3Store) -> None:
    for request in (lambda: denied.head("b", "f.txt"), lambda: denied.get("b", "f.txt", "e1"),
                    lambda: denied.get_whole("b", "small", "", 1 << 20),
                    lambda: list(denied.list_pages("b", "")),
                    lambda: denied.put_object("b", "out.csv", b"x"),
                    lambda: denied.delete_object("b", "keep.txt")):
        with pytest.raises(AccessDenied):
            request()
    link = denied.link.status()
    assert link["state"] == "online"  # S3 answers: refused, not unreachable
    errors = [e["error"] for e in link["recent_errors"]]
    assert "HeadObject s3://b/f.txt: access denied (403)" in errors  # a HEAD's 403 has no body
    for what in ("GetObject s3://b/f.txt", "GetObject s3://b/small", "ListObjectsV2 s3://b/",
                 "PutObject s3://b/out.csv", "DeleteObject s3://b/keep.txt"):
        assert f"{what}: access denied (AccessDenied)" in errors, (what, errors)
    text = format_status({"mountpoint": "/mnt", "link": link, "pid": 1, "version": "x"})
    assert "DeleteObject s3://b/keep.txt: access denied (AccessDenied)" in text


class Refusing(MemoryStore):
    def __init__(self, answer: Exception | float) -> None:
        super().__init__()
        self.answer = answer

    def list_buckets(self) -> list[str]:
        if isinstance(self.answer, float):
            time.sleep(self.answer)
            return []
        raise self.answer


def refused(code: str) -> AccessDenied:
    return tagged(AccessDenied(f"ListBuckets: access denied ({code})"), code, 403)  # type: ignore[return-value]


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch"])
async def test_credentials_s3_does_not_know_fail_the_start(code: str) -> None:
    reason = await credentials_refused(Refusing(refused(code)).list_buckets)
    assert reason == f"S3 refuses these credentials ({code}): ListBuckets: access denied ({code})"


async def test_a_session_expired_for_good_fails_the_start() -> None:
    """An exported session token past its expiry (nothing renews it) mounted, then every
    request failed with EACCES."""
    expired = tagged(CredentialsExpired("ListBuckets: access denied (ExpiredToken): the "
                                        "session credentials expired and cannot be renewed"),
                     "ExpiredToken", 400)
    reason = await credentials_refused(Refusing(expired).list_buckets)
    assert reason == ("S3 says these session credentials have expired (ExpiredToken): "
                      "ListBuckets: access denied (ExpiredToken): the session credentials "
                      "expired and cannot be renewed")


@pytest.mark.parametrize("answer", [refused("AccessDenied"), Offline("ListBuckets: unreachable"), 1.0,
                                    RuntimeError("Error when retrieving token from sso")],
                         ids=["scoped-key", "offline-boot", "silent", "provider-error"])
async def test_other_answers_mount(answer: Exception | float) -> None:
    with trio.fail_after(0.9):
        assert await credentials_refused(Refusing(answer).list_buckets, wait=0.2) is None


def test_wrong_keys_against_a_real_endpoint_are_told_apart(tmp_path: Path) -> None:
    """The code S3 answers reaches the check, whichever request the mount makes first."""
    server = refusing_server("InvalidAccessKeyId")
    try:
        store = make_store(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        reasons = [trio.run(credentials_refused, first_request(cfg, store)) for cfg in (
            Config(sources=(parse_source("s3://bkt/p/"),)),
            Config(manifests=(parse_manifest("s3://bkt/m/manifest.jsonl"),)), Config())]
    finally:
        server.shutdown()
        server.server_close()
    for reason, what in zip(reasons, ("ListObjectsV2 s3://bkt/p/", "GetObject s3://bkt/m/manifest.jsonl",
                                      "ListBuckets")):
        assert reason == (f"S3 refuses these credentials (InvalidAccessKeyId): {what}: access "
                          "denied (InvalidAccessKeyId)")
