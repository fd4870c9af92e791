"""Config merging and validation: every bad input is one UsageError line."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from s3fuse.config import (TOML_TYPES, build_config, check_mountpoint, parse_duration,
                           parse_manifest, parse_secrets_env, parse_size, parse_source)
from s3fuse.errors import UsageError


def test_sizes_and_durations():
    assert parse_size("20G") == 20 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1.5K") == 1536
    assert parse_size(100) == 100
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("90") == 90
    for bad in ("lots", "-1G", "1X"):
        with pytest.raises(UsageError):
            parse_size(bad)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 10**12, "3651d", "99999999999"])
def test_a_duration_past_ten_years_is_refused(bad):
    """A TOML `request_timeout = inf` was accepted and made every upload fail with
    OverflowError (no socket timeout is that long); nan passed `< 0`."""
    with pytest.raises(UsageError, match=r"^duration out of range: .* \(at most 3650d\)$"):
        parse_duration(bad)
    assert parse_duration("3650d") == 3650 * 86400


def test_source_specs():
    s = parse_source("s3://raw-data/2024/")
    assert (s.name, s.bucket, s.prefix) == ("raw-data", "raw-data", "2024/")
    s = parse_source("s3://raw-data", "raw")
    assert (s.name, s.prefix) == ("raw", "")
    for bad in ("raw-data", "s3://", "s3://a", "s3://b/../x", "http://bucket/x", "s3://bad bucket"):
        with pytest.raises(UsageError):
            parse_source(bad)


def test_manifest_default_name_is_parent_prefix_segment():
    m = parse_manifest("s3://ml/training/123/samples/manifest.jsonl")
    assert (m.name, m.bucket, m.key) == ("samples", "ml", "training/123/samples/manifest.jsonl")
    assert parse_manifest("s3://ml/top.jsonl").name == "top"
    with pytest.raises(UsageError):
        parse_manifest("s3://ml/dir/")


def test_precedence_cli_over_o_over_toml_over_env(tmp_path: Path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('endpoint_url = "http://toml:1"\ncache_size = "1G"\nmetadata_ttl = 5\n'
                        'read_only = true\nmountpoint = "/mnt/data"\n'
                        '[[source]]\nuri = "s3://raw-data/2024"\nname = "raw"\n'
                        '[[manifest]]\nuri = "s3://ml/t/1/samples/manifest.jsonl"\n')
    env = {"AWS_ENDPOINT_URL": "http://env:1"}
    cfg = build_config({"config": str(cfg_file)}, [], env)
    assert cfg.endpoint_url == "http://toml:1"
    assert cfg.cache_size == 1 << 30 and cfg.metadata_ttl == 5 and cfg.read_only
    assert cfg.mountpoint == Path("/mnt/data")
    assert [s.name for s in cfg.sources] == ["raw"] and [m.name for m in cfg.manifests] == ["samples"]
    cfg = build_config({"config": str(cfg_file), "metadata_ttl": "9"}, ["cache_size=2G,ro"], env)
    assert cfg.cache_size == 2 << 30 and cfg.metadata_ttl == 9
    assert build_config({}, [], env).endpoint_url == "http://env:1"
    assert build_config({}, [], {"S3_ENDPOINT": "http://yt:1"}).endpoint_url == "http://yt:1"


@pytest.mark.parametrize("toml, message", [
    ("bogus = 1\n", "unknown key"),
    ("cache_size = [\n", "invalid config"),
    ("[[source]]\nname = 'x'\n", "need a 'uri'"),
    ('metadata_ttl = "soon"\n', "invalid duration"),
])
def test_bad_toml(tmp_path: Path, toml: str, message: str):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(UsageError, match=message):
        build_config({"config": str(f)}, [], {})


def test_bad_inputs():
    with pytest.raises(UsageError, match="share the directory name"):
        build_config({"source": ["s3://same", "same=s3://other"]}, [], {})
    with pytest.raises(UsageError, match="cannot read config"):
        build_config({"config": "/nonexistent.toml"}, [], {})
    with pytest.raises(UsageError, match="unknown mount option"):
        build_config({}, ["frobnicate=1"], {})
    with pytest.raises(UsageError, match="sse"):
        build_config({"sse": "rot13"}, [], {})
    with pytest.raises(UsageError, match="endpoint"):
        build_config({"endpoint_url": "not a url"}, [], {})


def test_secrets_env_parsing_like_yt_framework(tmp_path: Path):
    f = tmp_path / "secrets.env"
    f.write_text("# comment\n S3_ENDPOINT = http://yt:9000 \nS3_DOWNLOAD_ACCESS_KEY=rk\n"
                 "S3_DOWNLOAD_SECRET_KEY=rs=with=equals\nS3_UPLOAD_ACCESS_KEY='uk'\n"
                 "S3_UPLOAD_SECRET_KEY=us\nexport IGNORED\n")
    f.chmod(0o600)
    values = parse_secrets_env(f)
    assert values["S3_DOWNLOAD_SECRET_KEY"] == "rs=with=equals"
    assert values["S3_UPLOAD_ACCESS_KEY"] == "'uk'"  # no unquoting, exactly as yt_framework
    cfg = build_config({"secrets_env": str(f)}, [], {})
    assert cfg.endpoint_url == "http://yt:9000"
    assert cfg.read_keys.access_key == "rk" and cfg.write_keys.secret_key == "us"
    assert "rs=with" not in repr(cfg)
    f.chmod(0o644)
    with pytest.raises(UsageError, match="group/others"):
        parse_secrets_env(f)


def test_files_that_are_not_utf8_get_one_line(tmp_path: Path):
    """A Latin-1 editor's `é` or a UTF-16 file was a UnicodeDecodeError traceback (exit 1);
    a UTF-8 BOM is fine."""
    config, secrets = tmp_path / "c.toml", tmp_path / "secrets.env"
    config.write_bytes(b'# caf\xe9\nendpoint_url = "http://127.0.0.1:9"\n')
    with pytest.raises(UsageError, match=r"invalid config .*c.toml: not UTF-8 text \(byte 5\)"):
        build_config({"config": str(config)}, [], {})
    secrets.write_bytes("S3_ENDPOINT=http://yt:9000\n".encode("utf-16"))
    secrets.chmod(0o600)
    with pytest.raises(UsageError, match=r"secrets file .*secrets.env is not UTF-8 text"):
        parse_secrets_env(secrets)
    secrets.write_bytes("\ufeffS3_ENDPOINT=http://yt:9000\n# café\n".encode())
    assert parse_secrets_env(secrets) == {"S3_ENDPOINT": "http://yt:9000"}


def test_mountpoint_checks(tmp_path: Path):
    with pytest.raises(UsageError, match="does not exist"):
        check_mountpoint(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        check_mountpoint(tmp_path / "file")
    with pytest.raises(UsageError, match="is not empty"):  # "file" is in it
        check_mountpoint(tmp_path)
    assert check_mountpoint(tmp_path, allow_non_empty=True) == tmp_path.resolve()
    (tmp_path / "empty").mkdir()
    assert check_mountpoint(tmp_path / "empty") == (tmp_path / "empty").resolve()


def test_every_option_is_documented():
    from s3fuse.config import LIST_OPTIONS, SCALAR_OPTIONS
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for key in SCALAR_OPTIONS:
        assert f"`{key}`" in doc, key
    for key in LIST_OPTIONS:
        assert f"`[[{key}]]`" in doc, key


def test_debug_modules_from_cli_o_and_toml(tmp_path: Path):
    assert build_config({"debug": "s3fuse.store,s3fuse.upload"}, [], {}).debug == (
        "s3fuse.store", "s3fuse.upload")
    assert build_config({}, ["debug=s3fuse.store:s3fuse.fs"], {}).debug == ("s3fuse.store", "s3fuse.fs")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('debug = "s3fuse.data"\n')
    assert build_config({"config": str(cfg_file)}, [], {}).debug == ("s3fuse.data",)
    with pytest.raises(UsageError, match="s3fuse modules"):  # botocore's lines carry signatures
        build_config({"debug": "botocore"}, [], {})


def test_long_option_names_are_toml_keys_and_o_options(tmp_path: Path):
    """design.md: TOML keys are the long option names with `_` for `-`: `no_posix_metadata`
    and `debug_modules` were refused (only `posix_metadata = false`, `debug` worked)."""
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('no_posix_metadata = true\ndebug_modules = "s3fuse.data"\n')
    cfg = build_config({"config": str(cfg_file)}, [], {})
    assert (cfg.posix_metadata, cfg.debug) == (False, ("s3fuse.data",))
    cfg = build_config({}, ["no_posix_metadata,debug-modules=s3fuse.store"], {})
    assert (cfg.posix_metadata, cfg.debug) == (False, ("s3fuse.store",))
    assert build_config({}, ["no_posix_metadata=false"], {}).posix_metadata is True
    cfg_file.write_text('no_posix_metadata = "yes"\n')
    with pytest.raises(UsageError, match="no_posix_metadata = 'yes': expected true or false"):
        build_config({"config": str(cfg_file)}, [], {})
    # a key and its alias both given: refused, as TOML refuses a key given twice (the
    # alias silently lost, and HEADs were sent although no_posix_metadata = true)
    for both in ('no_posix_metadata = true\nposix_metadata = true\n',
                 'debug_modules = "s3fuse.data"\ndebug = "s3fuse.store"\n'):
        cfg_file.write_text(both)
        with pytest.raises(UsageError, match=r"(no_posix_metadata and posix_metadata|"
                                             r"debug_modules and debug) both given: keep one"):
            build_config({"config": str(cfg_file)}, [], {})


@pytest.mark.parametrize("toml, message", [
    ("mountpoint = 5\n", 'mountpoint = 5: expected a string'),
    ("file_mode = 644\n", 'file_mode = 644: expected an octal string, e.g. "0644"'),
    ('read_only = "no"\n', "read_only = 'no': expected true or false"),
    ("uid = true\n", "uid = true: expected an integer"),
    ('cache_size = "lots"\n', "cache_size: invalid size 'lots'"),
    ("[[source]]\nuri = 's3://b'\nnmae = 'x'\n", r"unknown key\(s\) in \[\[source\]\]: nmae \(known: uri, name\)"),
    ("[[manifest]]\nuri = 7\n", r"\[\[manifest\]\] uri = 7: expected a string"),
    ("uid = -5\n", "uid -5 is out of range"),
])
def test_every_toml_value_is_checked_and_named(tmp_path: Path, toml: str, message: str):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(UsageError, match=message) as info:
        build_config({"config": str(f)}, [], {})
    assert "\n" not in str(info.value)


def test_typed_toml_values_that_are_right(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('file_mode = "0640"\ndir_mode = "750"\nread_only = true\nuid = 1000\n'
                 'cache_size = 1073741824\nmetadata_ttl = 1.5\n[[source]]\nuri = "s3://bucket"\n'
                 'name = "data"\n')
    cfg = build_config({"config": str(f)}, [], {})
    assert (cfg.file_mode, cfg.dir_mode, cfg.read_only, cfg.uid) == (0o640, 0o750, True, 1000)
    assert (cfg.cache_size, cfg.metadata_ttl, cfg.sources[0].name) == (1 << 30, 1.5, "data")


def test_an_out_of_range_uid_is_refused_before_mounting():
    with pytest.raises(UsageError, match="gid 4294967295 is out of range"):
        build_config({"gid": 2**32 - 1}, [], {})
    with pytest.raises(UsageError, match="uid -5 is out of range"):
        build_config({}, ["uid=-5"], {})


@pytest.mark.parametrize("key", sorted(TOML_TYPES))
def test_every_key_refuses_a_value_of_another_type(tmp_path: Path, key: str):
    """Each key with a value of a type it never takes (a table, and true where no boolean
    is meant): one line naming the key and what it expects."""
    types, what = TOML_TYPES[key]
    wrong = ["[1]", "{ a = 1 }"] + ([] if bool in types else ["true"])
    for value in wrong:
        f = tmp_path / "c.toml"
        f.write_text(f"{key} = {value}\n")
        with pytest.raises(UsageError) as info:
            build_config({"config": str(f)}, [], {})
        assert f"{key} = " in str(info.value) and what in str(info.value), (key, value)


# ---------------------------------------------------------------- credential sources

def _secrets(tmp_path: Path, text: str, name: str = "secrets.env") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_an_explicit_profile_wins_over_s3exchange_keys():
    """S3_AWS_ACCESS_KEY_ID/S3_AWS_SECRET_ACCESS_KEY (a fallback of the environment) signed
    every request although --profile named other credentials."""
    env = {"S3_AWS_ACCESS_KEY_ID": "envkey", "S3_AWS_SECRET_ACCESS_KEY": "envsecret"}
    assert build_config({}, [], env).read_keys.access_key == "envkey"
    for given in (build_config({"profile": "prod"}, [], env),
                  build_config({}, ["profile=prod"], env)):
        assert given.profile == "prod" and given.read_keys is None and given.write_keys is None


def test_profile_and_secrets_env_together_are_refused(tmp_path: Path):
    """Two explicit credential sources: the profile was ignored without a word."""
    secrets = _secrets(tmp_path, "S3_DOWNLOAD_ACCESS_KEY=dk\nS3_DOWNLOAD_SECRET_KEY=ds\n")
    with pytest.raises(UsageError, match=r"^--profile prod and --secrets-env .*secrets.env both "
                                         r"name the credentials: give one$"):
        build_config({"profile": "prod", "secrets_env": str(secrets)}, [], {})


@pytest.mark.parametrize("text", [
    "S3_DOWNLOAD_ACCESS_KEY_ID=dk\nS3_DOWNLOAD_SECRET_ACCESS_KEY=topsecret\n",  # a typo
    "S3_UPLOAD_ACCESS_KEY=uk\nS3_UPLOAD_SECRET_KEY=topsecret\n",                # uploads only
    "S3_ENDPOINT=http://yt:9000\n",                                            # no keys at all
])
def test_a_secrets_env_without_download_keys_is_refused(tmp_path: Path, text: str):
    """It was accepted, and the mount signed with whatever credentials were around."""
    secrets = _secrets(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        build_config({"secrets_env": str(secrets)}, [], {"AWS_ACCESS_KEY_ID": "ambient"})
    line = str(caught.value)
    assert line.startswith(f"secrets file {secrets} has no S3_DOWNLOAD_ACCESS_KEY and "
                           "S3_DOWNLOAD_SECRET_KEY, the keys for reads (it has")
    assert "\n" not in line and "topsecret" not in line
    if "ACCESS_KEY_ID" in text:
        assert "S3_DOWNLOAD_ACCESS_KEY_ID" in line  # what the file has instead: names only


def test_relative_paths_in_a_config_file_are_relative_to_the_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    """`secrets_env = "secrets.env"` beside /etc/s3fuse/data.toml was looked for in the
    current directory: found from /etc/s3fuse, not under systemd (cwd /)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    _secrets(etc, "S3_DOWNLOAD_ACCESS_KEY=dk\nS3_DOWNLOAD_SECRET_KEY=ds\n")
    (etc / "data.toml").write_text('secrets_env = "secrets.env"\ncache_dir = "cache"\n'
                                   'log_file = "../log/s3fuse.log"\nmountpoint = "/mnt/x"\n')
    monkeypatch.chdir("/")
    cfg = build_config({"config": str(etc / "data.toml")}, [], {})
    assert cfg.read_keys.access_key == "dk"
    assert cfg.secrets_env == etc / "secrets.env" and cfg.cache_dir == etc / "cache"
    assert cfg.log_file == etc / "../log/s3fuse.log" and cfg.mountpoint == Path("/mnt/x")
    monkeypatch.chdir(tmp_path)  # a flag's relative path stays relative to the current dir
    with pytest.raises(UsageError, match=f"^cannot read secrets file {tmp_path}/missing.env: "):
        build_config({"secrets_env": "missing.env"}, [], {})


def test_a_profiles_endpoint_is_the_lowest_layer_of_the_endpoint():
    """The endpoint a profile sets (~/.aws/config endpoint_url) is the one requests go to:
    the configuration (and so the cache identity) names it unless something else does."""
    asked: list[str | None] = []

    def profile_endpoint(profile, env):
        asked.append(profile)
        return "http://minio.lab:9000"
    assert build_config({"profile": "lab"}, [], {}, profile_endpoint).endpoint_url \
        == "http://minio.lab:9000"
    assert asked == ["lab"]
    assert build_config({"endpoint_url": "http://other:9"}, [], {},
                        profile_endpoint).endpoint_url == "http://other:9"
    assert build_config({}, [], {"S3_ENDPOINT_URL": "http://env:9"},
                        profile_endpoint).endpoint_url == "http://env:9"
    assert build_config({}, [], {}, lambda profile, env: None).endpoint_url is None


def test_a_secrets_env_that_is_no_regular_file_is_refused(tmp_path: Path):
    """`--secrets-env <(cat secrets.env)` passed the check and failed in the background
    daemon (which reads the path again); a FIFO made `s3fuse mount` wait for good."""
    fifo = tmp_path / "secrets.fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError, match=r"secrets file .*secrets.fifo is not a regular file"):
        parse_secrets_env(fifo)
