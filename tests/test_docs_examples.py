"""The examples in README.md, CHANGELOG.md and docs/ match the code: every `s3fuse`
command and fstab line in a code block parses with the real argument parser (a flag that
does not exist, such as `umount --drain-timeout`, fails here), its `-o` options are known,
and every TOML block is a valid config (known keys, each value of its type)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from s3fuse.cli import make_parser
from s3fuse.config import SCALAR_OPTIONS, build_config, load_toml, parse_o_options

REPO = Path(__file__).parent.parent
DOCS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(kind: str) -> list[tuple[str, str]]:
    """(where, text) of every code block of `kind` ("" and "sh" are shell)."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            lang = match.group(1)
            if (kind == "sh" and lang in ("", "sh", "bash")) or lang == kind:
                line = text[:match.start()].count("\n") + 1
                found.append((f"{path.relative_to(REPO)}:{line}", match.group(2)))
    return found


def commands() -> list[tuple[str, list[str]]]:
    """Every s3fuse command line of the shell blocks, and every fstab line of type s3fuse
    as the `s3fuse mount` that mount.s3fuse makes of it, as argv."""
    from s3fuse.mounthelper import translate
    found = []
    for where, text in blocks("sh"):
        for line in text.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ").removeprefix("sudo ")
            fields = line.split()
            if len(fields) == 6 and fields[2] in ("s3fuse", "fuse.s3fuse"):  # an fstab line
                found.append((f"{where}: {line[:60]}",
                              ["s3fuse", *translate(fields[0], fields[1], fields[3])]))
            elif line.startswith("s3fuse "):
                found.append((f"{where}: {line[:60]}", shlex.split(line, comments=True)))
    return found


COMMANDS = commands()


def test_the_docs_have_commands_and_configs_to_check() -> None:
    assert len(COMMANDS) >= 15 and blocks("toml")


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses(where: str, argv: list[str]) -> None:
    try:
        args = make_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: does not parse")
    for group in getattr(args, "o", None) or []:
        parse_o_options([group])
    if args.command == "mount" and not args.config:  # its URIs and values are valid too
        cli = {k: v for k, v in vars(args).items() if k not in ("command", "o", "ready_fd",
                                                                  "default_log")}
        build_config(cli, args.o, {})


@pytest.mark.parametrize("where, text", blocks("toml"), ids=[w for w, _ in blocks("toml")])
def test_every_documented_config_is_valid(tmp_path: Path, where: str, text: str) -> None:
    config = tmp_path / "example.toml"
    config.write_text(text)
    config.chmod(0o600)
    data = load_toml(config)  # known keys, each value of its type
    for key, value in data.items():
        if key in SCALAR_OPTIONS:
            SCALAR_OPTIONS[key](value)


def test_the_shipped_example_config_is_valid(tmp_path: Path) -> None:
    config = tmp_path / "data.toml"
    config.write_text((REPO / "s3fuse" / "units" / "data.toml.example").read_text())
    config.chmod(0o600)
    assert load_toml(config)["mountpoint"] == "/mnt/data"


def test_every_documented_make_target_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    named = {line.split()[1] for _, text in blocks("sh") for line in text.splitlines()
             if line.strip().startswith("make ") and len(line.split()) > 1}
    assert named and named <= targets, named - targets


def test_the_readme_shows_the_demo_tree_the_demo_prints() -> None:
    from s3fuse.demo import instructions
    printed = [line.strip() for line in instructions(Path("demo-mnt"), ".venv/bin/s3fuse")
               .splitlines()  # as `make demo` runs it: .venv/bin/s3fuse demo
               if line.startswith("  ")]
    readme = (REPO / "README.md").read_text()
    assert all(f"\n{line}\n" in readme for line in printed), printed


def test_the_readme_quick_start_runs_as_written(tmp_path: Path, moto_backend, fuse_available) -> None:
    """The quick start's commands, run by bash against buckets shaped as it says (moto):
    only /mnt/data, the credentials and the cache dir are this test's."""
    import io
    import os
    import random
    import subprocess
    import sys
    import tarfile

    from s3fuse.demo import shard_archive

    s3 = moto_backend.client
    rng = random.Random(3)
    wav = b"RIFF" + rng.randbytes(2000)
    base = "training/123/samples"
    shard_key = f"{base}/shards/shard-00000.tar.gz"
    objects = {
        "raw-data": {"big.bin": rng.randbytes(3 << 20)},
        "ops": {"logs/2024/app.log": b"started\n"},
        "ml-data": {f"{base}/0001.wav": wav,
                    shard_key: shard_archive(shard_key, {"0002.wav": wav}, gzip=True)},
    }
    objects["ml-data"][f"{base}/manifest.jsonl"] = (
        '{"kind": "file", "key": "%s/0001.wav", "id": "0001", "meta": {"speaker": "s1"}, '
        '"size_bytes": %d}\n{"kind": "shard", "archive_key": "%s", "format": "tar", '
        '"compression": "gzip", "count": 1, "size_bytes": %d}\n'
        % (base, len(wav), shard_key, len(objects["ml-data"][shard_key]))).encode()
    for bucket, keys in objects.items():
        s3.create_bucket(Bucket=bucket)
        for key, body in keys.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert tarfile.open(fileobj=io.BytesIO(objects["ml-data"][shard_key])).getnames()[-1] == \
        "0002.wav"

    [(_, block)] = [(w, t) for w, t in blocks("sh") if "pip install ." in t and "README" in w]
    mnt = tmp_path / "data"
    mnt.mkdir()
    script = ["set -e"]
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith(("pip install", "export AWS_", "mkdir -p /mnt/data")):
            continue  # installed already; this test's credentials; its own mountpoint
        line = line.replace("/mnt/data", str(mnt))
        if line.startswith("s3fuse "):
            line = f"{sys.executable} -m {line}"
            if " mount " in line:
                line += f" --cache-dir {tmp_path / 'cache'}"
        script.append(line)
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    env = {**os.environ, **moto_backend.env(), "AWS_ENDPOINT_URL": moto_backend.endpoint}
    try:
        ran = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert ran.stdout.split()[:3] == ["logs", "raw-data", "train"]  # `ls` of the mount
    assert "user.s3exchange.id=\"0001\"" in ran.stdout
    assert s3.get_object(Bucket="raw-data", Key="results.csv")["Body"].read() == b"a,b\n1,2\n"
