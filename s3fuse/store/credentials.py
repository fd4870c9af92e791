"""Credentials of a mount beyond botocore's defaults: an assumed role refreshed ahead in a
thread of its own, credential-provider failures told in one line with what fixes them,
and the check at start that the credentials can be loaded at all.

Why: botocore refreshes a role's credentials in the thread that signs a request. In its
advisory window (the credentials still valid for minutes) a black-holed STS then held
that request for the STS timeouts, past the read's 2 s first-byte deadline, and the link
went offline while S3 answered. And a provider that fails (a credential_process printing
garbage, an SSO profile never logged in, credentials handed out already expired) let the
mount start and answer EIO "RuntimeError" or "SSOTokenLoadError" on every request, or
died with a traceback.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, Callable

import botocore.credentials
import botocore.exceptions

log = logging.getLogger(__name__)

#: Seconds between two attempts to refresh ahead (an STS that refuses at once is not
#: asked on every request of the advisory window).
AHEAD_RETRY = 10.0
#: How long the start waits for the credentials to load: a provider that needs the
#: network (SSO, a profile's role) and gets no answer does not hold the start longer
#: (the mount then starts, offline if need be, as without the check).
LOAD_TIMEOUT = 5.0
#: What botocore says when a provider handed out credentials that are already expired.
STILL_EXPIRED = "refreshed credentials are still expired"
#: Credential-provider errors that are not BotoCoreErrors (a credential_process that
#: prints no JSON raises the decoder's error through botocore).
PROVIDER_ERRORS = (botocore.exceptions.BotoCoreError, json.JSONDecodeError, RuntimeError,
                   KeyError, ValueError)


class RoleCredentials(botocore.credentials.RefreshableCredentials):
    """RefreshableCredentials that refresh in a thread of their own during the advisory
    window (the signing thread keeps the current, still valid, credentials); only in the
    mandatory window (the credentials about to expire) does signing wait, as botocore's."""

    _ahead: threading.Thread | None = None
    _ahead_tried = -float("inf")

    def _refresh(self) -> None:
        if self.refresh_needed(self._mandatory_refresh_timeout):
            super()._refresh()  # nothing valid left to sign with: wait for STS
        elif self.refresh_needed(self._advisory_refresh_timeout):
            self._refresh_ahead()

    def _refresh_ahead(self) -> None:
        """Start the background refresh unless one runs or one failed moments ago."""
        with _AHEAD_LOCK:
            if self._ahead is not None and self._ahead.is_alive():
                return
            if time.monotonic() - self._ahead_tried < AHEAD_RETRY:
                return
            self._ahead_tried = time.monotonic()
            self._ahead = threading.Thread(target=self._refresh_in_background,
                                           name="s3fuse-sts-refresh", daemon=True)
            self._ahead.start()

    def _refresh_in_background(self) -> None:
        if not self._refresh_lock.acquire(False):  # a mandatory refresh is under way
            return
        try:
            if not self.refresh_needed(self._advisory_refresh_timeout):
                return
            try:
                data = self._refresh_using()
                self._set_from_data(data)
                self._publish_refresh()
            except Exception as exc:  # noqa: BLE001 - the current credentials stay in use
                log.warning("refreshing the role's credentials ahead of time failed (%s); "
                            "the current ones are used until %s", exc,
                            self._expiry_time.isoformat() if self._expiry_time else "they expire")
            finally:
                self._staged_expiry_time = None
        finally:
            self._refresh_lock.release()


_AHEAD_LOCK = threading.Lock()


def one_line(text: str, limit: int = 300) -> str:
    """`text` (a provider's or STS's message) on one line: whitespace runs, newlines
    included, become one space; at most `limit` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def credential_problem(exc: BaseException, profile: str | None = None) -> str | None:
    """One line saying what is wrong with the credentials and what fixes it, when `exc`
    is a credential provider's failure; None for anything else."""
    name = f" --profile {profile}" if profile else ""
    if isinstance(exc, (botocore.exceptions.SSOTokenLoadError,
                        botocore.exceptions.UnauthorizedSSOTokenError)):
        return f"no valid AWS SSO login: run `aws sso login{name}`"
    if isinstance(exc, botocore.exceptions.SSOError):
        return f"AWS SSO failed ({one_line(str(exc))}): run `aws sso login{name}`"
    if isinstance(exc, json.JSONDecodeError):
        return (f"the credential_process of {f'profile {profile}' if profile else 'the profile'} "
                "printed no JSON credentials: run it yourself to see what it prints")
    if isinstance(exc, RuntimeError) and STILL_EXPIRED in str(exc):
        return ("the credentials provider handed out credentials that have already expired "
                "(a credential_process or cache returning an old Expiration): renew them")
    if isinstance(exc, botocore.exceptions.CredentialRetrievalError):
        return f"cannot load the credentials: {one_line(str(exc))}"
    if isinstance(exc, (botocore.exceptions.PartialCredentialsError,
                        botocore.exceptions.InvalidConfigError)):
        return f"invalid credentials configuration: {one_line(str(exc))}"
    return None


class ProviderSilent(Exception):
    """The session's credentials provider gave no answer in time (a hung credential_process)."""


def _bounded(call: Callable[[], object], timeout: float) -> tuple[bool, BaseException | None]:
    """Run `call` in a daemon thread for at most `timeout` seconds: (finished, its error).
    A daemon thread: a provider still waiting must not hold the exit of `s3fuse mount`
    (whose background daemon loads the credentials again)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the caller's to judge; never echoed here
            failure.append(exc)
    thread = threading.Thread(target=run, name="s3fuse-creds", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), (failure[0] if failure else None)


def resolve_in_time(session: Any, profile: str | None, timeout: float = LOAD_TIMEOUT) -> None:
    """Resolve `session`'s credentials (botocore keeps them for its clients) in a thread
    of its own, for at most `timeout` seconds. botocore resolves them as the first client
    is made, and runs a credential_process (or asks the instance metadata) right then:
    one that hung held `s3fuse mount` for good. Its error is raised here, as making the
    client would have; ProviderSilent when it gives no answer in time."""
    finished, failure = _bounded(session.get_credentials, timeout)
    if not finished:
        name = f"profile {profile!r}" if profile else "the default profile"
        raise ProviderSilent(f"the credentials provider of {name} gave no answer within "
                             f"{timeout:g}s (a credential_process that does not return?): "
                             "run it yourself to see what it does")
    if failure is not None:
        raise failure


def load_problem(creds: Any, profile: str | None, timeout: float = LOAD_TIMEOUT) -> str | None:
    """At start: can `creds` (botocore's, already resolved) give frozen credentials? The
    line of credential_problem when not; None when they can, when only the network is
    missing (the mount starts offline as before), or when it takes longer than `timeout`
    (a provider asking a silent network: it goes on in its thread, and the first request
    waits for it as before). Local failures (a missing SSO token, a process's output,
    credentials already expired) come at once, before any network is asked."""
    if creds is None:
        return None
    finished, failure = _bounded(creds.get_frozen_credentials, timeout)
    if not finished:
        log.info("the credentials did not load within %gs; the mount starts anyway", timeout)
        return None
    if failure is None:
        return None
    problem = credential_problem(failure, profile)
    if problem is None:
        log.info("the credentials could not be loaded yet (%s); the mount starts anyway",
                 type(failure).__name__)
    return problem
