"""utils/parse_options.sh on its own: a tiny second recipe sources it, as new recipes will."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from utils.config import REPO_ROOT

RECIPE = """#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
. "%(root)s/utils/parse_options.sh"
help_message="Usage: tiny.sh [options]
A second recipe."
opt -c config conf.json "json5 config"
opt -s stage 1 "first recipe stage"
opt stop_stage "" "last recipe stage [same as --stage]"
opt mode "" "single or batch"
opt list_file "" "stage 2: the list"
opt_alias lst list_file
parse_options "$@"
[ -n "$stop_stage" ] || stop_stage=$stage
one_of stage 1 2 3
needs 2 mode list_file
echo "config=$config stage=$stage stop_stage=$stop_stage mode=$mode list_file=$list_file"
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    script = tmp_path_factory.mktemp("recipe") / "tiny.sh"
    script.write_text(RECIPE % {"root": REPO_ROOT})
    return script


def run(script: Path, *args: str, shell: str = "sh") -> subprocess.CompletedProcess:
    return subprocess.run(
        [shell, str(script), *args], capture_output=True, text=True, timeout=30, cwd="/"
    )


def values(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(item.split("=", 1) for item in result.stdout.split())


def test_defaults_long_short_equals_and_alias(tiny):
    assert values(run(tiny)) == {
        "config": "conf.json", "stage": "1", "stop_stage": "1", "mode": "", "list_file": "",
    }  # fmt: skip
    got = values(run(tiny, "-c", "x.json", "--stage=2", "--mode", "-1", "--lst", "a=b"))
    assert got == {
        "config": "x.json", "stage": "2", "stop_stage": "2", "mode": "-1", "list_file": "a=b",
    }  # fmt: skip
    assert values(run(tiny, "--config="))["config"] == ""  # an empty value is a value


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nope", "1"], "unknown option '--nope'"),
        (["--nope=1"], "unknown option '--nope'"),
        (["-z", "1"], "unknown option '-z'"),
        (["--stage"], "option --stage needs a value"),
        (["-s"], "option -s needs a value"),
        (["stray"], "unexpected argument 'stray'"),
        (["--stage", "4"], "--stage must be 1, 2 or 3 (got '4')"),
        (["--stage", "2"], "(tiny.sh:16:main) ERROR: stage 2 needs --mode"),
        (["-s", "2", "--mode", "m"], "stage 2 needs --list_file"),
    ],
)
def test_errors_name_the_option_and_nothing_runs(tiny, args, message):
    result = run(tiny, *args)
    assert result.returncode != 0
    assert message in result.stderr and "ERROR" in result.stderr
    assert "config=" not in result.stdout


def test_help_lists_every_option_with_default_and_help(tiny):
    result = run(tiny, "--help", "--nope")  # help wins where it stands: the rest is not parsed
    assert result.returncode == 0 and result.stdout.startswith("Usage: tiny.sh [options]\n")
    lines = result.stdout.splitlines()
    for flag, text in [
        ("-c, --config", "json5 config [conf.json]"),
        ("-s, --stage", "first recipe stage [1]"),
        ("--stop_stage", "last recipe stage [same as --stage]"),
        ("--mode", "single or batch"),
        ("--list_file", "stage 2: the list (alias: --lst)"),
        ("-h, --help", "print this help and exit"),
    ]:
        assert any(flag in line and line.rstrip().endswith(text) for line in lines), flag
    assert run(tiny, "-h").stdout == result.stdout and "config=" not in result.stdout


@pytest.mark.parametrize(
    "declaration, message",
    [
        ('opt stage 2 "again"', "--stage is declared twice"),
        ('opt Bad "" "x"', "bad option name 'Bad'"),
        ('opt -c other "" "x"', "-c is taken"),
        ('opt onlyname ""', "expected [-x] NAME DEFAULT HELP"),
        ("opt_alias x undeclared", "--undeclared is not declared"),
    ],
)
def test_declaration_mistakes_fail_loudly(tmp_path, declaration, message):
    script = tmp_path / "bad.sh"
    recipe = RECIPE.replace('parse_options "$@"', declaration + '\nparse_options "$@"')
    script.write_text(recipe % {"root": REPO_ROOT})
    result = run(script)
    assert result.returncode != 0 and message in result.stderr


def test_sourcing_from_dash_fails_clearly(tmp_path):
    script = tmp_path / "dash.sh"
    script.write_text(f'. "{REPO_ROOT}/utils/parse_options.sh"\necho parsed\n')
    result = run(script, shell="sh")  # no re-exec line: dash itself sources the library
    assert result.returncode != 0 and "needs bash" in result.stderr
    assert "parsed" not in result.stdout


def test_log_names_the_calling_script_and_line(tmp_path):
    script = tmp_path / "logs.sh"
    script.write_text(f'. "{REPO_ROOT}/utils/parse_options.sh"\n\nlog "hello"\n')
    result = run(script, shell="bash")
    assert result.returncode == 0 and "(logs.sh:3:main) hello" in result.stdout
