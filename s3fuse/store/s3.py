"""The botocore `Store` (store/protocol.py) with its clients, credentials and error
mapping; object GETs and listings go through the presigned fast path of
store/presigned.py.

All methods are blocking; callers run them in worker threads. botocore clients are
thread-safe, sessions are not, so clients are built once here, from the slim session of
store/botosession.py (botocore alone: boto3 adds nothing a mount uses but memory).
botocore's own retries are off: every request is retried by the one policy of
store/retry.py.

Deadlines (docs/offline.md): connecting takes at most CONNECT_TIMEOUT; reads (HEAD,
listings, GETs, the probe) must see their response headers within FIRST_BYTE_TIMEOUT,
after which a body only has to keep arriving (`read_timeout` per socket read). A
request that got no answer in time asks S3 once, with the same short deadlines,
whether it answers at all (`_alive`): if not, the link goes offline at once. So a
black-holed endpoint (accepting, never answering) costs a few seconds once, not minutes
per request. Writes keep the long `read_timeout` for their answer: S3 answers a big PUT
or CompleteMultipartUpload only once it has the whole object.
"""
from __future__ import annotations

import email.utils
import functools
import io
import logging
import os
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence, TypeVar

import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.session
import botocore.utils
from botocore.exceptions import ClientError
from botocore.httpsession import get_cert_path

from ..config import Config, KeyPair, is_aws_endpoint
from ..util.daemonpool import DaemonPool
from ..util.oncelog import OnceLogger
from ..util.filerange import FileRange, PartBody, SourceReadError, body_length
from ..errors import (AccessDenied, CredentialsExpired, NotFound, Offline, RemoteError, S3FuseError,
                      StaleObject, UsageError)
from ..posix import with_foreign
from . import botosession, retry
from .copysources import CopySources, kept_headers, kept_of, other_headers
from .credentials import (PROVIDER_ERRORS, ProviderSilent, RoleCredentials, credential_problem,
                          load_problem, one_line, resolve_in_time)
from .link import Link
from .putsign import COPY, PUT, PutSigner, copy_etag
from .headbatch import PipelinedHeads
from . import listxml
from .listxml import FastPage
from .presigned import PresignedReader, Presigner, answer_error, document_code, parse_list_v2
from .protocol import (HeadsAnswered, ListPage, ObjectInfo, clean_etag, head_one_by_one,
                       required_etag)

__all__ = ["ListPage", "ObjectInfo", "S3Store", "clean_etag", "proxy_for", "translate"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that mean "could not connect to S3 at all": Offline at once, never retried.
UNREACHABLE_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ProxyConnectionError,
)
#: Errors that mean "could not talk to S3" (as opposed to S3 saying no).
NETWORK_ERRORS = UNREACHABLE_ERRORS + (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.HTTPClientError,
)
#: Body read failures botocore does not retry by itself.
TRUNCATION_ERRORS = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
)
#: S3's codes for a session whose token expired.
EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"})
PRESIGN_SECONDS = 3600
#: Copies of objects up to this size are sent as presigned PUTs (store/putsign.py): S3 may
#: take long to answer a big one, past the short first-byte deadline of that path.
FAST_COPY_LIMIT = 16 << 20
#: PutObject bodies up to this size are sent as presigned PUTs too: botocore's ~0.7 ms of
#: CPU per request more is felt with many small files, not beside a big body's transfer.
FAST_PUT_LIMIT = 128 << 10
CONNECT_TIMEOUT = 2.0  # an unreachable endpoint is noticed this fast (then: offline)
FIRST_BYTE_TIMEOUT = 2.0  # a read's response headers; then S3 is probed (black hole: offline)
READ_TIMEOUT = 30.0  # a body (or a write's answer) that stops arriving
#: The largest object one CopyObject copies (S3's limit); bigger ones: UploadPartCopy.
COPY_LIMIT = 5 << 30
#: Bytes per UploadPartCopy (S3 allows 5 MiB to 5 GiB, and at most MAX_PARTS parts).
COPY_PART_SIZE = 512 << 20
MAX_PARTS = 10_000
#: UploadPartCopy requests in flight for one multipart copy (S3 copies, we only wait).
COPY_CONCURRENCY = 8
#: Seconds before a retried create began that S3 may have stamped its lost upload with
#: (Date and Initiated have a second's resolution; see _abort_lost_creates).
LOST_CREATE_SLACK = 1.0


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 (listings) or HTTP dates (HEAD), with C parsers; botocore's as fallback."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return botocore.utils.parse_timestamp(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def sts_endpoint(session: Any, cfg: Config) -> str | None:
    """Where AssumeRole goes: the endpoint set for STS itself (`AWS_ENDPOINT_URL_STS`, a
    profile's `services` section), else the S3 endpoint when it is not AWS's (MinIO and
    Ceph serve STS there), else None: AWS's regional STS endpoint of the region (an AWS
    S3 endpoint, `https://s3.eu-west-1.amazonaws.com`, does not answer STS calls)."""
    own = botosession.service_endpoint(session, "sts")
    if own:
        return own
    if cfg.endpoint_url and not is_aws_endpoint(cfg.endpoint_url):
        return cfg.endpoint_url
    return None


def sts_client(session: Any, cfg: Config, keys: KeyPair | None, connect_timeout: float,
               read_timeout: float) -> Any:
    """The STS client that assumes the role, signed with `keys` when given (secrets.env's,
    s3exchange's), else with the session's credentials. STS gets the timeouts of S3's
    requests and two attempts: a black-holed STS held the start for minutes with
    botocore's defaults."""
    endpoint = sts_endpoint(session, cfg)
    kwargs: dict[str, Any] = {"endpoint_url": endpoint} if endpoint else {}
    if keys is not None:
        kwargs.update(aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key)
    region = cfg.region or session.get_config_variable("region") or "us-east-1"
    return session.create_client("sts", region_name=region, config=botocore.config.Config(
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": 2},
        # no endpoint of ours: AWS's STS, never a global AWS_ENDPOINT_URL (S3's)
        ignore_configured_endpoint_urls=endpoint is None), **kwargs)


def assumed_role_credentials(session: Any, cfg: Config, connect_timeout: float = CONNECT_TIMEOUT,
                             read_timeout: float = FIRST_BYTE_TIMEOUT,
                             keys: KeyPair | None = None) -> RoleCredentials:
    """STS AssumeRole credentials (the call signed with `keys`, else with the session's
    credentials) that refresh themselves well before they expire.

    (magnus assumes a role once and never refreshes; a mount lives longer than a session.)
    The refresh margins scale with the session: a third of it before expiry, refresh in
    a background thread (requests keep signing with the valid credentials:
    store/credentials.py); a sixth before, refresh before the next request.

    STS unreachable at the start (the train, a lab without Wi-Fi) does not stop the mount:
    it starts with credentials already expired, so every request asks STS first and fails
    as offline until STS answers, and the cache serves meanwhile, as without a role. A
    refusal (a wrong role, no right to assume it) still fails the start.
    """
    sts = sts_client(session, cfg, keys, connect_timeout, read_timeout)

    def refresh() -> dict[str, str]:
        try:
            resp = sts.assume_role(RoleArn=cfg.role_arn, RoleSessionName=f"s3fuse-{os.getpid()}",
                                   DurationSeconds=cfg.role_session_duration)
        except Exception as exc:  # noqa: BLE001 - translated; never echo credentials
            raise translate(exc, f"AssumeRole {cfg.role_arn}", service="STS") from None
        c = resp["Credentials"]
        log.info("assumed role %s until %s", cfg.role_arn, c["Expiration"].isoformat())
        return {"access_key": c["AccessKeyId"], "secret_key": c["SecretAccessKey"],
                "token": c["SessionToken"], "expiry_time": c["Expiration"].isoformat()}

    try:
        first = refresh()
    except Offline as exc:
        log.warning("%s; the mount starts offline and assumes the role once STS answers", exc)
        first = {"access_key": "", "secret_key": "", "token": "",
                 "expiry_time": "1970-01-01T00:00:00+00:00"}
    creds = RoleCredentials.create_from_metadata(
        metadata=first, refresh_using=refresh, method="sts-assume-role")
    creds._advisory_refresh_timeout = cfg.role_session_duration // 3
    creds._mandatory_refresh_timeout = cfg.role_session_duration // 6
    return creds


def profile_name(cfg: Config) -> str | None:
    """The AWS profile in use: --profile, else the one AWS_PROFILE names (as botocore
    takes it), else None (the default profile)."""
    return cfg.profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")


def no_credentials(cfg: Config) -> str:
    """The line for a start without credentials: never suggests what was given."""
    profile = profile_name(cfg)
    if profile:
        return (f"AWS profile {profile!r} has no credentials (aws_access_key_id, "
                "credential_process, sso_* or role_arn in ~/.aws/config or ~/.aws/credentials)"
                f"{unreadable_aws_files()}")
    return ("no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --profile, "
            f"or --secrets-env){unreadable_aws_files()}")


def proxy_for(url: str) -> str | None:
    """The HTTP(S)_PROXY botocore would use for `url` (NO_PROXY respected), or None."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


#: The prefix of user metadata headers (boto3 gives them without it, as `Metadata`).
META = "x-amz-meta-"


def _mtime_ns(value: datetime | None) -> int:
    return int(value.timestamp() * 1e9) if value else 0


def _parse_page(body: bytes) -> FastPage | dict[str, Any]:
    """A ListObjectsV2 page by listxml, or by ElementTree when listxml cannot read it."""
    try:
        return listxml.parse(body)
    except (ValueError, UnicodeDecodeError) as exc:
        log.debug("listing page read by ElementTree: %s", exc)
        return parse_list_v2(body)


@functools.lru_cache(maxsize=256)
def _iso_ns(text: str) -> int:
    """A listing's LastModified in ns (objects written together share theirs)."""
    return _mtime_ns(parse_timestamp(text)) if text else 0


def _fast_page(bucket: str, page: FastPage) -> ListPage:
    """listxml's page as a ListPage (a size no file can have: hidden, as `_listed` does)."""
    objects = []
    for key, size, modified, etag in page.objects:
        if size.isdigit() and size.isascii() and len(size) < 19:  # < 10**18: a file's size
            objects.append(ObjectInfo(key, int(size), _iso_ns(modified), etag.strip('"')))
        else:
            info = _listed(bucket, {"Key": key, "Size": size, "LastModified": modified,
                                    "ETag": etag})
            if info is not None:
                objects.append(info)
    return ListPage(page.prefixes, objects)


def _listed(bucket: str, obj: Mapping[str, Any]) -> ObjectInfo | None:
    """A listed object; None (hidden, logged) when its Size is no size a file can have."""
    try:
        size = object_size(obj.get("Size"), f"s3://{bucket}/{obj['Key']}")
    except RemoteError as exc:
        log.warning("hiding %s", exc)
        return None
    modified = obj.get("LastModified")  # boto3's datetime, or the text of a page read here
    return ObjectInfo(obj["Key"], size,
                      _iso_ns(modified) if isinstance(modified, str) else _mtime_ns(modified),
                      clean_etag(obj.get("ETag")))


def _info(key: str, headers: Mapping[str, str]) -> ObjectInfo:
    """What the headers of a HEAD or GET answer say of an object."""
    return info_of(key, {name.lower(): value for name, value in headers.items()})


#: The largest object size taken from S3 (st_size, offsets and SQLite hold int64): a
#: bigger Content-Length or listing Size is a broken or hostile endpoint's.
MAX_OBJECT_SIZE = (1 << 63) - 1


def object_size(value: object, what: str) -> int:
    """A Content-Length or a listing's Size, checked; RemoteError (naming `what`) when
    it is not a size a file can have."""
    try:
        size = int(value or 0)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise RemoteError(f"{what}: size {str(value)[:40]!r} is not a number") from None
    if not 0 <= size <= MAX_OBJECT_SIZE:
        raise RemoteError(f"{what}: size {size} is beyond what a file can have")
    return size


def info_of(key: str, headers: Mapping[str, str]) -> ObjectInfo:
    """_info of headers whose names are lower case (store/headbatch.py gives them so: a
    cold `ls -l` reads a thousand answers); RemoteError when their size is no size, or
    when they carry no ETag (required_etag)."""
    modified = headers.get("last-modified")
    return ObjectInfo(
        key, object_size(headers.get("content-length"), f"object {key}"),
        _http_date_ns(modified) if modified else 0,
        required_etag(headers.get("etag"), f"object {key}"),
        {name[len(META):]: value for name, value in headers.items() if name.startswith(META)},
        headers.get("content-type"))


@functools.lru_cache(maxsize=256)
def _http_date_ns(text: str) -> int:
    """An HTTP date in ns (objects written together share their Last-Modified second)."""
    return _mtime_ns(email.utils.parsedate_to_datetime(text))


def translate(exc: BaseException, what: str, service: str = "S3") -> Exception:
    """Map a botocore exception to one of errors.py, never leaking credentials. `service`
    names who answered (or did not): "STS" for AssumeRole, whose error messages say what
    is wrong (a session duration over the role's maximum) and are kept."""
    if isinstance(exc, S3FuseError):  # already ours (the presigned path): keep its message
        return exc
    if isinstance(exc, SourceReadError):  # the file being sent, not S3 (botocore's are OSErrors too)
        return exc
    if isinstance(exc, ClientError):
        return _answered_error(exc, what, service)
    if isinstance(exc, TRUNCATION_ERRORS):  # before NETWORK_ERRORS: it subclasses HTTPClientError
        return RemoteError(f"{what}: truncated response body")
    if isinstance(exc, NETWORK_ERRORS):
        # the URL names what is unreachable: STS refreshing a profile's role is not S3
        url = urllib.parse.urlsplit(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
        where = (f"{type(exc).__name__}: {url.scheme}://{url.hostname}"
                 f"{'' if url.port is None else f':{url.port}'}" if url.hostname
                 else type(exc).__name__)
        if (url.hostname or "").startswith("sts."):
            service = "STS"
        return Offline(f"{what}: {service} unreachable ({where})")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AccessDenied(f"{what}: no credentials")
    if isinstance(exc, botocore.exceptions.ParamValidationError):  # never sent: no retry helps
        return retry.tagged(RemoteError(f"{what}: refused before sending: "
                                        f"{one_line(str(exc))[:200]}"), "InvalidRequest", 400)
    problem = credential_problem(exc)
    if problem is not None:  # a provider failing while refreshing (an SSO login expired)
        return AccessDenied(f"{what}: {problem}")
    return RemoteError(f"{what}: {type(exc).__name__}")


def _answered_error(exc: ClientError, what: str, service: str) -> S3FuseError:
    """The error of S3's (or STS's) error answer, as for one signed here (answer_error)."""
    code, status = _client_error(exc)
    said = ""
    if service != "S3":  # STS's messages explain; S3's may quote request details
        message = one_line(str(exc.response.get("Error", {}).get("Message", "")))
        said = f": {message}" if message else ""
    return answer_error(what, status, code, service=service, said=said)


def _small_body(body: bytes | BinaryIO, start: int) -> bytes | None:
    """The bytes of a PutObject body (from `start` of a file) when it is small enough to
    be sent signed here (FAST_PUT_LIMIT), else None. A local file, read in this thread."""
    if isinstance(body, bytes):
        return body if len(body) <= FAST_PUT_LIMIT else None
    try:
        size = os.fstat(body.fileno()).st_size - start
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    if size > FAST_PUT_LIMIT:
        return None
    data = body.read(FAST_PUT_LIMIT + 1)
    body.seek(start)
    return data if len(data) <= FAST_PUT_LIMIT else None


def _client_error(exc: ClientError) -> tuple[str, int]:
    return (str(exc.response.get("Error", {}).get("Code", "")),
            int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0))


def judge(exc: Exception) -> retry.Verdict:
    """What a failed botocore request is worth (store/retry.py decides for S3's answers).
    Our own errors (the presigned path's) were retried where they were raised."""
    if isinstance(exc, ClientError):
        return retry.answered(*_client_error(exc))
    if isinstance(exc, TRUNCATION_ERRORS):  # before NETWORK_ERRORS: it subclasses HTTPClientError
        return retry.Verdict.RETRY
    if isinstance(exc, UNREACHABLE_ERRORS):
        return retry.Verdict.STOP
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return retry.Verdict.SLOW
    if isinstance(exc, NETWORK_ERRORS):
        return retry.Verdict.RETRY
    return retry.Verdict.STOP


def unreadable_aws_files() -> str:
    """Why a profile may seem missing: botocore reads an AWS config or credentials file it
    may not open as empty, so a file of the wrong owner or mode showed as "profile not
    found". Names the files this user cannot read ("" when none)."""
    unread = []
    for variable, default in (("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
                              ("AWS_CONFIG_FILE", "~/.aws/config")):
        path = Path(os.environ.get(variable) or default).expanduser()
        if path.exists() and not os.access(path, os.R_OK):
            unread.append(str(path))
    return f" (cannot read {', '.join(unread)}: check its owner and mode)" if unread else ""


class S3Store:
    """Blocking S3 access for one mount: a read client and a write client."""

    def __init__(self, cfg: Config, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT, link: Link | None = None,
                 page_size: int = 1000, first_byte_timeout: float = FIRST_BYTE_TIMEOUT):
        self.cfg = cfg
        self.link = link or Link()
        self.page_size = page_size  # keys and prefixes per ListObjectsV2 page
        first_byte = min(first_byte_timeout, read_timeout)
        self._first_byte = first_byte
        self._alive_lock = threading.Lock()
        self._answered_at = -float("inf")  # when S3 last answered an `_alive` probe
        core = botosession.session(cfg.profile or None, cfg.region)
        # dateutil parses every LastModified in a listing; this is the hot part of `find`.
        core.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=parse_timestamp)
        self._session = core
        self._once = OnceLogger(log)
        if cfg.read_keys is None:  # the session's: a provider that hangs must not hold us
            resolve_in_time(core, profile_name(cfg))
        read_role, write_role = self._roles(core, connect_timeout, first_byte)
        bcfg = botocore.config.Config(
            signature_version="s3v4",
            connect_timeout=connect_timeout,
            read_timeout=first_byte,  # reads: small answers (HEAD, listings, the probe)
            # one attempt: `_call` retries by the policy of store/retry.py (REQUESTS: 5
            # attempts, so HEADs and listing fallbacks fail one in 3,000 in a 20% error storm)
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=64,
            s3={"addressing_style": cfg.addressing_style},
            tcp_keepalive=True,
            # no CRC32 of every upload in Python (SigV4 or TLS already protects the bytes),
            # and no checksum headers that S3-compatible servers may reject
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.read_client = self._client(core, bcfg, cfg.read_keys, read_role)
        # writes wait for their answer as long as a body may stall (S3 answers a PUT once
        # it has the whole body): their own client, also when they use the read keys
        self.write_client = self._client(core, bcfg.merge(botocore.config.Config(
            read_timeout=read_timeout)), cfg.write_keys or cfg.read_keys, write_role)
        if read_role is not None:
            core._credentials = read_role  # what the session's credentials are
        #: Do the credentials renew themselves (a role, SSO, a credential_process)? Else
        #: an expired session is a permanent failure (_failed).
        self._renewable = any(isinstance(self.credentials(c), botocore.credentials.RefreshableCredentials)
                              for c in (self.read_client, self.write_client))
        self._presigner = Presigner(self.read_client, PRESIGN_SECONDS)
        self._signed_puts = PutSigner(self.write_client,
                                      Presigner(self.write_client, PRESIGN_SECONDS), PRESIGN_SECONDS)
        self._ca_certs = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
        self._connect_timeout = connect_timeout
        self._proxied = proxy_for(self.read_client.meta.endpoint_url) is not None
        self._outcomes: Counter[tuple[str, str]] = Counter()  # (operation, status) -> requests
        self._bytes: Counter[str] = Counter()                  # "in"/"out" -> bytes of objects
        self._fast = PresignedReader(
            self._presign_get, connect_timeout=connect_timeout, read_timeout=read_timeout,
            first_byte_timeout=first_byte, alive=self._alive, ca_certs=self._ca_certs,
            proxy_url=proxy_for(self.read_client.meta.endpoint_url),
            answered=self._outcome, failed=self._attempt_failed)
        self._heads: dict[str, PipelinedHeads] = {}  # per origin
        self.copy_sources = CopySources()  # what a REPLACE copy sends again, per version

    def _presign_get(self, bucket: str, key: str) -> str:
        return self._presigner.get_url(bucket, key)

    def fast_path(self, bucket: str) -> bool:
        """Are GETs and listings of `bucket` signed here (see store/presigned.py), not by
        botocore? False means the slow path: botocore presigns every URL."""
        return self._presigner.signs(bucket)

    def _roles(self, core: Any, connect_timeout: float, first_byte: float
               ) -> tuple[RoleCredentials | None, RoleCredentials | None]:
        """The role's credentials for (reads, writes), None without --role-arn. The
        configured keys sign the AssumeRole: a secrets.env's download keys for the
        reads' session and its upload keys for the writes' (one session when there is
        one pair), so each key pair still signs only its own side (docs/configuration.md);
        without keys, the session's credentials (environment, profile) sign it."""
        cfg = self.cfg
        if not cfg.role_arn:
            return None, None
        read = assumed_role_credentials(core, cfg, connect_timeout, first_byte, cfg.read_keys)
        if cfg.write_keys is None or cfg.write_keys == cfg.read_keys:
            return read, read
        return read, assumed_role_credentials(core, cfg, connect_timeout, first_byte,
                                              cfg.write_keys)

    @staticmethod
    def credentials(client: Any) -> Any:
        """The credentials object `client` signs with (botocore's; None: unsigned)."""
        return getattr(getattr(client, "_request_signer", None), "_credentials", None)

    def _client(self, session: Any, bcfg: botocore.config.Config, keys: KeyPair | None,
                role: RoleCredentials | None = None) -> Any:
        """An S3 client signing with `role` (an assumed role's credentials), else `keys`,
        else the session's credentials. A client keeps the credentials object it was
        created with: the session's are set to `role` for the time of its creation only
        (the next client, say the read one after a write role's, gets its own)."""
        kwargs: dict[str, Any] = {"config": bcfg}
        if self.cfg.endpoint_url:
            kwargs["endpoint_url"] = self.cfg.endpoint_url
        if keys and role is None:
            kwargs["aws_access_key_id"] = keys.access_key
            kwargs["aws_secret_access_key"] = keys.secret_key
        if not session.get_config_variable("region") and not self.cfg.region:
            kwargs["region_name"] = "us-east-1"
        if role is None:
            return session.create_client("s3", **kwargs)
        previous, session._credentials = session._credentials, role
        try:
            return session.create_client("s3", **kwargs)
        finally:
            session._credentials = previous

    @classmethod
    def from_config(cls, cfg: Config) -> "S3Store":
        """Build the store, turning profile/credential problems into UsageError (one line):
        the credentials are loaded here, so that a credential_process printing garbage, an
        SSO profile not logged in or credentials already expired stop the start instead
        of answering EIO to every request of a mount that started."""
        unread = unreadable_aws_files()
        if unread and (cfg.read_keys is None or not cfg.endpoint_url):
            # botocore reads such a file as empty: the profile's endpoint_url gone, this
            # mount's requests (and credentials from elsewhere) went to AWS instead
            raise UsageError("an AWS file may name this mount's endpoint or credentials"
                             f"{unread}")
        try:
            store = cls(cfg, read_timeout=max(cfg.request_timeout, 0.5))
        except botocore.exceptions.ProfileNotFound:
            raise UsageError(f"AWS profile {profile_name(cfg)!r} not found"
                             f"{unreadable_aws_files()}") from None
        except S3FuseError as exc:  # AssumeRole refused or unreachable
            raise UsageError(f"cannot assume role {cfg.role_arn}: {exc}") from None
        except ProviderSilent as exc:
            raise UsageError(str(exc)) from None
        except PROVIDER_ERRORS as exc:
            problem = credential_problem(exc, profile_name(cfg))
            if problem is None and not isinstance(exc, botocore.exceptions.BotoCoreError):
                raise
            raise UsageError(problem or f"cannot configure S3 client: {one_line(str(exc))}") \
                from None
        creds = store.credentials(store.read_client)
        if creds is None:
            raise UsageError(no_credentials(cfg))
        problem = None if cfg.role_arn else load_problem(creds, profile_name(cfg))
        if problem is not None:
            raise UsageError(problem)
        return store

    # ------------------------------------------------------------ helpers

    def request_counts(self) -> dict[str, int]:
        """Requests sent per S3 operation since start (shown by `s3fuse status`)."""
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, operation: str) -> None:
        with self._counts_lock:
            self._counts[operation] += 1

    def traffic(self) -> dict[str, Any]:
        """For metrics: requests by (operation, outcome: the HTTP status, or the error when
        none came), and the bytes of object data received and sent."""
        with self._counts_lock:
            return {"requests": dict(self._outcomes), "bytes_in": self._bytes["in"],
                    "bytes_out": self._bytes["out"]}

    def _outcome(self, what: str, outcome: str) -> None:
        with self._counts_lock:
            self._outcomes[(what.split(" ", 1)[0], outcome)] += 1

    def _attempt_failed(self, what: str, exc: Exception) -> None:
        """A failed attempt, labelled by the HTTP status S3 gave, else by what went wrong."""
        status = _client_error(exc)[1] if isinstance(exc, ClientError) else \
            getattr(exc, "status", 0)
        self._outcome(what, str(status) if status else type(exc).__name__)

    def _moved(self, direction: str, count: int) -> None:
        with self._counts_lock:
            self._bytes[direction] += count

    def _call(self, what: str, fn: Callable[..., T], *,
              on_retry: Callable[[int, Exception], None] | None = None, **kwargs: Any) -> T:
        """fn(**kwargs), retried by the REQUESTS policy; errors translated (never leaked)."""
        self.link.check(what)
        operation = what.split(" ", 1)[0]

        def attempt() -> T:
            self._count(operation)
            return fn(**kwargs)
        try:
            result = retry.call(what, attempt, judge, retry.REQUESTS, on_retry, alive=self._alive,
                                failed=self._attempt_failed)
        except Exception as exc:  # noqa: BLE001 - translated, never leaked
            raise self._failed(translate(exc, what)) from None
        self.link.succeeded()
        status = result.get("ResponseMetadata", {}).get("HTTPStatusCode") \
            if isinstance(result, dict) else None
        self._outcome(what, str(status or 200))
        return result

    def _failed(self, error: Exception) -> Exception:
        """`error` of a request, told to the link: unreachable (offline), or refused (403:
        shown by `s3fuse status`, with the code and what was refused); made
        CredentialsExpired when S3 refused an expired session that nothing here can renew."""
        if isinstance(error, Offline):
            self.link.failed(str(error))
        elif isinstance(error, AccessDenied):
            self.link.refused(str(error))
        if isinstance(error, S3FuseError) and error.code in EXPIRED_CODES \
                and not isinstance(error, CredentialsExpired) and not self._renewable:
            return self._expired(error)
        return error

    def _expired(self, error: S3FuseError) -> S3FuseError:
        """CredentialsExpired for `error`: permanent (retrying is refused alike), EACCES,
        and one WARNING that says what to do."""
        self._once.warning("expired", "the session credentials expired (%s) and s3fuse cannot "
                              "renew them (a session token exported from `aws sts "
                           "assume-role` or an SSO export): remount with fresh credentials, "
                           "then `s3fuse sync --retry`", error.code)
        return retry.tagged(CredentialsExpired(
            f"{error}: the session credentials expired and cannot be renewed: remount with "
            "fresh credentials, then s3fuse sync --retry"), error.code, error.status)

    def _answers(self) -> bool:
        """One cheap request with the short deadlines: does S3 answer at all (even 403)?"""
        try:
            self.read_client.list_buckets()
        except Exception as exc:  # noqa: BLE001 - any answer from S3 (even 403) means reachable
            if isinstance(translate(exc, "probe"), Offline):
                return False
        return True

    def probe(self) -> bool:
        """One cheap request that ignores the link state: can we reach S3 at all?"""
        if not self._answers():
            return False
        self.link.succeeded()
        return True

    def check_link(self) -> bool:
        return self._alive()

    def _alive(self) -> bool:
        """Asked after a request got no answer in time: is S3 there at all (a slow request
        on a live link), or silent (a black hole: the link goes offline, False)? One probe
        at a time; its answer stands for the others timing out with it."""
        with self._alive_lock:
            if not self.link.online:
                return False
            if time.monotonic() - self._answered_at < self._first_byte:
                return True
            if self._answers():
                self._answered_at = time.monotonic()
                return True
            self.link.failed(f"no answer from S3 within {self._first_byte:g}s")
            return False

    # ------------------------------------------------------------ reads

    def list_buckets(self) -> list[str]:
        resp = self._call("ListBuckets", self.read_client.list_buckets)
        return [b["Name"] for b in resp.get("Buckets", [])]

    def list_pages(self, bucket: str, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        """ListObjectsV2 with `delimiter` ('' for every key below), one ListPage per response.

        The next page is asked for (in a thread of the listing's own) as soon as a page's
        continuation token is known, so the caller's work on a page overlaps S3's on the
        next: in a 100,000-key listing the two took about as long each, one after the other.
        """
        page, token = self._list_page(bucket, prefix, delimiter, None)
        if token is None:
            yield page
            return
        with ThreadPoolExecutor(1, thread_name_prefix="s3fuse-list") as ahead:
            while token is not None:
                following = ahead.submit(self._list_page, bucket, prefix, delimiter, token)
                try:
                    yield page
                except GeneratorExit:  # the caller gave up: so does the page in flight
                    following.cancel()
                    raise
                page, token = following.result()
        yield page

    def _list_page(self, bucket: str, prefix: str, delimiter: str,
                   token: str | None) -> tuple[ListPage, str | None]:
        """One ListObjectsV2 page and the token of the next (None: the last)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": self.page_size}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        resp = self._call(f"ListObjectsV2 s3://{bucket}/{prefix}", self._list_objects_v2,
                          **kwargs)
        if isinstance(resp, FastPage):
            return _fast_page(bucket, resp), (resp.token or None) if resp.truncated else None
        page = ListPage(
            prefixes=[p["Prefix"] for p in resp.get("CommonPrefixes", [])],
            objects=[info for info in (_listed(bucket, o) for o in resp.get("Contents", []))
                     if info is not None],
        )
        return page, (resp.get("NextContinuationToken") or None) if resp.get("IsTruncated") else None

    def _list_objects_v2(self, **kwargs: Any) -> FastPage | dict[str, Any]:
        """ListObjectsV2 through a presigned URL, read by listxml (ElementTree when the page
        is of another shape: see store/presigned.py); an answer other than a readable 200
        is asked again through boto3, for its error mapping. Transient failures were
        retried by the fast path: its errors are final."""
        params = {k: v for k, v in kwargs.items() if k != "Bucket"}
        url = self._presigner.list_url(kwargs["Bucket"], {**params, "EncodingType": "url"})
        resp = self._fast.list_v2(url, parse=_parse_page)
        if resp is None:
            return self.read_client.list_objects_v2(**kwargs)
        return resp

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """HeadObject through a presigned URL (see store/presigned.py); an answer other
        than 200 or 404 is asked again through boto3, for its error mapping."""
        return self._head(bucket, key)[0]

    def _head(self, bucket: str, key: str) -> tuple[ObjectInfo, dict[str, str]]:
        """head(), and the answer's headers a REPLACE copy sends again (copysources.py)."""
        what = f"HeadObject s3://{bucket}/{key}"
        self.link.check(what)
        self._count("HeadObject")
        try:
            status, headers = self._fast.head(what, self._presigner.head_url(bucket, key))
        except S3FuseError as exc:
            raise self._failed(exc) from None
        self.link.succeeded()
        if status == 404:
            raise retry.tagged(NotFound(f"{what}: not found"), "NoSuchKey", 404)
        if status == 400 and not self._renewable:
            self._refused_session(what, bucket, key)
        if status != 200:
            resp = self._call(what, self.read_client.head_object, Bucket=bucket, Key=key)
            raw = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            info = ObjectInfo(key, object_size(resp.get("ContentLength"), f"object {key}"),
                              _mtime_ns(resp.get("LastModified")),
                              required_etag(resp.get("ETag"), what),
                              dict(resp.get("Metadata") or {}), resp.get("ContentType"))
            kept = kept_headers(raw)
        else:
            info = _info(key, headers)
            kept = kept_headers(headers)
        self.copy_sources.learn(bucket, key, info.etag, kept)
        return info, kept

    def _refused_session(self, what: str, bucket: str, key: str) -> None:
        """A HEAD's 400 carries no error document to say why: a one-byte GET of the same
        key does. CredentialsExpired when it is an expired session (a stat, and the HEAD
        an upload sends first, failed "S3 error 400"); anything else is the HEAD's to tell."""
        try:
            self._fast.get(bucket, key, "", 0, 1)
        except S3FuseError as exc:
            if exc.code in EXPIRED_CODES:  # told as the HEAD's (`what`)
                raise self._failed(retry.tagged(RemoteError(f"{what}: S3 error {exc.code}"),
                                                exc.code, exc.status)) from None

    def head_many(self, bucket: str, keys: Sequence[str], answered: HeadsAnswered) -> None:
        """Pipelined HEADs (store/headbatch.py) when this bucket's URLs are signed here and
        no proxy is in the way; what they leave unanswered, and other answers than 200 and
        404, are asked again one by one through head()."""
        heads = self._pipelined(bucket)
        if heads is None or not keys or not self.link.online:
            head_one_by_one(self, bucket, keys, answered)
            return
        again: list[str] = []

        def arrived(answers: list[tuple[str, int, dict[str, str]]]) -> None:
            results: list[tuple[str, ObjectInfo | S3FuseError]] = []
            for key, status, headers in answers:
                self._count("HeadObject")
                self._outcome("HeadObject", str(status))
                if status == 200:
                    try:
                        info = info_of(key, headers)
                    except RemoteError as exc:  # unknown it stays: the defaults show
                        results.append((key, exc))
                    else:
                        results.append((key, info))
                        self.copy_sources.learn(bucket, key, info.etag, kept_headers(headers))
                elif status == 404:
                    results.append((key, retry.tagged(
                        NotFound(f"HeadObject s3://{bucket}/{key}: not found"), "NoSuchKey", 404)))
                else:  # an error, a redirect, a throttle: head() retries and maps it
                    again.append(key)
            self.link.succeeded()
            if results:
                answered(results)
        urls = [(key, self._presigner.head_url(bucket, key)) for key in keys]
        left = heads.run(urls, arrived)
        head_one_by_one(self, bucket, left + again, answered)

    def _pipelined(self, bucket: str) -> PipelinedHeads | None:
        """The pipelined HEADs of `bucket`'s origin; None: head() one by one (URLs signed
        by botocore, or an HTTP proxy that would see pipelined requests)."""
        origin = self._presigner.origin(bucket)
        if origin is None or self._proxied:
            return None
        with self._counts_lock:
            heads = self._heads.get(origin)
            if heads is None:
                heads = self._heads[origin] = PipelinedHeads(
                    origin, connect_timeout=self._connect_timeout,
                    first_byte_timeout=self._first_byte, ca_certs=self._ca_certs)
        return heads

    def get_whole(self, bucket: str, key: str, etag: str, limit: int) -> tuple[ObjectInfo, bytes]:
        what = f"GetObject s3://{bucket}/{key}"
        self.link.check(what)
        self._count("GetObject")
        try:
            status, headers, body = self._fast.get_whole(
                what, self._presigner.get_url(bucket, key), etag, limit)
        except S3FuseError as exc:
            raise self._failed(exc) from None
        self.link.succeeded()
        if status == 200:
            self._moved("in", len(body))
            return _info(key, headers), body
        raise self._failed(answer_error(what, status, document_code(body)))

    def iter_chunks(self, bucket: str, key: str, etag: str, size: int, chunk: int) -> Iterator[bytes]:
        """One version of an object in ranged chunks: streams big objects in bounded memory."""
        for start in range(0, size, chunk):
            yield self.get(bucket, key, etag, start, min(start + chunk, size))

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of one version of an object (If-Match etag).

        A truncated body is retried (botocore does not), and a short body is
        never returned: it is an error after the retries.
        """
        self.link.check(f"GetObject s3://{bucket}/{key}")
        self._count("GetObject")
        try:
            data = self._fast.get(bucket, key, etag, start, end)
        except S3FuseError as exc:
            raise self._failed(exc) from None
        self.link.succeeded()
        self._moved("in", len(data))
        return data

    # ------------------------------------------------------------ writes (s3fuse.upload)

    def _sse_args(self) -> dict[str, str]:
        """ServerSideEncryption/SSEKMSKeyId as configured, omitted when empty (as ezbatch does)."""
        args: dict[str, str] = {}
        if self.cfg.sse:
            args["ServerSideEncryption"] = self.cfg.sse
            if self.cfg.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.cfg.sse_kms_key_id
        return args

    @staticmethod
    def _condition_args(if_match: str | None, if_none_match: str | None) -> dict[str, str]:
        args: dict[str, str] = {}
        if if_match is not None:
            args["IfMatch"] = f'"{clean_etag(if_match)}"'
        if if_none_match is not None:
            args["IfNoneMatch"] = if_none_match
        return args

    @staticmethod
    def _object_args(content_type: str | None, metadata: Mapping[str, str] | None,
                     headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """ContentType, the other `headers` (boto3 names) and Metadata (user metadata,
        sent as given: posix.py's values are ASCII, percent-encoded where needed, and
        botocore does not re-encode them)."""
        args: dict[str, Any] = other_headers(headers)
        if content_type:
            args["ContentType"] = content_type
        if metadata:
            args["Metadata"] = dict(metadata)
        return args

    def headers_of(self, bucket: str, key: str, etag: str) -> dict[str, Any] | None:
        known = self.copy_sources.of(bucket, key, clean_etag(etag))
        if known is not None:
            return known
        try:
            info, kept = self._head(bucket, key)
        except NotFound:
            return None
        return kept if info.etag == clean_etag(etag) else None

    def put_object(self, bucket: str, key: str, body: bytes | BinaryIO, *,
                   content_type: str | None = None, if_match: str | None = None,
                   if_none_match: str | None = None,
                   metadata: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> str:
        """One PutObject with the configured SSE, user `metadata` and other `headers`
        (boto3 names of KEPT_HEADERS); returns the new ETag.

        `if_match` (an ETag) / `if_none_match` ("*") make it conditional: StaleObject on 412.
        """
        args = self._object_args(content_type, metadata, headers)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, **self._sse_args(),
                                  **self._condition_args(if_match, if_none_match), **args}
        what = f"PutObject s3://{bucket}/{key}"
        start = body.tell() if not isinstance(body, bytes) else 0
        small = _small_body(body, start)
        etag = None if small is None else self._put_signed_here(what, kwargs, small)
        if etag is None:
            def put(**params: Any) -> dict[str, Any]:
                if not isinstance(body, bytes):
                    body.seek(start)  # an attempt that failed may have read some of it
                return self.write_client.put_object(Body=body, **params)
            resp = self._call(what, put, **kwargs)
            self._moved("out", len(body) if isinstance(body, bytes) else body.tell() - start)
            etag = required_etag(resp.get("ETag"), what)
        self.copy_sources.learn(bucket, key, etag, kept_of(args))
        return etag

    def _put_signed_here(self, what: str, params: Mapping[str, Any], body: bytes) -> str | None:
        """PutObject as a presigned PUT (store/putsign.py): the new ETag; None when it is
        botocore's to send (a request shape not checked, see _send_signed_put)."""
        signed = self._signed_puts.request(PUT, params)
        if signed is None:
            return None
        url, headers = signed
        answer = self._send_signed_put(what, "PutObject", params["Bucket"], url, headers, body)
        if answer is None:
            return None
        self._moved("out", len(body))
        etag = clean_etag(answer[0].get("ETag"))
        if etag:
            return etag
        # Stored, but the answer named no ETag: ask for it. Sent again through botocore,
        # an If-None-Match PUT would meet its own object (412: a conflict with itself).
        # The HEAD must show an object of these bytes' size (required_etag: a portal's
        # answers carry none, and would have counted the bytes as uploaded).
        info = self.head(params["Bucket"], params["Key"])
        if info.size != len(body):
            raise RemoteError(f"{what}: answered without an ETag, and S3 holds "
                              f"{info.size} bytes there, not the {len(body)} sent")
        return info.etag

    def create_multipart_upload(self, bucket: str, key: str, *,
                                content_type: str | None = None,
                                metadata: Mapping[str, str] | None = None,
                                headers: Mapping[str, str] | None = None) -> str:
        """Start a multipart upload with the configured SSE (its object gets `metadata`
        and `headers`); returns its UploadId."""
        return self._create_multipart(bucket, key,
                                      self._object_args(content_type, metadata, headers))

    def _create_multipart(self, bucket: str, key: str, args: Mapping[str, Any]) -> str:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, **self._sse_args(), **args}
        retried: list[int] = []
        began = time.monotonic()
        resp = self._call(f"CreateMultipartUpload s3://{bucket}/{key}",
                          self.write_client.create_multipart_upload,
                          on_retry=lambda number, _: retried.append(number), **kwargs)
        upload_id = str(resp["UploadId"])
        if retried:
            answered = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
            self._abort_lost_creates(bucket, key, upload_id, answered,
                                     time.monotonic() - began)
        return upload_id

    def _abort_lost_creates(self, bucket: str, key: str, upload_id: str,
                            answered: str | None, took: float) -> None:
        """The create was retried: an earlier attempt may have started an upload whose
        answer was lost. Nobody knows its UploadId, so it would be billed forever. Abort
        the other uploads of the key that S3 started while this create was being sent (by
        S3's own clock: the answer's Date, less the time the create took, less a second
        for Date's resolution); older ones, or any when the answer has no Date, are left
        (another client may be uploading the key: only recorded UploadIds, and these,
        are ever aborted)."""
        if not answered:
            return
        try:
            since = email.utils.parsedate_to_datetime(answered) - timedelta(
                seconds=took + LOST_CREATE_SLACK)
            others = [upload for upload, initiated in self._uploads_of(bucket, key)
                      if upload != upload_id and initiated >= since]
            for other in others:
                self.abort_multipart_upload(bucket, key, other)
                log.info("aborted a multipart upload of s3://%s/%s whose creation was retried",
                         bucket, key)
        except (S3FuseError, TypeError, ValueError) as exc:  # not a reason to fail this upload
            log.info("uploads left by a retried create of s3://%s/%s not aborted: %s",
                     bucket, key, exc)

    def _uploads_of(self, bucket: str, key: str) -> list[tuple[str, datetime]]:
        """(UploadId, Initiated) of the unfinished multipart uploads of exactly `key`."""
        return [(u["UploadId"], u["Initiated"]) for u in self._multipart_uploads(bucket, key)
                if u["Key"] == key]

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int,
                    body: PartBody) -> str:
        """Upload one part (numbered from 1; `body` in memory or streamed from a file);
        returns its ETag."""
        def send(**params: Any) -> dict[str, Any]:
            if not isinstance(body, FileRange):
                return self.write_client.upload_part(**params)
            body.seek(0)  # an attempt that failed may have read some of it
            try:
                return self.write_client.upload_part(**params)
            except Exception:
                if body.failed is not None:  # the file, not S3: not retried (translate)
                    raise body.failed from None
                raise
        what = f"UploadPart s3://{bucket}/{key} #{part_number}"
        resp = self._call(what, send, Bucket=bucket, Key=key, UploadId=upload_id,
                          PartNumber=part_number, Body=body)
        self._moved("out", body_length(body))
        return required_etag(resp.get("ETag"), what)

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                  part_etags: list[str], *, if_match: str | None = None,
                                  if_none_match: str | None = None) -> str:
        """Assemble parts 1..n (ETags in order); conditional like put_object. Returns the ETag."""
        parts = [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in enumerate(part_etags, 1)]
        what = f"CompleteMultipartUpload s3://{bucket}/{key}"
        resp = self._call(what, self.write_client.complete_multipart_upload, Bucket=bucket,
                          Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                          **self._condition_args(if_match, if_none_match))
        return required_etag(resp.get("ETag"), what)

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort a multipart upload; one that is already gone (or its bucket) is fine."""
        try:
            self._call(f"AbortMultipartUpload s3://{bucket}/{key}",
                       self.write_client.abort_multipart_upload, Bucket=bucket, Key=key,
                       UploadId=upload_id)
        except NotFound:
            pass

    def delete_object(self, bucket: str, key: str, *, if_match: str | None = None) -> None:
        """DeleteObject; a key that is already gone is fine (S3 answers 204 anyway). With
        `if_match` (an ETag) only that version is deleted: StaleObject on 412."""
        try:
            self._call(f"DeleteObject s3://{bucket}/{key}", self.write_client.delete_object,
                       Bucket=bucket, Key=key, **self._condition_args(if_match, None))
        except NotFound:
            pass

    def copy_object(self, bucket: str, source_key: str, key: str, etag: str, *,
                    metadata: Mapping[str, str] | None = None,
                    content_type: str | None = None, size: int = 0,
                    trust_condition: bool = False) -> str:
        """Server-side copy of the version `etag` of `source_key`, with the configured SSE;
        returns the new ETag. StaleObject if the source is another version.

        Without `metadata` a plain copy (S3 keeps the user metadata and content type);
        with it MetadataDirective REPLACE, which resets the content type and the other
        headers of KEPT_HEADERS: they are sent again (`content_type` overrides the type).
        They come from the source's HEAD, which also gives the size (callers may pass
        none: over COPY_LIMIT the copy goes in parts) and holds the condition on servers
        that ignore CopySourceIfMatch (its ETag must be `etag`, as boto3's own copy
        checked), which is sent anyway so that S3 checks it atomically. No HEAD with
        `trust_condition` (the server honours CopySourceIfMatch, and `size` is the
        source's) when this store has seen that version's headers (copysources.py)."""
        quoted = f'"{clean_etag(etag)}"'
        known = self.copy_sources.of(bucket, source_key, clean_etag(etag))
        if trust_condition and known is not None and size <= FAST_COPY_LIMIT:
            kept, user_metadata = known, None
        else:
            info, kept = self._head(bucket, source_key)
            if info.etag != clean_etag(etag):
                raise retry.tagged(StaleObject(f"CopyObject s3://{bucket}/{source_key}: "
                                               "object changed in S3"), "PreconditionFailed", 412)
            size, user_metadata = info.size, info.metadata
        if content_type:
            kept["ContentType"] = content_type
        foreign = kept.pop("Metadata", None) or {}
        if metadata is not None:
            metadata = with_foreign(metadata, foreign)
        if size > COPY_LIMIT:
            new_metadata = dict(user_metadata or {}) if metadata is None else metadata
            return self._copy_in_parts(bucket, source_key, key, quoted, size,
                                       {**kept, "Metadata": dict(new_metadata)})
        kwargs: dict[str, Any] = {"CopySource": {"Bucket": bucket, "Key": source_key},
                                  "Bucket": bucket, "Key": key, "CopySourceIfMatch": quoted,
                                  **self._sse_args()}
        if metadata is not None:
            kwargs.update(kept, Metadata=dict(metadata), MetadataDirective="REPLACE")
        what = f"CopyObject s3://{bucket}/{source_key} -> {key}"
        copied = self._copy_signed_here(what, kwargs) if size <= FAST_COPY_LIMIT else None
        if copied is None:
            resp = self._call(what, self.write_client.copy_object, **kwargs)
            copied = required_etag(resp.get("CopyObjectResult", {}).get("ETag"), what)
        if metadata is not None:  # a plain copy's headers are the source's, not known here
            self.copy_sources.learn(bucket, key, copied, kept_of({**kept, "Metadata": metadata}))
        return copied

    def _copy_signed_here(self, what: str, params: Mapping[str, Any]) -> str | None:
        """CopyObject as a presigned PUT (store/putsign.py): the new ETag; None when it
        is botocore's to send (a request shape not checked, an answer other than a
        CopyObjectResult, 412 or 404: botocore then retries it and maps its errors)."""
        signed = self._signed_puts.request(COPY, params)
        if signed is None:
            return None
        url, headers = signed
        answer = self._send_signed_put(what, "CopyObject", params["Bucket"], url, headers)
        return None if answer is None else copy_etag(answer[1])

    def _send_signed_put(self, what: str, operation: str, bucket: str, url: str,
                         headers: dict[str, str], body: bytes = b"") -> tuple[Any, bytes] | None:
        """Send a PUT signed here: the 200 answer's (headers, body). An error answer is
        the error botocore's would map to (its code read from the error document: 412 is
        StaleObject, 404 NotFound, a refused condition what the uploader recognises).
        None when botocore is to send it: attempts that failed (retried already), a
        redirect, a 403 (S3 does not take our signature: this bucket's writes are
        botocore's from now on)."""
        self.link.check(what)
        self._count(operation)
        try:
            status, answer_headers, answer = self._fast.put(what, url, headers, body)
        except Offline as exc:
            raise self._failed(exc) from None
        except RemoteError as exc:
            log.debug("%s: %s; asking through botocore", what, exc)
            return None
        self.link.succeeded()
        if status == 200:
            return answer_headers, answer
        if status == 403:
            self._signed_puts.distrust(bucket)
        if status == 403 or status < 400:
            return None
        error = ClientError({"Error": {"Code": document_code(answer)},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
        raise self._failed(translate(error, what))

    def _copy_in_parts(self, bucket: str, source_key: str, key: str, quoted: str, size: int,
                       args: Mapping[str, Any]) -> str:
        """A copy over COPY_LIMIT: CreateMultipartUpload (with `args`: metadata and kept
        headers), UploadPartCopy of each range, COPY_CONCURRENCY at a time, each
        conditional on the source's ETag, then CompleteMultipartUpload; aborted on any
        failure. Onto itself (a metadata change) the completion is conditional too: a
        remote write during the copy wins over the old bytes."""
        part = max(COPY_PART_SIZE, -(-size // MAX_PARTS))
        ranges = [(start, min(start + part, size) - 1) for start in range(0, size, part)]
        upload_id = self._create_multipart(bucket, key, args)
        pool = DaemonPool(COPY_CONCURRENCY, "s3fuse-copy")  # never joined at exit
        try:
            futures: list[Future[str]] = [
                pool.submit(self._copy_part, bucket, source_key, key, upload_id, number,
                            first, last, quoted)
                for number, (first, last) in enumerate(ranges, 1)]
            etags = [future.result() for future in futures]
            pool.shutdown()
            return self.complete_multipart_upload(
                bucket, key, upload_id, etags,
                if_match=quoted if source_key == key else None)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            self._abort_quietly(bucket, key, upload_id)
            raise

    def _copy_part(self, bucket: str, source_key: str, key: str, upload_id: str, number: int,
                   first: int, last: int, quoted: str) -> str:
        what = f"UploadPartCopy s3://{bucket}/{key} #{number}"
        resp = self._call(what, self.write_client.upload_part_copy, Bucket=bucket, Key=key,
                          UploadId=upload_id, PartNumber=number,
                          CopySource={"Bucket": bucket, "Key": source_key},
                          CopySourceRange=f"bytes={first}-{last}", CopySourceIfMatch=quoted)
        return required_etag(resp.get("CopyPartResult", {}).get("ETag"), what)

    def _abort_quietly(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort a failed multipart copy; if even that fails, say what is left behind."""
        try:
            self.abort_multipart_upload(bucket, key, upload_id)
        except S3FuseError as exc:
            log.warning("multipart copy to s3://%s/%s failed and its upload %s is left "
                        "unfinished (%s)", bucket, key, upload_id, exc)

    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> list[tuple[str, str]]:
        """(key, UploadId) of every unfinished multipart upload under `prefix`."""
        return [(u["Key"], u["UploadId"]) for u in self._multipart_uploads(bucket, prefix)]

    def _multipart_uploads(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        """ListMultipartUploads' entries under `prefix`, every page."""
        uploads: list[dict[str, Any]] = []
        markers: dict[str, str] = {}
        while True:
            resp = self._call(f"ListMultipartUploads s3://{bucket}/{prefix}",
                              self.write_client.list_multipart_uploads, Bucket=bucket,
                              Prefix=prefix, **markers)
            uploads += resp.get("Uploads", [])
            if not resp.get("IsTruncated"):
                return uploads
            markers = {"KeyMarker": resp.get("NextKeyMarker", ""),
                       "UploadIdMarker": resp.get("NextUploadIdMarker", "")}
