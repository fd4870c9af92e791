"""Which S3 a cache directory belongs to: recorded once, checked by every mount.

Why: the journal holds (bucket, key) and the caches key blocks, listings and manifest
indexes by (bucket, key, ETag), none of them by endpoint. A cache dir mounted against
another S3 would upload the first one's queued writes there, with the other's
credentials, and let that S3 plant blocks under the first one's (bucket, key, ETag).
So a cache dir records its identity in `identity.json`, and a mount for another
identity is refused (one line, exit 2) before anything in the cache is used.

An identity is what decides where a bucket name points to:
- the endpoint, canonical: `scheme://host[:port][/path]`, lowercase, without the
  default port, a trailing slash, user info, query or fragment. No endpoint (or an
  `*.amazonaws.com[.cn]` one) is AWS, identified by its partition (`aws:aws`,
  `aws:aws-cn`, `aws:aws-us-gov`, ...) from the region: AWS bucket names are global
  within a partition, so every region and every endpoint of one partition is one S3;
- the account, when the configuration names it (the account id in `role_arn`).
Not the access key: keys rotate, and the read and write keys of one secrets.env differ.

The default cache dir (none configured) is the documented `~/.cache/s3fuse` (root:
`/var/cache/s3fuse`) for the first identity that mounts with it, and `<that>/<slug>` for
every other one, so mounts of different endpoints with defaults are isolated without an
error. A cache dir from before identities (data, no identity.json) is adopted by the
first mount, which records its identity there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from ..config import Config, aws_partition_of_host, default_cache_dir, partition_of
from ..errors import UsageError
from ..printable import printable
from ..redact import redact_url
from ..util.atomic import write_atomically

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
MAX_FILE_BYTES = 8192
#: What a cache dir holds once a mount used it (an empty or missing dir is not "in use").
DATA_ENTRIES = ("journal.sqlite", "meta.sqlite", "blocks", "staging", "manifests", "pinned")
DEFAULT_PORTS = {"http": 80, "https": 443}
_ENDPOINT_RE = re.compile(r"^(aws:[a-z-]{1,32}|https?://[^\s]{1,2000})$")
_ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
_ROLE_RE = re.compile(r"^arn:(?P<partition>[a-z-]+):iam::(?P<account>[0-9]{12}):")


@dataclass(frozen=True)
class Identity:
    """The S3 a cache dir's data and queued writes belong to (see the module docstring)."""

    endpoint: str  # canonical URL, or "aws:<partition>"
    account: str | None = None

    def describe(self) -> str:
        """For messages: never credentials (an endpoint cannot carry them; redacted anyway)."""
        shown = printable(redact_url(self.endpoint) or "")  # one line, whatever the file holds
        return f"{shown} (account {self.account})" if self.account else shown

    @property
    def slug(self) -> str:
        """A directory name: the readable host part and a short hash of the whole identity."""
        readable = self.endpoint.split(":", 1)[1] if self.endpoint.startswith("aws:") \
            else self.endpoint.split("://", 1)[1].split("/", 1)[0]
        readable = re.sub(r"[^a-z0-9.-]+", "-", readable.lower()).strip(".-")[:40] or "s3"
        digest = hashlib.sha256(json.dumps([self.endpoint, self.account]).encode()).hexdigest()
        return f"{readable}-{digest[:10]}"

    def to_json(self) -> str:
        return json.dumps({"version": 1, "endpoint": self.endpoint, "account": self.account},
                          sort_keys=True) + "\n"


def canonical_endpoint(url: str | None, region: str | None = None,
                       role_partition: str | None = None) -> str:
    """Equivalent endpoints give one string: see the module docstring."""
    if not url:
        return f"aws:{partition_of(region) if region else role_partition or 'aws'}"
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".").lower()
    if scheme not in DEFAULT_PORTS or not host:
        raise UsageError(f"invalid endpoint URL {redact_url(url)!r} (expected http(s)://host[:port])")
    aws = aws_partition_of_host(host)
    if aws is not None:
        return f"aws:{aws}"
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"invalid port in endpoint URL {redact_url(url)!r}") from None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def identity_of(cfg: Config, environ: Mapping[str, str] | None = None) -> Identity:
    """The identity a configuration mounts. The region falls back to the environment's,
    as boto3's does (it only matters without an endpoint: it picks the partition)."""
    env = os.environ if environ is None else environ
    region = cfg.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    role = _ROLE_RE.match(cfg.role_arn or "")
    return Identity(canonical_endpoint(cfg.endpoint_url, region, role["partition"] if role else None),
                    role["account"] if role else None)


# ---------------------------------------------------------------- the file


def read_identity(cache_dir: Path) -> Identity | None:
    """The identity recorded in `cache_dir`, None when none is (a new or legacy cache)."""
    path = cache_dir / IDENTITY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with open(fd, "rb") as fh:
        raw = fh.read(MAX_FILE_BYTES + 1)
    try:
        data = json.loads(raw) if len(raw) <= MAX_FILE_BYTES else None
        endpoint, account = data["endpoint"], data["account"]
        if not (isinstance(endpoint, str) and _ENDPOINT_RE.match(endpoint)
                and (account is None or (isinstance(account, str) and _ACCOUNT_RE.match(account)))):
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise UsageError(f"{path} is not a valid cache identity: this cache dir's endpoint is "
                         "unknown; restore the file or use another --cache-dir") from None
    return Identity(endpoint, account)


def write_identity(cache_dir: Path, identity: Identity) -> None:
    """Record `identity`: 0600, atomically (a crash leaves the old file or the new one)."""
    write_atomically(cache_dir / IDENTITY_FILE, identity.to_json().encode(), 0o600, durable=True)


def has_cache_data(cache_dir: Path) -> bool:
    return any((cache_dir / name).exists() for name in DATA_ENTRIES)


def queued_uploads(cache_dir: Path) -> int | None:
    """How many uploads the journal of `cache_dir` holds (None: unknown). Read-only, with
    plain SQLite: the journal of another identity is never opened by the upload layer,
    so nothing in it is migrated, recovered or sent."""
    path = cache_dir / "journal.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        log.debug("cannot count the uploads queued in %s: %s", path, exc)
        return None


def check_identity(cache_dir: Path, identity: Identity) -> Identity | None:
    """Refuse (UsageError, one line) a cache dir recorded for another identity; returns
    the recorded one (None: not recorded yet). Reads only."""
    recorded = read_identity(cache_dir)
    if recorded is not None and recorded != identity:
        queued = queued_uploads(cache_dir)
        count = "an unknown number of" if queued is None else str(queued)
        raise UsageError(
            f"cache dir {cache_dir} belongs to {recorded.describe()} ({count} upload(s) queued "
            f"for it), not to {identity.describe()}: give this mount its own --cache-dir (or "
            f"none, for the default one per endpoint); mount {recorded.describe()} with this "
            "cache dir to finish its uploads")
    return recorded


def claim(cache_dir: Path, identity: Identity) -> None:
    """At mount, under the cache lock: refuse another identity's cache, or record ours in a
    cache that has none (adopting a cache from before identities, with one INFO line)."""
    if check_identity(cache_dir, identity) is not None:
        return
    if has_cache_data(cache_dir):
        queued = queued_uploads(cache_dir)
        log.info("cache dir %s predates endpoint identities: adopted for %s (%s queued "
                 "upload(s) go there)", cache_dir, identity.describe(),
                 "some" if queued is None else queued)
    write_identity(cache_dir, identity)


def resolve_cache_dir(configured: Path | None, identity: Identity, base: Path | None = None) -> Path:
    """The cache dir a mount uses: the configured one, else the default of its identity:
    the documented default `base` when it is this identity's or no one's yet (a fresh
    one, or one from before identities, adopted), else `<base>/<slug>`."""
    if configured is not None:  # absolute: logs, status and sqlite URIs name it whole
        return configured.expanduser().absolute()
    base = base or default_cache_dir()
    recorded = read_identity(base) if base.is_dir() else None
    if recorded is None or recorded == identity:
        return base
    return base / identity.slug
