"""The one retry policy of the S3 boundary: which failures are worth another attempt, how
many attempts, and how long to wait between them.

Three callers use it, and before this module each had rules of its own: the presigned
GET and listing path (store/presigned.py), every botocore request (store/s3.py, whose
clients have botocore's own retries turned off) and the upload queue, whose jobs are
retried without limit, across restarts (upload/queue.py).

| caller                        | attempts  | may end in a timeout | backoff, full jitter   |
|-------------------------------|-----------|----------------------|------------------------|
| object GETs, listings (GETS)  | 10        | 3                    | 50 ms doubling, <= 2 s |
| other S3 requests (REQUESTS)  | 5         | 3                    | 50 ms doubling, <= 2 s |
| upload jobs (UPLOADS)         | unlimited | -                    | 1 s doubling, <= 300 s |

What one failed request is worth (`Verdict`, decided by the caller's judge from its
library's exception; S3's answers by `answered`):
- no connection at all: STOP, the caller raises Offline at once (the link then fails
  fast until its probe succeeds; an upload waits without counting an attempt);
- no answer in time, or a body trickling in: SLOW, at most `slow_attempts` of them,
  so a black-holed endpoint fails after a bounded time; and when the caller can ask
  whether S3 answers at all (`alive`, a probe with short deadlines) and it does not,
  Offline at once: a black hole costs one first-byte deadline and one probe, not
  three timeouts;
- a connection reset, a truncated body: RETRY;
- S3 answered 429 or 5xx (but 501), or a throttling/timeout code: RETRY;
- any other answer (403, 404, 412, other 4xx, 501): STOP.

An upload job that failed is then `is_permanent` (kept as failed until `sync --retry`)
or retried later with UPLOADS' backoff: besides the above, a few answers that a new
attempt of the whole job can get past (NoSuchUpload, BadDigest, ExpiredToken, ...)
are transient for a job although retrying the same request would not help.
"""
from __future__ import annotations

import enum
import itertools
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import AccessDenied, Offline, S3FuseError, StaleObject

log = logging.getLogger(__name__)
T = TypeVar("T")

#: HTTP statuses that a new attempt of the same request may get past.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: S3 error codes that a new attempt of the same request may get past (whatever the status).
RETRY_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "SlowDown",
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequests",
    "TooManyRequestsException", "RequestThrottled", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "InternalError", "ServiceUnavailable",
})
#: Codes worth another attempt of a whole upload job although S3 answers them with a 4xx.
JOB_RETRY_CODES = RETRY_CODES | frozenset({
    "ExpiredToken", "RequestTimeTooSkewed", "OperationAborted", "ConditionalRequestConflict",
    "NoSuchUpload", "BadDigest", "IncompleteBody",
})


class Verdict(enum.Enum):
    RETRY = "retry"  # try again after a backoff
    SLOW = "slow"    # like RETRY, but a timeout: at most `slow_attempts` of them
    STOP = "stop"    # raise at once


@dataclass(frozen=True, slots=True)
class Policy:
    attempts: int | None  # None: without limit
    slow_attempts: int
    base: float
    cap: float

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry` (0 after the first failure): exponential
        backoff with full jitter, so that many clients failing together do not retry in
        lockstep (which is what keeps S3 saying SlowDown)."""
        return random.uniform(0.0, min(self.cap, self.base * 2.0 ** min(retry, 64)))


GETS = Policy(attempts=10, slow_attempts=3, base=0.05, cap=2.0)
REQUESTS = Policy(attempts=5, slow_attempts=3, base=0.05, cap=2.0)
UPLOADS = Policy(attempts=None, slow_attempts=1, base=1.0, cap=300.0)


def answered(code: str, status: int) -> Verdict:
    """What S3's error answer (its code, "" when unknown, and HTTP status) is worth."""
    return Verdict.RETRY if status in RETRY_STATUS or code in RETRY_CODES else Verdict.STOP


def call(what: str, attempt: Callable[[], T], judge: Callable[[Exception], Verdict],
         policy: Policy, on_retry: Callable[[int, Exception], None] | None = None,
         alive: Callable[[], bool] | None = None,
         failed: Callable[[str, Exception], None] | None = None) -> T:
    """attempt() until it returns, or its exception is judged STOP, or the policy's attempts
    (or slow attempts) run out: then that exception is raised. After a SLOW failure,
    `alive()` False (S3 answers nothing, not even a probe) raises Offline at once.
    Blocking (sleeps between attempts). Log lines name exception types only: some texts
    hold signed URLs. `failed(what, exc)` hears of each failed attempt (for metrics)."""
    slow = 0
    for number in itertools.count(1):
        try:
            return attempt()
        except Exception as exc:
            if failed is not None:
                failed(what, exc)
            verdict = judge(exc)
            if verdict is Verdict.SLOW and alive is not None and not alive():
                raise Offline(f"{what}: no answer from S3 in time, nor to a probe "
                              f"({type(exc).__name__})") from None
            slow += verdict is Verdict.SLOW
            if (verdict is Verdict.STOP
                    or (verdict is Verdict.SLOW and slow >= policy.slow_attempts)
                    or (policy.attempts is not None and number >= policy.attempts)):
                raise
            if on_retry is not None:
                on_retry(number, exc)
            log.debug("%s: attempt %d failed (%s), retrying", what, number, type(exc).__name__)
            time.sleep(policy.delay(number - 1))
    raise AssertionError("unreachable")  # itertools.count never ends


def tagged(error: S3FuseError, code: str, status: int) -> S3FuseError:
    """`error` carrying the S3 error code and HTTP status it stands for."""
    error.code, error.status = code, status
    return error


def error_code(error: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) behind an error a store raised; ("", 0) if none."""
    if isinstance(error, S3FuseError):
        return error.code, error.status
    return "", 0


def is_permanent(error: BaseException) -> bool:
    """For an upload job: True when retrying cannot help (access denied, bucket gone, KMS
    refused, a bad request, a server without the feature, a 409 conflict with what the key
    is: SeaweedFS's ExistingObjectIsFile for `d/` where a file `d` is, retried for hours).
    Unreachable, throttling, 5xx and the 409s a retry gets past (OperationAborted,
    ConditionalRequestConflict) are transient; 412 (StaleObject) is a conflict, which the
    uploader handles first."""
    if isinstance(error, (Offline, StaleObject)):
        return False
    code, status = error_code(error)
    if code.startswith("KMS.") or isinstance(error, AccessDenied):
        return True
    if code in JOB_RETRY_CODES:
        return False
    return (400 <= status < 500 and status not in (408, 429)) or status == 501
