"""The man page and the shell completions are generated from the argument parser by
`make man` (and installed by `make install`): every command and option is in them."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3fuse.cli import make_parser

REPO = Path(__file__).parent.parent


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings
            if action.help != argparse.SUPPRESS and flag.startswith("--") and flag != "--help"}


def build_manual(out: Path) -> Path:
    """`make man` into `out` (man/s3fuse.1, completion/...), with this interpreter's venv."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed (the Makefile is how s3fuse is set up)")
    venv = Path(sys.executable).parent.parent
    res = subprocess.run(["make", "-s", "-C", str(REPO), "man", f"MAN_DIR={out}",
                          f"VENV={venv}", f"PY={sys.executable}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_manual(tmp_path_factory.mktemp("manual"))


def test_the_man_page_has_every_command_and_mount_option(built: Path) -> None:
    page = (built / "man" / "s3fuse.1").read_text()
    assert page.startswith(".TH S3FUSE \"1\"") and "s3fuse \\- mount S3 buckets" in page
    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"\\fI\\,{name}\\/\\fR" in page, name
        for flag in options_of(command):
            assert flag.replace("-", "\\-") in page, (name, flag)
    if shutil.which("groff"):
        render = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z",
                                 str(built / "man" / "s3fuse.1")], capture_output=True, text=True)
        assert render.returncode == 0 and not render.stderr, render.stderr


def test_the_completions_know_every_mount_option(built: Path) -> None:
    bash = built / "completion" / "s3fuse.bash"
    assert subprocess.run(["bash", "-n", str(bash)]).returncode == 0
    mount = make_parser()._subparsers._group_actions[0].choices["mount"]  # type: ignore[union-attr]
    for path in (bash, built / "completion" / "_s3fuse"):
        text = path.read_text()
        missing = [flag for flag in options_of(mount) if flag not in text]
        assert not missing, (path.name, missing)
    assert (built / "completion" / "_s3fuse").read_text().startswith("#compdef s3fuse")
