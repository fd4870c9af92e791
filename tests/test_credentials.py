"""Credentials of every kind against moto, and never a secret in logs or status."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import botocore.session
import pytest

from s3fuse.config import build_config
from s3fuse.errors import Offline, UsageError
from s3fuse.store import credentials
from s3fuse.store.s3 import S3Store

SECRET = "VerySecretKey0123456789abcdefXYZ"


def test_s3exchange_environment_is_understood():
    cfg = build_config({}, [], {"S3_ENDPOINT_URL": "http://ex:9", "S3_REGION": "garage",
                                "S3_AWS_ACCESS_KEY_ID": "ak", "S3_AWS_SECRET_ACCESS_KEY": "sk"})
    assert cfg.endpoint_url == "http://ex:9" and cfg.region == "garage"
    assert cfg.read_keys.access_key == "ak" and cfg.write_keys.secret_key == "sk"


def test_assumed_role_is_used_and_refreshed(moto_backend, monkeypatch: pytest.MonkeyPatch):
    for name, value in moto_backend.env().items():
        monkeypatch.setenv(name, value)
    cfg = build_config({"endpoint_url": moto_backend.endpoint, "region": "us-east-1",
                        "role_arn": "arn:aws:iam::123456789012:role/reader",
                        "role_session_duration": "900"}, [], os.environ)
    store = S3Store.from_config(cfg)
    creds = store._session.get_credentials()
    first = creds.get_frozen_credentials()
    assert first.access_key != moto_backend.access_key and first.token   # temporary credentials
    moto_backend.client.create_bucket(Bucket="role-bucket")
    assert "role-bucket" in store.list_buckets()
    creds._expiry_time = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)
    assert creds.get_frozen_credentials().access_key != first.access_key   # refreshed before expiry


def test_an_unreachable_sts_does_not_stop_the_start(moto_backend, proxy,
                                                     monkeypatch: pytest.MonkeyPatch):
    """On a train: S3 and STS unreachable when the mount starts with --role-arn. It failed
    to start (refused connections) or hung for minutes (a black hole); now it starts
    with expired credentials, every request fails as offline (the cache serves), and
    the role is assumed once STS answers."""
    for name, value in moto_backend.env().items():
        monkeypatch.setenv(name, value)
    moto_backend.client.create_bucket(Bucket="train-bucket")
    cfg = build_config({"endpoint_url": proxy.endpoint, "region": "us-east-1",
                        "role_arn": "arn:aws:iam::123456789012:role/reader"}, [], os.environ)
    proxy.cut()
    store = S3Store.from_config(cfg)
    with pytest.raises(Offline):
        store.list_buckets()
    proxy.restore()
    assert store.probe()  # the daemon's link probe: S3 (and STS) answer again
    assert "train-bucket" in store.list_buckets()
    assert store._session.get_credentials().get_frozen_credentials().token  # the role's


def test_secrets_never_reach_logs_or_status(tmp_path: Path, moto_backend, mount_factory):
    bucket = "secret-test"
    moto_backend.client.create_bucket(Bucket=bucket)
    moto_backend.client.put_object(Bucket=bucket, Key="f.txt", Body=b"x")
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"S3_ENDPOINT={moto_backend.endpoint}\nS3_DOWNLOAD_ACCESS_KEY=readerkey\n"
                       f"S3_DOWNLOAD_SECRET_KEY={SECRET}\nS3_UPLOAD_ACCESS_KEY=writerkey\n"
                       f"S3_UPLOAD_SECRET_KEY={SECRET}W\n")
    secrets.chmod(0o600)
    env = {k: v for k, v in moto_backend.env().items() if not k.startswith("AWS_ACCESS")
           and not k.startswith("AWS_SECRET")}
    m = mount_factory("--secrets-env", str(secrets), "--source", f"s3://{bucket}", "--log-level", "DEBUG",
                      env=env)
    assert m.path(bucket, "f.txt").read_bytes() == b"x"
    assert not m.path(bucket, "missing").exists()
    status = subprocess.run([sys.executable, "-m", "s3fuse", "status", "--json", str(m.mountpoint)],
                            env=env, capture_output=True, text=True).stdout
    m.stop()
    for text in (status, m.log(), (m.cache_dir / "meta.sqlite").read_bytes().decode("latin-1")):
        assert SECRET not in text
    loose = tmp_path / "loose.env"
    loose.write_text(secrets.read_text())
    loose.chmod(0o644)
    res = subprocess.run([sys.executable, "-m", "s3fuse", "mount", str(m.mountpoint), "--secrets-env",
                          str(loose)], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "group/others" in res.stderr and SECRET not in res.stderr


def test_an_unreachable_endpoint_is_named_without_its_path_or_credentials():
    """A profile's role with STS down showed `ListObjectsV2 ...: S3 unreachable` in
    `status`, though S3 answered: the host that did not answer is named now."""
    import botocore.exceptions

    from s3fuse.store.s3 import translate
    sts = botocore.exceptions.EndpointConnectionError(endpoint_url="https://sts.amazonaws.com/")
    assert str(translate(sts, "ListObjectsV2 s3://dev/")) == (
        "ListObjectsV2 s3://dev/: STS unreachable (EndpointConnectionError: https://sts.amazonaws.com)")
    s3 = botocore.exceptions.ConnectTimeoutError(endpoint_url="http://user:pw@h:9/b/k?acl=1")
    assert str(translate(s3, "GET")) == "GET: S3 unreachable (ConnectTimeoutError: http://h:9)"


# ---------------------------------------------------------------- where credentials come from

ROLE = "arn:aws:iam::123456789012:role/reader"


def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Nothing but what the test configures: no AWS_* or S3_* variables, no ~/.aws."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "S3_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _sts_signers(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The access keys given to every STS client created from now on."""
    signers: list[str | None] = []
    create = botocore.session.Session.create_client

    def recording(self, service_name, *args, **kwargs):
        if service_name == "sts":
            signers.append(kwargs.get("aws_access_key_id"))
        return create(self, service_name, *args, **kwargs)
    monkeypatch.setattr(botocore.session.Session, "create_client", recording)
    return signers


def test_the_role_is_assumed_with_the_configured_keys(moto_backend, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """--role-arn with --secrets-env: the role was assumed with the ambient credentials
    ("no credentials" without them) and S3 signed with the file's keys, the role
    ignored. Now each key pair of the file assumes the role, and S3 is signed with the
    role's credentials: the download keys' session for reads, the upload keys' for
    writes; s3exchange's one pair assumes it once."""
    _no_ambient_credentials(monkeypatch, tmp_path)
    signers = _sts_signers(monkeypatch)
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"S3_ENDPOINT={moto_backend.endpoint}\nS3_DOWNLOAD_ACCESS_KEY=DLKEY\n"
                       "S3_DOWNLOAD_SECRET_KEY=dls\nS3_UPLOAD_ACCESS_KEY=ULKEY\n"
                       "S3_UPLOAD_SECRET_KEY=uls\n")
    secrets.chmod(0o600)
    moto_backend.client.create_bucket(Bucket="role-keys")
    cfg = build_config({"secrets_env": str(secrets), "role_arn": ROLE, "region": "us-east-1"},
                       [], os.environ)
    store = S3Store.from_config(cfg)
    assert signers == ["DLKEY", "ULKEY"]
    read = S3Store.credentials(store.read_client).get_frozen_credentials()
    write = S3Store.credentials(store.write_client).get_frozen_credentials()
    assert read.token and write.token and read.access_key != write.access_key
    assert {read.access_key, write.access_key}.isdisjoint({"DLKEY", "ULKEY"})
    assert "role-keys" in store.list_buckets()

    signers.clear()
    env = {"S3_AWS_ACCESS_KEY_ID": "S3XKEY", "S3_AWS_SECRET_ACCESS_KEY": "s3x"}
    cfg = build_config({"endpoint_url": moto_backend.endpoint, "role_arn": ROLE,
                        "region": "us-east-1"}, [], env)
    store = S3Store.from_config(cfg)
    assert signers == ["S3XKEY"]
    assert S3Store.credentials(store.write_client) is S3Store.credentials(store.read_client)
    assert S3Store.credentials(store.read_client).get_frozen_credentials().token


def test_assume_role_goes_to_sts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """With an AWS S3 endpoint, AssumeRole was sent to it (S3 does not answer STS calls)
    and AWS_ENDPOINT_URL_STS was ignored. AWS: the regional STS; another S3 (MinIO,
    Ceph): STS at its endpoint, as before; AWS_ENDPOINT_URL_STS wins over both."""
    from s3fuse.store import botosession
    from s3fuse.store.s3 import sts_client
    _no_ambient_credentials(monkeypatch, tmp_path)

    def sts_of(endpoint: str | None) -> str:
        cfg = build_config({"role_arn": ROLE, "region": "eu-west-1",
                            **({"endpoint_url": endpoint} if endpoint else {})}, [], {})
        return sts_client(botosession.session(), cfg, None, 2.0, 2.0).meta.endpoint_url
    for aws in (None, "https://s3.eu-west-1.amazonaws.com", "https://s3-fips.us-east-1.amazonaws.com"):
        assert sts_of(aws) == "https://sts.eu-west-1.amazonaws.com"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.eu-west-1.amazonaws.com")  # S3's, not STS's
    assert sts_of(None) == "https://sts.eu-west-1.amazonaws.com"
    assert sts_of("http://minio.lab:9000") == "http://minio.lab:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://sts.lab:8000")
    assert sts_of("https://s3.eu-west-1.amazonaws.com") == "http://sts.lab:8000"
    assert sts_of("http://minio.lab:9000") == "http://sts.lab:8000"


# ---------------------------------------------------------------- STS's own words


class _RefusingSTS:
    """An STS that answers every call with 400 ValidationError (as AWS does for a session
    longer than the role's MaxSessionDuration)."""

    BODY = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
            b"<Type>Sender</Type><Code>ValidationError</Code><Message>The requested "
            b"DurationSeconds exceeds the MaxSessionDuration set for this role.</Message>"
            b"</Error><RequestId>1</RequestId></ErrorResponse>")

    def __enter__(self) -> str:
        import http.server
        import threading

        body = self.BODY

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(400)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_sts_failures_are_told_as_sts_with_its_explanation(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path):
    """STS down was "AssumeRole ...: S3 unreachable" (sending the user to debug S3), and
    STS's ValidationError lost the message that says what is wrong."""
    import botocore.exceptions

    from s3fuse.store.s3 import translate
    down = botocore.exceptions.ConnectTimeoutError(endpoint_url="http://127.0.0.1:9/")
    assert str(translate(down, "AssumeRole r", service="STS")) == \
        "AssumeRole r: STS unreachable (ConnectTimeoutError: http://127.0.0.1:9)"
    _no_ambient_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with _RefusingSTS() as endpoint:
        cfg = build_config({"endpoint_url": endpoint, "role_arn": ROLE,
                            "role_session_duration": "43200"}, [], {})
        with pytest.raises(UsageError) as caught:
            S3Store.from_config(cfg)
    assert str(caught.value) == (
        f"cannot assume role {ROLE}: AssumeRole {ROLE}: STS error ValidationError: The "
        "requested DurationSeconds exceeds the MaxSessionDuration set for this role.")


# ---------------------------------------------------------------- refreshing ahead


def _role_credentials(refresh, valid_for: float):
    from s3fuse.store.credentials import RoleCredentials
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=valid_for)
    creds = RoleCredentials.create_from_metadata(
        metadata={"access_key": "old", "secret_key": "s", "token": "t",
                  "expiry_time": expiry.isoformat()},
        refresh_using=refresh, method="sts-assume-role")
    creds._advisory_refresh_timeout = 300
    creds._mandatory_refresh_timeout = 150
    return creds


def _fresh() -> dict[str, str]:
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=900)
    return {"access_key": "new", "secret_key": "s2", "token": "t2",
            "expiry_time": expiry.isoformat()}


def test_a_slow_sts_does_not_hold_requests_while_the_credentials_are_valid(
        moto_backend, faults, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture):
    """In botocore's advisory window (credentials valid for minutes) the request whose
    signing started the refresh waited for a black-holed STS, past its 2 s first-byte
    deadline, and the mount went offline while S3 answered. The refresh runs in a thread
    of its own now; requests sign with the valid credentials meanwhile."""
    import time

    from s3fuse.store import botosession
    from s3fuse.store.s3 import assumed_role_credentials
    _no_ambient_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    cfg = build_config({"endpoint_url": faults.endpoint, "role_arn": ROLE, "region": "us-east-1"},
                       [], {})
    creds = assumed_role_credentials(botosession.session(), cfg)
    first = creds.get_frozen_credentials().access_key
    creds._expiry_time = (datetime.datetime.now(datetime.timezone.utc)
                          + datetime.timedelta(seconds=250))  # advisory (300), not mandatory (150)
    faults.hang(method="POST")  # STS accepts, never answers
    began = time.monotonic()
    assert creds.get_frozen_credentials().access_key == first
    assert time.monotonic() - began < 1.0
    faults.clear()
    creds._ahead.join(10)
    assert creds.get_frozen_credentials().access_key != first  # refreshed, in the background

    def failing() -> dict[str, str]:
        raise Offline("AssumeRole r: STS unreachable")
    creds = _role_credentials(failing, valid_for=250)
    with caplog.at_level("WARNING", logger="s3fuse.store.credentials"):
        assert creds.get_frozen_credentials().access_key == "old"
        creds._ahead.join(5)
    assert "STS unreachable" in caplog.text and "the current ones are used until" in caplog.text
    calls = 0

    def counted() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return _fresh()
    creds = _role_credentials(counted, valid_for=100)  # mandatory: signing must wait
    assert creds.get_frozen_credentials().access_key == "new" and calls == 1


# ---------------------------------------------------------------- providers that fail


def _profile(home: Path, name: str, body: str) -> None:
    with open(home / "aws-config", "a") as fh:
        fh.write(f"[profile {name}]\n{body}\n")


def _script(home: Path, name: str, text: str) -> Path:
    path = home / name
    path.write_text(f"#!/bin/sh\n{text}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("output, line", [
    ("echo not-json", "the credential_process of profile cp printed no JSON credentials: run "
                      "it yourself to see what it prints"),
    ("""echo '{"Version": 1, "AccessKeyId": "CPKEY", "SecretAccessKey": "cps", "SessionToken":'"""
     """ '"tok", "Expiration": "2020-01-01T00:00:00Z"}'""",
     "the credentials provider handed out credentials that have already expired (a "
     "credential_process or cache returning an old Expiration): renew them"),
    ('echo "token service down:\nHTTP 503" >&2; exit 1',
     "cannot load the credentials: Error when retrieving credentials from custom-process: "
     "token service down: HTTP 503"),
])
def test_a_failing_credential_process_stops_the_start_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, line: str):
    """Garbage output was a 46-line traceback (exit 1), expired credentials a mount that
    answered EIO "RuntimeError" to everything, a failure's line ended with a literal \\n."""
    _no_ambient_credentials(monkeypatch, tmp_path)
    _profile(tmp_path, "cp", f"credential_process = {_script(tmp_path, 'cp.sh', output)}")
    cfg = build_config({"profile": "cp", "endpoint_url": "http://127.0.0.1:9"}, [], {})
    with pytest.raises(UsageError) as caught:
        S3Store.from_config(cfg)
    assert str(caught.value) == line


def test_a_credential_process_that_hangs_stops_the_start_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """botocore runs it while the first client is made: `s3fuse mount` waited for good."""
    _no_ambient_credentials(monkeypatch, tmp_path)
    _profile(tmp_path, "hang", f"credential_process = {_script(tmp_path, 'hang.sh', 'sleep 30')}")
    monkeypatch.setattr(credentials.resolve_in_time, "__defaults__", (0.5,))
    cfg = build_config({"profile": "hang", "endpoint_url": "http://127.0.0.1:9"}, [], {})
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"^the credentials provider of profile 'hang' gave no "
                                         r"answer within 0.5s \(a credential_process"):
        S3Store.from_config(cfg)
    assert time.monotonic() - started < 5


def test_an_sso_profile_without_a_login_stops_the_start(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """It mounted, then every request failed with EIO "SSOTokenLoadError" and no hint.
    The token is looked for locally: no network is needed to tell."""
    _no_ambient_credentials(monkeypatch, tmp_path)
    _profile(tmp_path, "sso", "sso_start_url = https://example.awsapps.com/start\n"
             "sso_region = us-east-1\nsso_account_id = 123456789012\nsso_role_name = R")
    cfg = build_config({"profile": "sso", "endpoint_url": "http://127.0.0.1:9"}, [], {})
    with pytest.raises(UsageError, match=r"^no valid AWS SSO login: run `aws sso login "
                                         r"--profile sso`$"):
        S3Store.from_config(cfg)


def test_a_profile_without_credentials_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The line suggested --profile to a user who had given one."""
    _no_ambient_credentials(monkeypatch, tmp_path)
    _profile(tmp_path, "empty", "region = eu-west-1")
    cfg = build_config({"profile": "empty", "endpoint_url": "http://127.0.0.1:9"}, [], {})
    with pytest.raises(UsageError, match=r"^AWS profile 'empty' has no credentials \("):
        S3Store.from_config(cfg)


def test_an_unreadable_aws_config_stops_the_start(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    """botocore read it as empty: a profile's endpoint_url in it was ignored, and the
    mount's requests went to AWS with whatever credentials the environment had."""
    _no_ambient_credentials(monkeypatch, tmp_path)
    _profile(tmp_path, "lab", "endpoint_url = http://127.0.0.1:9")
    config = tmp_path / "aws-config"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != config)
    with pytest.raises(UsageError, match=r"^an AWS file may name this mount's endpoint or "
                                         rf"credentials \(cannot read {config}: check its "
                                         r"owner and mode\)$"):
        S3Store.from_config(build_config({"profile": "lab"}, [], {}))
    # keys and endpoint given here: nothing in it is used, and it may stay unreadable
    secrets = tmp_path / "secrets.env"
    secrets.write_text("S3_ENDPOINT=http://127.0.0.1:9\nS3_DOWNLOAD_ACCESS_KEY=DL\n"
                       "S3_DOWNLOAD_SECRET_KEY=dls\n")
    secrets.chmod(0o600)
    S3Store.from_config(build_config({"secrets_env": str(secrets)}, [], {}))


def test_a_profile_named_by_aws_profile_is_named_too(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """AWS_PROFILE=nosuch said "AWS profile None not found"."""
    _no_ambient_credentials(monkeypatch, tmp_path)
    _profile(tmp_path, "empty", "region = eu-west-1")
    cfg = build_config({"endpoint_url": "http://127.0.0.1:9"}, [], {})
    monkeypatch.setenv("AWS_PROFILE", "nosuch")
    with pytest.raises(UsageError, match=r"^AWS profile 'nosuch' not found$"):
        S3Store.from_config(cfg)
    monkeypatch.setenv("AWS_PROFILE", "empty")
    with pytest.raises(UsageError, match=r"^AWS profile 'empty' has no credentials \("):
        S3Store.from_config(cfg)


# ---------------------------------------------------------------- sessions that expire


def test_an_expired_session_that_cannot_be_renewed_fails_for_good(
        moto_backend, faults, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A session token exported from `aws sts assume-role` expired while mounted: each
    upload was retried forever (`s3fuse sync` never returned) and reads failed with EIO
    "S3 error 400" (the ExpiredToken code lost on the presigned path). Now it is a
    permanent failure (kept, reported by sync), EACCES naming ExpiredToken, for reads
    and writes. Credentials that renew themselves (a role, SSO) still retry."""
    import errno as errnos

    from s3fuse.errors import AccessDenied, CredentialsExpired, RemoteError
    from s3fuse.store import retry
    _no_ambient_credentials(monkeypatch, tmp_path)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "exported"}.items():
        monkeypatch.setenv(name, value)
    moto_backend.client.create_bucket(Bucket="expiring")
    moto_backend.client.put_object(Bucket="expiring", Key="r.txt", Body=b"data")
    cfg = build_config({"endpoint_url": faults.endpoint, "region": "us-east-1",
                        "addressing_style": "path"}, [], {})
    store = S3Store.from_config(cfg)
    etag = store.head("expiring", "r.txt").etag
    faults.error(400, code="ExpiredToken")
    for attempt in (lambda: store.head("expiring", "r.txt"),  # a HEAD's 400 has no code in it
                    lambda: store.get("expiring", "r.txt", etag),
                    lambda: store.get_whole("expiring", "r.txt", etag, 1 << 20),
                    lambda: store.put_object("expiring", "w.txt", b"x"),
                    lambda: store.put_object("expiring", "big.txt", b"x" * (1 << 20))):
        with pytest.raises(CredentialsExpired) as caught:
            attempt()
        assert caught.value.errno == errnos.EACCES and retry.is_permanent(caught.value)
        assert "S3 error ExpiredToken: the session credentials expired" in str(caught.value)
        assert "remount with fresh credentials" in str(caught.value)
    assert str(caught.value).startswith("PutObject s3://expiring/big.txt: ")
    with pytest.raises(CredentialsExpired, match=r"^HeadObject s3://expiring/r.txt: S3 error "
                                                 r"ExpiredToken: "):
        store.head("expiring", "r.txt")
    store._renewable = True  # a role's or SSO's credentials: renewed, so worth retrying
    with pytest.raises(RemoteError) as caught:
        store.put_object("expiring", "w.txt", b"x")
    assert not isinstance(caught.value, AccessDenied) and not retry.is_permanent(caught.value)


def test_a_profile_in_an_unreadable_credentials_file_says_which_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore reads an AWS file it may not open as empty: a credentials file of the wrong
    owner or mode showed only as "profile not found"."""
    from s3fuse.store.s3 import unreadable_aws_files
    creds = tmp_path / "credentials"
    creds.write_text("[lab]\naws_access_key_id = a\naws_secret_access_key = b\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert unreadable_aws_files() == ""
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != creds)
    assert unreadable_aws_files() == f" (cannot read {creds}: check its owner and mode)"
