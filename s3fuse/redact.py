"""Keeping credentials out of argv, logs, status output and error messages.

Why a module of its own: the command line is the one place a secret is visible to
every local user (`ps`, /proc/PID/cmdline, fstab, unit files) and is copied again
when the daemon re-executes itself in the background. So options that look like
credentials are refused before anything else reads them, with a line that names
the option and never its value; and URLs are shown without their user:password.
Log lines of other libraries (urllib3 logs a presigned URL whole, botocore its signed
headers at DEBUG) go through `redact_text` in the log handler's filter (logs.py).
"""
from __future__ import annotations

import re
import urllib.parse

#: Option names that carry a credential (`-o aws_secret_access_key=...`, `--secret-key X`).
_CREDENTIAL_NAME = re.compile(
    r"(secret|passw(or)?d|token|access[_-]?key|credential|signature|(^|_)(api_?)?key(_|$))",
    re.IGNORECASE)

WHERE_INSTEAD = ("use --secrets-env FILE (chmod 600), --profile, or AWS_ACCESS_KEY_ID/"
                 "AWS_SECRET_ACCESS_KEY in the environment")


#: Our own options whose names match but carry a path, not a secret.
_NOT_SECRETS = {"secrets_env", "sse_kms_key_id"}


def is_credential_option(name: str) -> bool:
    """Does this option name (`--secret-key`, `aws_secret_access_key`) look like it carries a secret?"""
    bare = name.lstrip("-").replace("-", "_")
    return bare not in _NOT_SECRETS and bool(_CREDENTIAL_NAME.search(bare))


def credential_refusal(name: str, where: str) -> str:
    """The one line for a credential given where others can read it (never its value)."""
    return (f"{where} {name}: credentials are not accepted here (visible to other users in ps, "
            f"/proc/PID/cmdline, fstab and unit files): {WHERE_INSTEAD}")


def credential_in_argv(argv: list[str]) -> str | None:
    """The first long option in `argv` that looks like a credential, e.g. '--secret-key'."""
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            if is_credential_option(name):
                return name
    return None


def redact_unrecognized(message: str) -> str:
    """argparse's 'unrecognized arguments: --foo VALUE --bar=VALUE' without the values:
    an option we do not know may well be someone's idea of a credential option."""
    head, sep, rest = message.partition("unrecognized arguments: ")
    if not sep:
        return message
    shown, after_option = [], False
    for token in rest.split(" "):
        if token.startswith("-"):
            shown.append(token.split("=", 1)[0] + ("=..." if "=" in token else ""))
            after_option = "=" not in token
        else:
            shown.append("..." if after_option else token)
            after_option = False
    return head + sep + " ".join(shown)


def has_userinfo(url: str) -> bool:
    """Does the URL carry `user[:password]@` (a credential S3 never needs)?"""
    try:
        return "@" in urllib.parse.urlsplit(url).netloc
    except ValueError:
        return "@" in url


def redact_url(url: str | None) -> str | None:
    """`https://user:pass@host/x` -> `https://***@host/x`; other URLs unchanged."""
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, "", ""))


#: A signature, session token or credential scope inside any text: presigned URL query
#: parameters (`X-Amz-Signature=...`, SigV2's `Signature=`/`AWSAccessKeyId=`), SigV4
#: `Authorization` header parts (`Credential=..., Signature=...`) and header dicts as
#: botocore logs them at DEBUG (`'X-Amz-Security-Token': b'...'`).
_SIGNED_PARTS = re.compile(
    r"(?<![\w-])((?:X-Amz-)?(?:Signature|Security-Token|Credential)|AWSAccessKeyId|Authorization)"
    r"(['\"]?\s*[=:]\s*b?['\"]?)([^'\"\s&,]+)", re.IGNORECASE)
_USERINFO = re.compile(r"(://)[^/\s@]+@")


def redact_text(text: str) -> str:
    """Any text (a log line from urllib3 or botocore, an error) without the secrets of
    signed requests and URLs: values of signature, token and credential parameters and
    headers become `***`, `user:password@` in URLs `***@`."""
    return _USERINFO.sub(r"\1***@", _SIGNED_PARTS.sub(r"\1\2***", text))
