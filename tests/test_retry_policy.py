"""The one retry policy (store/retry.py) and the botocore path that follows it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from s3fuse.config import Config, KeyPair
from s3fuse.errors import Offline, RemoteError
from s3fuse.store import retry
from s3fuse.store.s3 import S3Store
from tests.conftest import Backend


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff waits are recorded, not slept."""
    waits: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", waits.append)
    return waits


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def offline_store(tmp_path: Path) -> S3Store:
    keys = KeyPair("testing", "testing")
    return S3Store(Config(endpoint_url="http://127.0.0.1:9", region="us-east-1",
                          addressing_style="path", read_keys=keys, cache_dir=tmp_path))


def failing(*errors: Exception) -> tuple[list[int], Any]:
    """fn raising `errors` one after another, then returning "ok"; and its call count."""
    calls = [0]

    def fn(**_: Any) -> str:
        calls[0] += 1
        if calls[0] <= len(errors):
            raise errors[calls[0] - 1]
        return "ok"
    return calls, fn


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = retry.Policy(attempts=None, slow_attempts=1, base=0.1, cap=1.0)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (4, 1.0), (10_000, 1.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling / 4 and max(delays) > ceiling / 2  # spread over [0, ceiling]


@pytest.mark.parametrize("code, status, verdict", [
    ("SlowDown", 503, retry.Verdict.RETRY), ("InternalError", 500, retry.Verdict.RETRY),
    ("", 429, retry.Verdict.RETRY), ("RequestTimeout", 400, retry.Verdict.RETRY),
    ("NotImplemented", 501, retry.Verdict.STOP), ("AccessDenied", 403, retry.Verdict.STOP),
    ("NoSuchKey", 404, retry.Verdict.STOP), ("PreconditionFailed", 412, retry.Verdict.STOP),
])
def test_which_answers_are_retried(code: str, status: int, verdict: retry.Verdict) -> None:
    assert retry.answered(code, status) is verdict


@pytest.mark.parametrize("code, status, permanent", [
    ("ExistingObjectIsFile", 409, True), ("BucketNotEmpty", 409, True),
    ("OperationAborted", 409, False), ("ConditionalRequestConflict", 409, False),
    ("SlowDown", 503, False), ("", 408, False), ("AccessDenied", 403, True),
])
def test_which_failures_end_an_upload_job(code: str, status: int, permanent: bool) -> None:
    error = retry.tagged(RemoteError(f"PutObject s3://b/k: S3 error {code}"), code, status)
    assert retry.is_permanent(error) is permanent


def test_attempts_slow_attempts_and_stop(no_sleep: list[float]) -> None:
    policy = retry.Policy(attempts=4, slow_attempts=2, base=0.05, cap=2.0)
    judged = {"quick": retry.Verdict.RETRY, "slow": retry.Verdict.SLOW, "stop": retry.Verdict.STOP}
    retried: list[int] = []

    def run(*kinds: str) -> tuple[str | None, int]:
        calls = [0]

        def attempt() -> str:
            calls[0] += 1
            if calls[0] <= len(kinds):
                raise ValueError(kinds[calls[0] - 1])
            return "ok"
        try:
            return retry.call("t", attempt, lambda exc: judged[str(exc)], policy,
                              lambda n, _: retried.append(n)), calls[0]
        except ValueError:
            return None, calls[0]

    assert run("quick", "quick", "quick") == ("ok", 4) and retried == [1, 2, 3]
    assert len(no_sleep) == 3 and no_sleep[2] <= 0.2
    assert run("quick", "quick", "quick", "quick") == (None, 4)  # attempts ran out
    assert run("slow", "quick", "slow") == (None, 3)             # the second timeout ends it
    assert run("stop") == (None, 1)


def test_botocore_requests_follow_the_policy(tmp_path: Path) -> None:
    store = offline_store(tmp_path)
    calls, fn = failing(client_error("SlowDown", 503), client_error("InternalError", 500))
    assert store._call("PutObject s3://b/k", fn) == "ok" and calls[0] == 3
    assert store.request_counts()["PutObject"] == 3  # every attempt is a request sent

    calls, fn = failing(*[client_error("SlowDown", 503)] * retry.REQUESTS.attempts)
    with pytest.raises(RemoteError) as storm:
        store._call("PutObject s3://b/k", fn)
    assert calls[0] == retry.REQUESTS.attempts and retry.error_code(storm.value) == ("SlowDown", 503)

    calls, fn = failing(client_error("AccessDenied", 403))
    with pytest.raises(Exception):
        store._call("PutObject s3://b/k", fn)
    assert calls[0] == 1

    store._answers = lambda: True  # type: ignore[method-assign]  # S3 answers a probe: slow, not gone
    calls, fn = failing(*[ReadTimeoutError(endpoint_url="http://x")] * 5)
    with pytest.raises(Offline):
        store._call("HeadObject s3://b/k", fn)
    assert calls[0] == retry.REQUESTS.slow_attempts


def test_a_timeout_with_s3_silent_to_a_probe_is_offline_at_once(tmp_path: Path) -> None:
    """A black hole: the first timeout asks S3 whether it answers at all; it does not (the
    probe finds nothing on the port), so the link goes offline after one attempt."""
    store = offline_store(tmp_path)
    calls, fn = failing(*[ReadTimeoutError(endpoint_url="http://x")] * 5)
    with pytest.raises(Offline):
        store._call("HeadObject s3://b/k", fn)
    assert calls[0] == 1 and not store.link.online


def test_unreachable_is_offline_at_once(tmp_path: Path) -> None:
    store = offline_store(tmp_path)
    calls, fn = failing(EndpointConnectionError(endpoint_url="http://x"))
    with pytest.raises(Offline):
        store._call("PutObject s3://b/k", fn)
    assert calls[0] == 1 and not store.link.online
    with pytest.raises(Offline):  # fails fast while offline: nothing is sent
        store._call("PutObject s3://b/k", fn)
    assert calls[0] == 1


def test_a_retried_create_on_a_server_without_upload_times_aborts_nothing(
        tmp_path: Path, moto_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto stamps every upload Initiated 2010-11-10: the lost upload cannot be told from
    another client's, and is left to the lifecycle rule (tests/test_lost_create.py: on
    SeaweedFS, whose times are real, it is aborted)."""
    bucket = f"lost-{os.getpid()}"
    s3 = moto_backend.client
    s3.create_bucket(Bucket=bucket)
    keys = KeyPair(moto_backend.access_key, moto_backend.secret_key)
    store = S3Store(Config(endpoint_url=moto_backend.endpoint, region="us-east-1",
                           addressing_style="path", read_keys=keys, write_keys=keys,
                           cache_dir=tmp_path))
    create = store.write_client.create_multipart_upload
    answers = [0]

    def answer_lost_once(**kwargs: Any) -> Any:
        resp = create(**kwargs)  # S3 creates it ...
        answers[0] += 1
        if answers[0] == 1:      # ... but its answer never arrives
            raise client_error("SlowDown", 503)
        return resp
    monkeypatch.setattr(store.write_client, "create_multipart_upload", answer_lost_once)
    upload_id = store.create_multipart_upload(bucket, "big.bin")
    listed = [(u["Key"], u["UploadId"]) for u in
              s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert answers[0] == 2 and len(listed) == 2 and ("big.bin", upload_id) in listed
    for _, upload in listed:
        store.abort_multipart_upload(bucket, "big.bin", upload)
