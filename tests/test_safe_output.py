"""Logs and terminals (issue 13): no signed-request secret reaches the log through other
libraries' records, no control character of a key reaches the log, the journal or the
admin's terminal raw, and a warning repeated in a loop does not fill the log."""
from __future__ import annotations

import faulthandler
import io
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import unicodedata
from pathlib import Path
from typing import Callable, Iterator

import pytest
import urllib3

from s3fuse.logs import JournalFormatter, SafeRecords, setup_logging
from s3fuse.printable import _UNSAFE, printable
from tests.conftest import Backend
from tests.support.faultproxy import FaultProxy
from tests.support.mount import Mount, s3_env

HOSTILE = "x\n<0>evil\x1b[2J\u202e.txt"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")   # any control character but the newline
FORGED = re.compile(r"^<[0-7]>evil", re.MULTILINE)          # a journald priority from a key


@pytest.fixture
def logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], str]]:
    """The daemon's logging set up (setup_logging) into a file; `logged()` is what it holds."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("s3fuse").level
    path = tmp_path / "daemon.log"
    with open(path, "w") as out:
        monkeypatch.setattr(sys, "stderr", out)
        setup_logging("INFO")
        yield lambda: (out.flush(), path.read_text())[1]
    faulthandler.unregister(signal.SIGUSR1)
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("s3fuse").setLevel(saved[2])


def test_printable_escapes_exactly_the_unsafe_characters():
    for code in range(0x110000):
        ch = chr(code)
        unsafe = unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or 0x202a <= code <= 0x202e \
            or 0x2066 <= code <= 0x2069
        assert bool(_UNSAFE.match(ch)) == unsafe, hex(code)
    assert printable(HOSTILE) == "x\\n<0>evil\\x1b[2J\\u202e.txt"
    assert printable("résumé/日本 a\\b") == "résumé/日本 a\\b"


def test_a_presigned_url_in_a_urllib3_warning_is_redacted(logged: Callable[[], str]):
    """A server answering garbage headers: urllib3 logs the whole presigned URL (a WARNING
    of its own, with a traceback) when it cannot parse them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nnot a header\r\n\r\nok")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    url = (f"http://127.0.0.1:{server.getsockname()[1]}/bkt/key?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
           "&X-Amz-Security-Token=SessionTokenSecret&X-Amz-Signature=SignatureSecret")
    urllib3.PoolManager(retries=False).request("GET", url)
    server.close()
    text = logged()
    assert "Failed to parse headers" in text and "X-Amz-Signature=***" in text
    for secret in ("SignatureSecret", "SessionTokenSecret", "AKIDEXAMPLE"):
        assert secret not in text


def test_botocore_debug_headers_are_redacted(logged: Callable[[], str]):
    logging.getLogger("botocore.endpoint").setLevel(logging.DEBUG)
    try:
        logging.getLogger("botocore.endpoint").debug(
            "Sending http request: %s", {"headers": {
                "Authorization": b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x, Signature=SignatureSecret",
                "X-Amz-Security-Token": b"SessionTokenSecret"}})
    finally:
        logging.getLogger("botocore.endpoint").setLevel(logging.NOTSET)
    text = logged()
    assert "Sending http request" in text
    for secret in ("SignatureSecret", "SessionTokenSecret", "AKIDEXAMPLE"):
        assert secret not in text


def test_a_key_cannot_forge_a_journal_entry_or_drive_a_terminal():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    handler.addFilter(SafeRecords())
    log = logging.getLogger("s3fuse.test.journal")
    log.addHandler(handler)
    try:
        log.warning("upload of %s failed", HOSTILE)
        try:
            raise KeyError(HOSTILE)
        except KeyError:
            log.exception("lookup of %s", HOSTILE)
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert not RAW.search(text) and not FORGED.search(text)
    assert all(re.match(r"<[2-7]>", line) for line in text.splitlines())  # a traceback's lines too
    assert "x\\n<0>evil\\x1b[2J" in text


def test_a_warning_repeated_in_a_loop_is_let_through_a_few_times_a_minute():
    now = [0.0]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SafeRecords(burst=5, period=60, clock=lambda: now[0]))
    log = logging.getLogger("s3fuse.test.ratelimit")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for i in range(1000):
            log.warning("connection pool full for %s", i)
        log.warning("another kind of warning")
        log.info("asked-for info %s", 1)
        log.info("asked-for info %s", 2)
        now[0] = 61.0
        log.warning("connection pool full for %s", "later")
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)
    lines = out.getvalue().splitlines()
    assert lines[:5] == [f"connection pool full for {i}" for i in range(5)]
    assert lines[5:8] == ["another kind of warning", "asked-for info 1", "asked-for info 2"]
    assert lines[8:] == ["connection pool full for later [995 more like this were not logged before it]"]


@pytest.mark.mount
def test_a_hostile_key_reaches_log_and_status_escaped(tmp_path: Path, backend: Backend, s3, bucket,
                                                      fuse_available):
    """A file named with a newline, a journald priority and an escape sequence whose upload
    fails: the journal-formatted daemon log and `s3fuse status`/`sync` show it escaped."""
    faults = FaultProxy(s3.meta.endpoint_url)
    faults.fail(lambda method, path: method == "PUT" and "evil" in path, 403)
    env = s3_env(faults.endpoint, backend.access_key, backend.secret_key)
    m = Mount(tmp_path / "mnt", tmp_path / "cache", tmp_path / "daemon.log",
              {**env, "JOURNAL_STREAM": "8:1234"}, ["--source", f"s3://{bucket}"]).start()
    m.expect_log("access denied|upload.*failed|AccessDenied")
    try:
        (m.path(bucket) / HOSTILE).write_bytes(b"data")
        m.wait_idle()
        outputs = [subprocess.run([sys.executable, "-m", "s3fuse", *command, str(m.mountpoint)],
                                  env=env, capture_output=True, text=True, timeout=60)
                   for command in (["status"], ["sync", "--timeout", "5"])]
    finally:
        m.stop()
        faults.close()
    status, sync = outputs
    assert "x\\n<0>evil\\x1b[2J\\u202e.txt" in status.stdout, status.stdout
    assert sync.returncode == 1 and "x\\n<0>evil" in sync.stderr
    log = m.log()
    assert "x\\n<0>evil\\x1b[2J\\u202e.txt" in log
    for text in (status.stdout, status.stderr, sync.stderr, log):
        assert not RAW.search(text) and not FORGED.search(text), text


def test_a_failed_credential_refresh_is_one_line_without_a_traceback(
        logged: Callable[[], str]) -> None:
    """A profile's role with STS unreachable: botocore logged each failed refresh with its
    traceback (33 in 20 s in a helper's run); one line with the cause, rate-limited."""
    refresh = logging.getLogger("botocore.credentials")
    for _ in range(30):
        try:
            raise ConnectionError("Could not connect to the endpoint URL: https://sts.x/")
        except ConnectionError:
            refresh.warning("Refreshing temporary credentials failed during %s refresh period.",
                            "mandatory", exc_info=True)
    text = logged()
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if "Refreshing temporary credentials" in line]
    assert len(lines) == 20  # RATE_BURST a minute
    assert lines[0].endswith("mandatory refresh period. ConnectionError: Could not connect to "
                             "the endpoint URL: https://sts.x/")
