"""Set-up: env.sh is sourceable and installs nothing; a second `make install` does nothing."""

import os
import subprocess

import pytest

from utils.config import REPO_ROOT


def test_env_sh_is_sourceable_from_another_directory(tmp_path):
    script = f'. "{REPO_ROOT}/env.sh" && echo "$CODECTTS_ROOT" && command -v python'
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    root, python = result.stdout.split()
    assert root == str(REPO_ROOT)
    assert python == str(REPO_ROOT / ".venv" / "bin" / "python")  # the project's venv is active


def test_env_sh_installs_nothing():
    text = (REPO_ROOT / "env.sh").read_text()
    for word in ("pip install", "apt-get", "-m venv"):
        assert word not in text


@pytest.mark.skipif(
    not (REPO_ROOT / ".venv" / ".install-stamp").exists(), reason="set up without make"
)
def test_second_install_is_a_no_op():
    # `make -q` exits 0 only when the target is up to date: nothing would be reinstalled.
    result = subprocess.run(
        ["make", "-q", "install"], cwd=REPO_ROOT, env={**os.environ, "MAKEFLAGS": ""}
    )
    assert result.returncode == 0


def test_ci_runs_make_test():
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "make test" in lines
