"""Configuration: frozen dataclasses, merged and validated here only.

Precedence, lowest first: built-in defaults, environment (endpoint only),
secrets.env, the TOML file, `-o key=value` options, explicit CLI flags.
Every problem raises UsageError with one line that names the culprit.
"""
from __future__ import annotations

import os
import re
import stat
import tomllib
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import UsageError
from .names import is_posix_name, is_relative_path
from .redact import credential_refusal, has_userinfo, is_credential_option, redact_url

#: The first one set wins. botocore itself reads AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL:
#: read here too, the endpoint requests go to is the one the cache identity names.
ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "S3_ENDPOINT")
ADDRESSING_STYLES = ("auto", "path", "virtual")
SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,62}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class SourceSpec:
    """A bucket or prefix shown as top-level directory `name`."""

    name: str
    bucket: str
    prefix: str  # "" or ends with "/"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class ManifestSpec:
    """An s3exchange manifest shown as top-level directory `name`."""

    name: str
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class KeyPair:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # never leak secrets through a repr in a log line
        return "KeyPair(<redacted>)"


@dataclass(frozen=True)
class Config:
    mountpoint: Path | None = None
    sources: tuple[SourceSpec, ...] = ()
    manifests: tuple[ManifestSpec, ...] = ()
    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    secrets_env: Path | None = None
    role_arn: str | None = None
    role_session_duration: int = 900
    read_keys: KeyPair | None = field(default=None, repr=False)
    write_keys: KeyPair | None = field(default=None, repr=False)
    cache_dir: Path | None = None  # None: the default, one per endpoint (cache/identity.py)
    cache_size: int = 10 << 30
    cache_reserve: int | None = None  # None: 5% of the cache's file system, at most 1 GiB
    metadata_ttl: float = 60.0
    drain_timeout: float = 120.0
    request_timeout: float = 30.0
    read_only: bool = False
    posix_metadata: bool = True  # False: never HEAD an object for its POSIX metadata
    sse: str | None = None
    sse_kms_key_id: str | None = None
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    file_mode: int = 0o644
    dir_mode: int = 0o755
    allow_other: bool = False
    force_owner: bool = False  # show uid/gid as owner of everything, whatever S3 stores
    allow_non_empty: bool = False  # mount over a directory that has entries
    foreground: bool = False
    log_level: str = "INFO"
    log_file: Path | None = None  # None: stderr (foreground, systemd) or <cache-dir>/s3fuse.log
    metrics_address: str | None = None  # HOST:PORT of the Prometheus endpoint; None: none
    max_inodes: int = 40_000  # files the kernel may hold before the oldest are dropped (0: no cap)
    shared_index: str | None = None  # "auto" or s3://BUCKET[/PREFIX]: the fleet's archive indexes
    debug: tuple[str, ...] = ()  # s3fuse modules logged at DEBUG whatever log_level says
    mount_flags: tuple[str, ...] = ()  # kernel mount flags for libfuse (noexec, ...): KERNEL_FLAGS
    config_file: Path | None = None

    def with_overrides(self, **changes: Any) -> "Config":
        return replace(self, **changes)


#: Region prefixes of the AWS partitions other than `aws` (longest first).
PARTITIONS = (("us-isob-", "aws-iso-b"), ("us-isof-", "aws-iso-f"), ("us-iso-", "aws-iso"),
              ("us-gov-", "aws-us-gov"), ("cn-", "aws-cn"), ("eusc-", "aws-eusc"))


def partition_of(region: str | None) -> str:
    """The AWS partition of a region ('cn-north-1' -> 'aws-cn'); 'aws' when unknown."""
    for prefix, partition in PARTITIONS:
        if region and region.lower().startswith(prefix):
            return partition
    return "aws"


def aws_partition_of_host(host: str) -> str | None:
    """The partition of an AWS endpoint host (`*.amazonaws.com[.cn]`), None for any other
    host: the cache identity names AWS by partition, and STS is AWS's own there."""
    if host.endswith(".amazonaws.com.cn"):
        return "aws-cn"
    if host == "amazonaws.com" or host.endswith(".amazonaws.com"):
        region = next((label for label in host.split(".") if partition_of(label) != "aws"), None)
        return partition_of(region)
    return None


def is_aws_endpoint(url: str) -> bool:
    """Is `url` one of AWS's endpoints (regional, FIPS, dual-stack, VPC)?"""
    host = (urllib.parse.urlsplit(url.strip()).hostname or "").rstrip(".").lower()
    return aws_partition_of_host(host) is not None


def default_cache_dir() -> Path:
    """The default cache dir: the first endpoint identity mounted with it keeps its data
    here, every other one in a subdirectory of its own (see cache/identity.py)."""
    if os.geteuid() == 0:
        return Path("/var/cache/s3fuse")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "s3fuse"


# ---------------------------------------------------------------- parsers

def parse_size(text: str | int) -> int:
    """'20G' -> bytes (binary units; 'K', 'KB', 'KiB' all mean 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid size {text!r} (expected e.g. 512M, 20G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


#: The longest duration any option takes: ten years.
MAX_DURATION = 3650 * 86400.0


def parse_duration(text: str | int | float) -> float:
    """'7d', '90m', '60' -> seconds; at most MAX_DURATION (a TOML `inf` or `nan`, or a
    number of seconds past what a socket timeout takes, made every upload fail)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _DURATION_RE.match(str(text))
        if not m:
            raise UsageError(f"invalid duration {text!r} (expected e.g. 60, 90s, 15m, 7d)")
        value = float(m.group(1)) * _SECONDS[m.group(2).lower()]
    if value < 0:
        raise UsageError(f"duration must not be negative: {text}")
    if not value <= MAX_DURATION:  # nan too
        raise UsageError(f"duration out of range: {text} (at most {MAX_DURATION // 86400:.0f}d)")
    return value


def parse_mode(text: str | int) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        try:
            value = int(str(text), 8)
        except ValueError:
            raise UsageError(f"invalid mode {text!r} (expected octal, e.g. 0644)") from None
    if not 0 <= value <= 0o7777:
        raise UsageError(f"invalid mode {text!r}")
    return value


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"invalid boolean {text!r}")


def parse_int(text: str | int, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise UsageError(f"invalid {what} {text!r} (expected an integer)") from None


def parse_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:9101' or '[::1]:9101' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host.strip("[]"):
        raise UsageError(f"invalid metrics address {text!r} (expected HOST:PORT, e.g. "
                         "127.0.0.1:9101)")
    return host.strip("[]"), int(port)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/key' -> ('bucket', 'some/key'); validates the bucket name."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise UsageError(f"malformed S3 URI {uri!r} (expected s3://BUCKET[/PREFIX])")
    bucket, _, rest = uri[5:].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise UsageError(f"malformed S3 URI {uri!r}: invalid bucket name {bucket!r}")
    if "\0" in rest:
        raise UsageError(f"malformed S3 URI {uri!r}: NUL in key")
    return bucket, rest


def _check_name(name: str, uri: str) -> str:
    if not is_posix_name(name):
        raise UsageError(f"invalid directory name {name!r} for {uri}")
    return name


def _split_named(spec: str) -> tuple[str | None, str]:
    """'NAME=s3://...' -> ('NAME', 's3://...'); 's3://...' -> (None, 's3://...')."""
    if not spec.startswith("s3://") and "=" in spec:
        name, _, uri = spec.partition("=")
        return name, uri
    return None, spec


def parse_source(uri: str, name: str | None = None) -> SourceSpec:
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.strip("/")
    if prefix:
        if not is_relative_path(prefix, allow_empty=False):
            raise UsageError(f"malformed S3 URI {uri!r}: bad prefix segment")
        prefix += "/"
    return SourceSpec(name=_check_name(name or bucket, uri), bucket=bucket, prefix=prefix)


def parse_manifest(uri: str, name: str | None = None) -> ManifestSpec:
    bucket, key = split_s3_uri(uri)
    if not key or key.endswith("/"):
        raise UsageError(f"malformed manifest URI {uri!r} (expected s3://BUCKET/KEY.jsonl)")
    if name is None:
        parent = key.rsplit("/", 1)[0] if "/" in key else ""
        name = parent.rsplit("/", 1)[-1] if parent else key.rsplit(".", 1)[0]
    return ManifestSpec(name=_check_name(name, uri), bucket=bucket, key=key)


def parse_secrets_env(path: Path) -> dict[str, str]:
    """yt_framework's secrets.env: strip, skip '#' lines, split on the first '=', strip.

    No unquoting and no `export` handling, exactly as yt_framework reads it.
    A file readable by group or others is refused, like s3fs refuses its passwd file.
    """
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a pipe (`<(...)`, a FIFO) is gone, or blocks,
            # when the daemon started in the background reads it again
            raise UsageError(f"secrets file {path.absolute()} is not a regular file: give "
                             "the path of a file (mode 600)")
        text = path.read_bytes().decode("utf-8-sig")  # not the locale's: systemd's is C
    except OSError as exc:
        raise UsageError(f"cannot read secrets file {path.absolute()}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"secrets file {path.absolute()} is not UTF-8 text (byte {exc.start}): "
                         "save it as UTF-8") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"secrets file {path.absolute()} is accessible by group/others: "
                         "chmod 600 it")
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def _keypair(values: Mapping[str, str], kind: str, path: Path) -> KeyPair | None:
    access = values.get(f"S3_{kind}_ACCESS_KEY")
    secret = values.get(f"S3_{kind}_SECRET_KEY")
    if access and secret:
        return KeyPair(access, secret)
    if access or secret:
        raise UsageError(f"secrets file {path.absolute()} has only one of S3_{kind}_ACCESS_KEY / "
                         f"S3_{kind}_SECRET_KEY")
    return None


def secrets_keys(values: Mapping[str, str], path: Path) -> tuple[KeyPair, KeyPair | None]:
    """(read keys, write keys or None) of a secrets.env. A file without download keys is
    refused, naming the keys expected and the names it has (never a value): a typo
    (`S3_DOWNLOAD_ACCESS_KEY_ID`) or an upload-only file let the mount fall back to
    whatever other credentials were around, and sign with those silently."""
    read = _keypair(values, "DOWNLOAD", path)
    write = _keypair(values, "UPLOAD", path)
    if read is None:
        names = sorted(k for k in values if k != "S3_ENDPOINT")
        has = f" (it has: {', '.join(names)})" if names else " (it has no keys)"
        raise UsageError(f"secrets file {path.absolute()} has no S3_DOWNLOAD_ACCESS_KEY and "
                         f"S3_DOWNLOAD_SECRET_KEY, the keys for reads{has}")
    return read, write


# ---------------------------------------------------------------- merging

#: option name -> converter; the single schema for TOML keys, -o keys and CLI flags.
SCALAR_OPTIONS: dict[str, Any] = {
    "mountpoint": Path,
    "endpoint_url": str,
    "profile": str,
    "region": str,
    "addressing_style": str,
    "secrets_env": Path,
    "role_arn": str,
    "role_session_duration": lambda v: parse_int(v, "role session duration"),
    "max_inodes": lambda v: parse_int(v, "max inodes"),
    "cache_dir": Path,
    "cache_size": parse_size,
    "cache_reserve": parse_size,
    "metadata_ttl": parse_duration,
    "drain_timeout": parse_duration,
    "request_timeout": parse_duration,
    "read_only": parse_bool,
    "posix_metadata": parse_bool,
    "sse": str,
    "sse_kms_key_id": str,
    "uid": lambda v: parse_int(v, "uid"),
    "gid": lambda v: parse_int(v, "gid"),
    "file_mode": parse_mode,
    "dir_mode": parse_mode,
    "allow_other": parse_bool,
    "force_owner": parse_bool,
    "allow_non_empty": parse_bool,
    "log_level": lambda v: str(v).upper(),
    "log_file": Path,
    "metrics_address": str,
    "shared_index": str,
    "debug": lambda v: tuple(m for m in re.split(r"[,:\s]+", str(v)) if m),
}
LIST_OPTIONS = ("source", "manifest")
#: The keys of a [[source]] or [[manifest]] table.
LIST_KEYS = ("uri", "name")

_TEXT = ((str,), "a string (in quotes)")
_INT = ((int,), "an integer")
_SIZE = ((str, int), 'a size: bytes, or a string such as "20G"')
_DURATION = ((str, int, float), 'a duration: seconds, or a string such as "90s", "15m"')
_BOOL = ((bool,), "true or false")
_MODE = ((str,), 'an octal string, e.g. "0644" (a bare 644 is the decimal number 644)')
#: What a TOML value of each key must be (TOML has types: `file_mode = 644` is a decimal
#: integer, `read_only = "no"` a string; both are refused rather than guessed at).
TOML_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    **{key: _TEXT for key in ("mountpoint", "endpoint_url", "profile", "region",
                              "addressing_style", "secrets_env", "role_arn", "cache_dir", "sse",
                              "sse_kms_key_id", "log_level", "log_file", "metrics_address",
                              "debug", "shared_index")},
    **{key: _INT for key in ("role_session_duration", "uid", "gid", "max_inodes")},
    **{key: _SIZE for key in ("cache_size", "cache_reserve")},
    **{key: _DURATION for key in ("metadata_ttl", "drain_timeout", "request_timeout")},
    **{key: _BOOL for key in ("read_only", "posix_metadata", "allow_other", "force_owner",
                              "allow_non_empty")},
    **{key: _MODE for key in ("file_mode", "dir_mode")},
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Bounds of --max-inodes (fs/inodecap.py): fewer would drop files still in use
MIN_MAX_INODES = 1_000
MAX_MAX_INODES = 2**31
#: Largest uid or gid (2^32 - 1 is "no id" to the kernel).
MAX_ID = 2**32 - 2


#: Long options whose TOML name is not theirs with `_` for `-` (design.md: every long option
#: is a TOML key and an `-o` option by that rule): each maps to the key it sets.
ALIASES = {"no_posix_metadata": "posix_metadata", "debug_modules": "debug"}
#: ... of which these set the opposite of their value.
NEGATED = frozenset({"no_posix_metadata"})


def _unaliased(alias: str, value: Any) -> tuple[str, Any]:
    """(key, value) an alias sets: `no_posix_metadata = true` is `posix_metadata = false`."""
    if alias in NEGATED:
        if isinstance(value, str):
            return ALIASES[alias], "false" if parse_bool(value) else "true"
        return ALIASES[alias], not value
    return ALIASES[alias], value


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                # it names the endpoint, the cache and the secrets file: whoever can edit it
                # can send our uploads (and credentials' signatures) elsewhere
                raise UsageError(f"config {path} is writable by group/others: refusing it "
                                 f"(chmod go-w {path})")
            data = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid config {path}: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (a Latin-1 editor's é, UTF-16)
        raise UsageError(f"invalid config {path}: not UTF-8 text (byte {exc.start}): "
                         "save it as UTF-8") from None
    for alias in set(data) & set(ALIASES):  # `no_posix_metadata = true`, `debug_modules`
        if alias in NEGATED:
            _check_type(path, alias, data[alias], *_BOOL)
        key, value = _unaliased(alias, data.pop(alias))
        if key in data:  # as TOML refuses a key given twice (the alias silently lost)
            raise UsageError(f"config {path}: {alias} and {key} both given: keep one")
        data[key] = value
    unknown = set(data) - set(SCALAR_OPTIONS) - set(LIST_OPTIONS)
    secret = next((key for key in sorted(unknown) if is_credential_option(key)), None)
    if secret is not None:  # config files are often world-readable (/etc/s3fuse/*.toml)
        raise UsageError(credential_refusal(repr(secret), f"config {path}:"))
    if unknown:
        raise UsageError(f"unknown key(s) in config {path}: {', '.join(sorted(unknown))} "
                         f"(known: see `s3fuse mount --help`)")
    for key, value in data.items():
        if key in TOML_TYPES:
            _check_type(path, key, value, *TOML_TYPES[key])
    for key in LIST_OPTIONS:
        items = data.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) and "uri" in i for i in items):
            raise UsageError(f"invalid config {path}: [[{key}]] tables need a 'uri'")
        for item in items:
            extra = sorted(set(item) - set(LIST_KEYS))
            if extra:
                raise UsageError(f"config {path}: unknown key(s) in [[{key}]]: "
                                 f"{', '.join(extra)} (known: {', '.join(LIST_KEYS)})")
            for name in LIST_KEYS:
                if name in item:
                    _check_type(path, f"[[{key}]] {name}", item[name], *_TEXT)
    return data


#: Keys of the TOML file that name files: a relative one is relative to the file's own
#: directory, not to the current one (a unit runs in /, fstab's mount helper anywhere).
PATH_KEYS = ("mountpoint", "secrets_env", "cache_dir", "log_file")


def load_config_file(path: Path) -> dict[str, Any]:
    """A TOML configuration as every command must read it: its paths anchored."""
    return anchored(load_toml(path), path)


def anchored(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """`data` (of the TOML file `path`) with its relative paths made absolute against the
    file's directory (`~` expanded first): `secrets_env = "secrets.env"` beside
    /etc/s3fuse/data.toml worked from /etc/s3fuse only."""
    base = path.expanduser().absolute().parent
    for key in PATH_KEYS:
        if isinstance(data.get(key), str) and data[key]:
            data[key] = str(base / Path(data[key]).expanduser())  # an absolute one stays
    return data


def _check_type(path: Path, key: str, value: Any, types: tuple[type, ...], what: str) -> None:
    """One line naming the key when a TOML value is not of its type (bool is no integer)."""
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise UsageError(f"config {path}: {key} = {_shown(value)}: expected {what}")


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 40 else text[:37] + "..."


#: Generic mount(8) options, given with `-o` (an fstab line's options): word -> (the
#: setting it chooses, the option libfuse is given for it, None for the default). The last
#: word of a setting wins (`exec,noexec` is noexec). libfuse (3.14) knows no relatime,
#: strictatime or nodiratime: they are accepted and leave the kernel's default (relatime);
#: noatime covers directories too.
KERNEL_FLAGS: dict[str, tuple[str, str | None]] = {
    "exec": ("exec", None), "noexec": ("exec", "noexec"),
    # Never suid or dev: a bucket's headers choose every file's owner and mode, so a
    # setuid-root program planted there would run as root (docs/reliability.md). Accepted
    # (mount.fuse3 adds `dev,suid` to every fstab mount root makes), without effect.
    "suid": ("suid", None), "nosuid": ("suid", None),  # libfuse's default: nosuid, nodev
    "dev": ("dev", None), "nodev": ("dev", None),
    "atime": ("atime", None), "relatime": ("atime", None), "strictatime": ("atime", None),
    "noatime": ("atime", "noatime"), "nodiratime": ("diratime", None),
    "async": ("sync", None), "sync": ("sync", "sync"), "dirsync": ("dirsync", "dirsync"),
}


def kernel_flags(words: list[str]) -> tuple[str, ...]:
    """The libfuse options of the kernel flags `words` (in order; the last of each setting
    wins)."""
    chosen: dict[str, str | None] = {}
    for word in words:
        setting, option = KERNEL_FLAGS[word]
        chosen[setting] = option
    return tuple(option for option in chosen.values() if option is not None)


def parse_o_options(options: list[str]) -> dict[str, Any]:
    """`-o key=value,flag` (fstab style) -> raw option dict with TOML names."""
    raw: dict[str, Any] = {}
    for group in options:
        for item in filter(None, (part.strip() for part in group.split(","))):
            key, sep, value = item.partition("=")
            key = key.replace("-", "_")
            if key == "ro":
                key, value, sep = "read_only", "true", "="
            if key in KERNEL_FLAGS and not sep:
                raw.setdefault("mount_flags", []).append(key)
                continue
            if key in ALIASES:  # `-o no_posix_metadata`, `-o debug_modules=...`
                key, value = _unaliased(key, value if sep else "true")
                sep = "="
            if key in LIST_OPTIONS:
                name, uri = _split_named(value)
                raw.setdefault(key, []).append({"uri": uri, "name": name})
                continue
            if key not in SCALAR_OPTIONS:
                if is_credential_option(key):
                    raise UsageError(credential_refusal(key, "-o"))
                raise UsageError(f"unknown mount option {key!r}")
            raw[key] = value if sep else "true"
    return raw


#: What a profile's own endpoint is, asked of botocore (store/botosession.py): given the
#: profile (None: the default one) and the environment, the endpoint_url that botocore
#: would send S3 requests to, or None.
EndpointOfProfile = Callable[[str | None, Mapping[str, str]], str | None]


def build_config(cli: Mapping[str, Any], o_options: list[str] | None = None,
                 environ: Mapping[str, str] | None = None,
                 profile_endpoint: EndpointOfProfile | None = None) -> Config:
    """Merge every configuration layer into one validated Config.

    `cli` holds only what the user gave explicitly (None/absent = not given), with
    `source`/`manifest` as lists of 'NAME=URI' strings and `config` as a path.
    `profile_endpoint`, when given, names the endpoint of an AWS profile that sets one
    (`endpoint_url` in ~/.aws/config): the lowest layer of the endpoint, so that the
    cache identity is the S3 that requests really go to.
    """
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    for var in reversed(ENDPOINT_ENV_VARS):
        if env.get(var):
            merged["endpoint_url"] = env[var]
    if env.get("S3_REGION") and not env.get("AWS_REGION") and not env.get("AWS_DEFAULT_REGION"):
        merged["region"] = env["S3_REGION"]

    config_file = cli.get("config")
    layers: list[dict[str, Any]] = []
    if config_file:
        layers.append(load_config_file(Path(config_file)))
    layers.append(parse_o_options(o_options or []))
    explicit = {k: v for k, v in cli.items() if v is not None and k in SCALAR_OPTIONS}
    for key in LIST_OPTIONS:
        if cli.get(key):
            explicit[key] = [dict(zip(("name", "uri"), _split_named(s))) for s in cli[key]]
    layers.append(explicit)
    for layer in layers:
        merged.update(layer)

    values: dict[str, Any] = {}
    for key, convert in SCALAR_OPTIONS.items():
        if merged.get(key) is not None:
            try:
                values[key] = convert(merged[key])
            except UsageError as exc:  # say which option: the value alone may not tell
                raise UsageError(f"{key}: {exc}") from None
    if config_file:
        values["config_file"] = Path(config_file)
    values["foreground"] = bool(cli.get("foreground"))
    values["mount_flags"] = kernel_flags(merged.get("mount_flags", []))

    values.update(_keys(values, env, any("endpoint_url" in layer for layer in layers)))
    if "endpoint_url" not in values and profile_endpoint is not None:
        endpoint = profile_endpoint(values.get("profile"), env)
        if endpoint:
            values["endpoint_url"] = endpoint

    values["sources"] = tuple(parse_source(i["uri"], i.get("name")) for i in merged.get("source", []))
    values["manifests"] = tuple(parse_manifest(i["uri"], i.get("name"))
                                for i in merged.get("manifest", []))
    return validate(Config(**values))


def _keys(values: Mapping[str, Any], env: Mapping[str, str], endpoint_given: bool
          ) -> dict[str, Any]:
    """The key pairs (and secrets.env's endpoint) of the merged `values`.

    Explicit sources win over the environment's fallbacks: a profile (flag, `-o` or TOML)
    over s3exchange's S3_AWS_* variables (botocore lets an explicit profile win over
    AWS_ACCESS_KEY_ID too); `--profile` and `--secrets-env` together name two sets of
    credentials and are refused rather than one of them silently ignored."""
    if "secrets_env" in values:
        if "profile" in values:
            raise UsageError(f"--profile {values['profile']} and --secrets-env "
                             f"{values['secrets_env']} both name the credentials: give one")
        secrets = parse_secrets_env(values["secrets_env"])
        read, write = secrets_keys(secrets, values["secrets_env"])
        keys: dict[str, Any] = {"read_keys": read, "write_keys": write}
        if not endpoint_given and secrets.get("S3_ENDPOINT"):
            keys["endpoint_url"] = secrets["S3_ENDPOINT"]
        return keys
    if env.get("S3_AWS_ACCESS_KEY_ID") and env.get("S3_AWS_SECRET_ACCESS_KEY") \
            and not env.get("AWS_ACCESS_KEY_ID") and "profile" not in values:  # s3exchange's
        pair = KeyPair(env["S3_AWS_ACCESS_KEY_ID"], env["S3_AWS_SECRET_ACCESS_KEY"])
        return {"read_keys": pair, "write_keys": pair}
    return {}


def validate(cfg: Config) -> Config:
    names = [s.name for s in cfg.sources] + [m.name for m in cfg.manifests]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"two sources share the directory name {name!r}: name one with NAME=s3://...")
        seen.add(name)
    if cfg.addressing_style not in ADDRESSING_STYLES:
        raise UsageError(f"invalid addressing style {cfg.addressing_style!r} (path or virtual)")
    if cfg.sse is not None and cfg.sse not in SSE_MODES:
        raise UsageError(f"invalid --sse {cfg.sse!r} (one of {', '.join(SSE_MODES)})")
    if cfg.sse_kms_key_id and cfg.sse not in ("aws:kms", "aws:kms:dsse"):
        raise UsageError("--sse-kms-key-id needs --sse aws:kms or aws:kms:dsse")
    if cfg.endpoint_url and has_userinfo(cfg.endpoint_url):
        raise UsageError(f"endpoint URL {redact_url(cfg.endpoint_url)!r} carries user:password: "
                         "refused (S3 does not use them, and URLs end up in logs and status)")
    if cfg.endpoint_url and not re.match(r"^https?://[^\s/]+", cfg.endpoint_url):
        raise UsageError(f"invalid endpoint URL {redact_url(cfg.endpoint_url)!r} "
                         "(expected http(s)://host[:port])")
    if cfg.log_level not in LOG_LEVELS:
        raise UsageError(f"invalid log level {cfg.log_level!r} (one of {', '.join(LOG_LEVELS)})")
    for module in cfg.debug:  # only ours: botocore's debug lines carry request signatures
        if not re.fullmatch(r"s3fuse(\.[a-z_]+)*", module):
            raise UsageError(f"--debug-modules takes s3fuse modules (e.g. s3fuse.store), not "
                             f"{module!r}")
    if not 900 <= cfg.role_session_duration <= 43200:
        raise UsageError("role session duration must be between 900 and 43200 seconds")
    if cfg.role_arn is not None and not cfg.role_arn.startswith("arn:"):
        raise UsageError(f"invalid role ARN {cfg.role_arn!r}")
    if cfg.cache_size < (64 << 20):
        raise UsageError("cache size must be at least 64M")
    if cfg.max_inodes != 0 and not MIN_MAX_INODES <= cfg.max_inodes <= MAX_MAX_INODES:
        raise UsageError(f"max inodes must be 0 (no cap) or between {MIN_MAX_INODES:,} and "
                         f"{MAX_MAX_INODES:,}, not {cfg.max_inodes}")
    if cfg.metrics_address is not None:
        parse_address(cfg.metrics_address)
    if cfg.shared_index is not None and cfg.shared_index != "auto":
        try:
            prefix = split_s3_uri(cfg.shared_index)[1]
        except UsageError as exc:
            raise UsageError(f"shared_index: {exc} (or auto)") from None
        if prefix.strip("/") and not is_relative_path(prefix.strip("/"), allow_empty=False):
            raise UsageError(f"invalid --shared-index {cfg.shared_index!r}: bad prefix segment "
                             "(expected auto or s3://BUCKET[/PREFIX])")
    for name, value in (("uid", cfg.uid), ("gid", cfg.gid)):
        if not 0 <= value <= MAX_ID:
            raise UsageError(f"{name} {value} is out of range (0 to {MAX_ID})")
    return cfg


def check_outside_mount(mountpoint: Path, path: Path, what: str,
                        others: Sequence[Path] = ()) -> None:
    """`path` (the cache dir, the log file) must not be the mountpoint or below it: the
    daemon would open its own files through its own mount and wait on itself forever.
    Nor inside another s3fuse mount (`others`): its files (the upload journal, the
    cache's identity, the log) would be uploaded to that mount's bucket."""
    resolved = path.expanduser().resolve()
    if resolved == mountpoint or mountpoint in resolved.parents:
        raise UsageError(f"{what} {path} is inside the mountpoint {mountpoint}: the mount "
                         f"would hide it; choose a {what} outside it")
    for other in others:
        if resolved == other or other in resolved.parents:
            raise UsageError(f"{what} {path} is inside the s3fuse mount {other}: its files "
                             f"would be uploaded to S3; choose a {what} on a local disk")


def check_mountpoint(path: Path, allow_non_empty: bool = False) -> Path:
    """The mountpoint must exist, be a directory, not be mounted already and (unless
    `allow_non_empty`) be empty, as rclone, mount-s3 and s3fs ask: files there would be
    hidden by the mount, and a wrong path is more often a mistake than a wish."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"mountpoint {path} does not exist") from None
    except PermissionError as exc:  # not a stale mount: detaching it would be wrong advice
        raise UsageError(f"mountpoint {path} is not usable: {exc.strerror} (another user's "
                         "mount without --allow-other, or a directory you may not enter)") from None
    except OSError as exc:
        raise UsageError(f"mountpoint {path} is not usable: {exc.strerror} "
                         "(a stale mount? run: fusermount3 -uz " f"{path})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        try:
            os.statvfs(path)  # the attributes of a dead mount's root may still be cached
        except OSError as exc:
            raise UsageError(f"mountpoint {path} is a stale mount ({exc.strerror}): its daemon "
                             f"is gone; run: s3fuse umount {path}") from None
        raise UsageError(f"{path} is already a mount point")
    if not allow_non_empty:
        try:
            with os.scandir(path) as entries:
                occupied = next(entries, None) is not None
        except OSError as exc:
            raise UsageError(f"mountpoint {path} is not usable: {exc.strerror}") from None
        if occupied:
            raise UsageError(f"mountpoint {path} is not empty (--allow-non-empty mounts over "
                             "it, hiding what is there)")
    return path.resolve()
