"""The upload journal alone: versions of a key, inherited conditions, crash recovery."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from s3fuse.posix import Posix
from s3fuse.upload.journal import UNKNOWN, Journal, is_light
from s3fuse.upload.staging import Staging


def test_newer_version_supersedes_queued_and_failed_ones(tmp_path: Path):
    j = Journal(tmp_path / "journal.sqlite")
    first = j.enqueue("b", "k", "s1", 1, "e0")
    j.fail(j.claim(1e18).id, "AccessDenied")  # type: ignore[union-attr]
    second = j.enqueue("b", "k", "s2", 2, None)   # inherits first's condition, not None
    third = j.enqueue("b", "k", "s3", 3, UNKNOWN)
    assert sorted(j.trash()) == ["s1", "s2"]
    assert j.state(first) == j.state(second) == j.state(third) == ("queued", None)
    job = j.claim(1e18)
    assert job is not None and job.id == third and job.expected == "e0"
    j.done(third, "e3")
    assert j.state(first) == ("done", None) and j.latest() == {}
    assert j.summary()["files"] == 0


def test_version_behind_a_running_upload_waits_then_matches_its_etag(tmp_path: Path):
    j = Journal(tmp_path / "journal.sqlite")
    j.enqueue("b", "k", "s1", 1, None)
    running = j.claim(1e18)
    assert running is not None and running.expected is None
    newer = j.enqueue("b", "k", "s2", 1, "ignored")
    other = j.enqueue("b", "other", "s3", 1, UNKNOWN)
    claimed = j.claim(1e18)
    assert claimed is not None and claimed.id == other  # k is busy
    assert j.claim(1e18) is None and j.next_due() is None
    j.done(running.id, "etag-1")
    job = j.claim(1e18)
    assert job is not None and job.id == newer and job.expected == "etag-1"


def test_failed_running_upload_gives_way_to_the_newer_version(tmp_path: Path):
    j = Journal(tmp_path / "journal.sqlite")
    j.enqueue("b", "k", "s1", 1, "e0")
    running = j.claim(1e18)
    assert running is not None
    newer = j.enqueue("b", "k", "s2", 1, "e0")
    j.fail(running.id, "NoSuchBucket")
    assert j.state(running.id) == ("queued", None) and j.summary()["failures"] == []
    assert j.latest() == {("b", "k"): (newer, "s2")}


def test_recover_requeues_and_replays_interrupted_uploads_first(tmp_path: Path):
    """An upload interrupted by a crash may be in S3 already: it is replayed before the
    newer version of its key, which then matches the ETag the replay found (superseding
    it would leave the newer version conditional on "e0": a 412 against our own upload)."""
    path = tmp_path / "journal.sqlite"
    j = Journal(path)
    first = j.enqueue("b", "k", "s1", 1, "e0")
    j.claim(1e18)
    newer = j.enqueue("b", "k", "s2", 5, "e0")
    j.enqueue("b", "x", "s3", 7, UNKNOWN)
    j.claim(1e18)
    record = j.multipart_begin("b", "x")
    j.close()  # as after SIGKILL: nothing else happens

    j = Journal(path)
    assert j.recover() == 2
    assert j.summary()["files"] == 3 and j.summary()["bytes"] == 13
    assert j.latest()[("b", "k")] == (newer, "s2")
    assert j.multiparts("b", "x") == [(record, None)] and j.multipart_keys() == [("b", "x")]
    assert j.staging_ids() == {"s1", "s2", "s3"}
    replay = j.claim(1e18)
    assert replay is not None and replay.id == first and replay.expected == "e0"
    assert {j.claim(1e18).key, j.claim(1e18)} == {"x", None}  # type: ignore[union-attr]
    j.done(first, "e1")
    job = j.claim(1e18)
    assert job is not None and job.id == newer and job.expected == "e1"


def test_retried_upload_is_not_superseded_but_goes_first(tmp_path: Path):
    """A transient failure may hide a success (the answer was lost): the retry goes first."""
    j = Journal(tmp_path / "journal.sqlite")
    first = j.enqueue("b", "k", "s1", 1, None)
    j.requeue(j.claim(1e18).id, "connection reset", 100.0)  # type: ignore[union-attr]
    second = j.enqueue("b", "k", "s2", 2, UNKNOWN)
    third = j.enqueue("b", "k", "s3", 3, UNKNOWN)   # supersedes second (never sent), not first
    assert j.trash() == ["s2"] and j.state(second) == ("queued", None)
    assert j.claim(0) is None                       # first waits for its backoff, third behind it
    assert j.next_due() is not None and j.next_due() > 1000  # type: ignore[operator]
    j.requeue(first, "connection reset", 0.0)
    assert j.claim(1e18).id == first                # type: ignore[union-attr]
    j.done(first, "e1")
    job = j.claim(1e18)
    assert job is not None and job.id == third and job.expected == "e1"


def test_an_attempt_that_sent_nothing_gives_its_claim_back(tmp_path: Path):
    """Offline before its first request: the row is unsent again, and a removal journalled
    while it was claimed replaces it (inheriting "did not exist": nothing to delete)."""
    j = Journal(tmp_path / "journal.sqlite")
    first = j.enqueue("b", "new", "s1", 1, None)
    claimed = j.claim(1e18)
    assert claimed is not None and not claimed.sent
    removal = j.enqueue("b", "new", "", 0, UNKNOWN, op="delete")  # claimed: not superseded
    assert j.trash() == []
    j.requeue(first, "offline", 0.0, counted=False, unsent=True)
    assert j.trash() == ["s1"] and j.state(first) == j.state(removal) == ("queued", None)
    job = j.claim(1e18)
    assert job is not None and job.id == removal and job.op == "delete" and job.expected is None


def test_an_unsent_attempt_keeps_what_an_earlier_one_may_have_sent(tmp_path: Path):
    j = Journal(tmp_path / "journal.sqlite")
    first = j.enqueue("b", "k", "s1", 1, None)
    j.requeue(j.claim(1e18).id, "connection reset", 0.0)  # type: ignore[union-attr]
    again = j.claim(1e18)
    assert again is not None and again.id == first and again.sent
    newer = j.enqueue("b", "k", "s2", 2, UNKNOWN)
    j.requeue(first, "offline", 0.0, counted=False, unsent=not again.sent)
    assert j.trash() == [] and j.state(newer) == ("queued", None)
    assert j.claim(1e18).id == first  # type: ignore[union-attr]  # it goes first, as before


def test_requeue_backoff_and_retry_failed(tmp_path: Path):
    j = Journal(tmp_path / "journal.sqlite")
    job_id = j.enqueue("b", "k", "s1", 1, UNKNOWN)
    j.requeue(j.claim(1e18).id, "InternalError", 100.0)  # type: ignore[union-attr]
    assert j.claim(0) is None and j.next_due() is not None
    summary = j.summary()
    assert summary["retrying"][0]["attempts"] == 1 and summary["files"] == 1
    j.fail(j.claim(1e18).id, "AccessDenied")  # type: ignore[union-attr]
    assert j.state(job_id) == ("failed", "AccessDenied") and j.summary()["files"] == 0
    assert j.retry_failed() == 1 and j.state(job_id) == ("queued", None)


def test_files_are_private(tmp_path: Path):
    staging = Staging(tmp_path / "staging")
    _, path = staging.create()
    Journal(tmp_path / "journal.sqlite").enqueue("b", "k", "s", 1, UNKNOWN)
    assert stat.S_IMODE(staging.directory.stat().st_mode) == 0o700
    for file in (path, tmp_path / "journal.sqlite", tmp_path / "journal.sqlite-wal"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_a_light_claim_takes_only_removals_and_small_puts_and_copies_when_told(tmp_path: Path):
    """The upload queue's light workers (most of them) must never take a metadata copy or
    a big PUT: those stay with the few that take any job (upload/queue.py)."""
    j = Journal(tmp_path / "journal.sqlite")
    meta = j.enqueue_meta("b", "chmodded", Posix(mode=stat.S_IFREG | 0o664), 10, UNKNOWN)
    big = j.enqueue("b", "big", "s1", 5000, UNKNOWN)
    small = j.enqueue("b", "small", "s2", 100, UNKNOWN)
    gone = j.enqueue("b", "gone", "", 0, UNKNOWN, op="delete")
    light = [j.claim(1e12, light_max=1000) for _ in range(3)]
    assert [job.id if job else None for job in light] == [small, gone, None]
    assert [job.id for job in (j.claim(1e12), j.claim(1e12)) if job] == [meta, big]
    # with `copies` (a chmod has paused): a small object's metadata change too, not a big one's
    small_meta = j.enqueue_meta("b", "small-chmodded", Posix(mode=stat.S_IFREG | 0o600), 10,
                                UNKNOWN)
    big_meta = j.enqueue_meta("b", "big-chmodded", Posix(mode=stat.S_IFREG | 0o600), 5000,
                              UNKNOWN)
    assert j.next_due(light_max=1000) is None and j.next_due(light_max=1000, copies=True) == 0
    light = [j.claim(1e12, light_max=1000, copies=True) for _ in range(2)]
    assert [job.id if job else None for job in light] == [small_meta, None]
    assert (job := j.claim(1e12)) is not None and job.id == big_meta
    j.close()


@pytest.mark.parametrize("copies", [False, True])
def test_is_light_says_what_a_light_claim_takes(tmp_path: Path, copies: bool):
    """The queue wakes light workers by `is_light`, which must be the claim's condition."""
    j = Journal(tmp_path / "journal.sqlite")
    jobs = {}
    for size in (0, 1000, 1001):
        jobs[j.enqueue("b", f"put-{size}", f"s{size}", size, UNKNOWN)] = ("put", size)
        jobs[j.enqueue("b", f"gone-{size}", "", size, UNKNOWN, op="delete")] = ("delete", size)
        jobs[j.enqueue_meta("b", f"meta-{size}", Posix(mode=stat.S_IFREG | 0o600), size,
                            UNKNOWN)] = ("meta", size)
    claimed = set()
    while (job := j.claim(1e12, light_max=1000, copies=copies)) is not None:
        claimed.add(job.id)
    assert claimed == {i for i, (op, size) in jobs.items() if is_light(op, size, 1000, copies)}
    assert 0 < len(claimed) < len(jobs)
    j.close()


def test_a_directory_marker_and_the_jobs_of_its_directory_never_run_together(tmp_path: Path):
    """SeaweedFS loses a `dir/` marker stored while an object below it is (it makes the
    missing parent directory over the marker): a job waits for the marker of its directory
    queued before it, and a marker for the jobs of its directory already running."""
    j = Journal(tmp_path / "journal.sqlite")
    marker = j.enqueue("b", "d/", "m", 0, UNKNOWN)
    child = j.enqueue("b", "d/f", "f", 1, UNKNOWN)
    sub = j.enqueue("b", "d/s/", "s", 0, UNKNOWN)
    other = j.enqueue("b", "e/g", "g", 1, UNKNOWN)
    elsewhere = j.enqueue("c", "d/h", "h", 1, UNKNOWN)  # another bucket's d/
    claimed = [j.claim(1e18) for _ in range(4)]
    assert [c.id if c else None for c in claimed] == [marker, other, elsewhere, None]
    assert j.next_due() is None  # nothing startable until the marker is done
    j.done(marker, "em")
    assert [j.claim(1e18).id for _ in range(2)] == [child, sub]  # type: ignore[union-attr]
    # the other order: a job below runs, then its directory's marker is queued
    below = j.enqueue("b", "n/x", "x", 1, UNKNOWN)
    assert j.claim(1e18).id == below  # type: ignore[union-attr]
    late = j.enqueue("b", "n/", "n", 0, UNKNOWN)
    assert j.claim(1e18) is None
    j.done(below, "ex")
    assert j.claim(1e18).id == late  # type: ignore[union-attr]
