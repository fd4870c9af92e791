"""Where the daemon's lines go: a --log-file that logrotate may move, the default log of a
background mount rotated by size (no log grows forever), journald's priorities."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3fuse import logs
from s3fuse.logs import JournalFormatter, log_handler


def emit(handler: logging.Handler, message: str, level: int = logging.INFO) -> None:
    handler.handle(logging.LogRecord("s3fuse.test", level, __file__, 1, message, None, None))


def test_a_log_file_moved_by_logrotate_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "s3fuse.log"
    handler = log_handler(path)
    emit(handler, "before rotation")
    path.rename(tmp_path / "s3fuse.log.1")  # logrotate's default: move, then the program reopens
    emit(handler, "after rotation")
    handler.close()
    assert "before rotation" in (tmp_path / "s3fuse.log.1").read_text()
    assert "after rotation" in path.read_text() and "before" not in path.read_text()


def test_the_default_log_is_rotated_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "ROTATE_BYTES", 2000)
    path = tmp_path / "s3fuse.log"
    handler = log_handler(path, rotate=True)
    for i in range(200):
        emit(handler, f"line {i:03d} " + "x" * 40)
    handler.close()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["s3fuse.log", "s3fuse.log.1", "s3fuse.log.2", "s3fuse.log.3"]  # BACKUPS
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    assert "line 199" in path.read_text()


def test_journald_gets_a_priority_on_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    handler = log_handler()
    assert isinstance(handler.formatter, JournalFormatter)
    record = logging.LogRecord("s3fuse.x", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert handler.format(record) == "<4>s3fuse.x: two\n<4>lines"
    assert not isinstance(log_handler(Path(os.devnull)).formatter, JournalFormatter)  # a file


def test_an_unwritable_log_file_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    res = subprocess.run([sys.executable, "-m", "s3fuse", "mount", str(tmp_path / "m"),
                          "--log-file", str(tmp_path / "no" / "such" / "dir" / "x.log"),
                          "--cache-dir", str(tmp_path / "cache"), "--source", "s3://bucket",
                          "--endpoint-url", "http://127.0.0.1:9", "--foreground"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"s3fuse: error: cannot open the log file {tmp_path}/no/such/dir/x.log: No such file or "
        "directory"]
    assert not os.path.ismount(tmp_path / "m")


def test_a_release_whose_request_is_gone_is_not_an_error(tmp_path: Path) -> None:
    """pyfuse3's ERROR for a release reply after an unmount raced it: debug, not logged
    at the default level; any other pyfuse3 error still is."""
    log_file = tmp_path / "s3fuse.log"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.setup_logging(log_file=log_file)
    try:
        pyfuse3_log = logging.getLogger("pyfuse3")
        pyfuse3_log.error("fuse_release(): fuse_reply_* failed with %s", "No such file or directory")
        pyfuse3_log.error("fuse_releasedir(): fuse_reply_* failed with %s",  # a full CI run's
                          "No such file or directory")                    # teardown met it
        pyfuse3_log.error("fuse_read(): fuse_reply_* failed with %s", "No such file or directory")
        for handler in logging.getLogger().handlers:
            handler.flush()
        lines = log_file.read_text().splitlines()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = handlers, level
    assert len(lines) == 1 and "fuse_read()" in lines[0] and "ERROR" in lines[0], lines
