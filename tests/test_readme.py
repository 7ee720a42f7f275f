"""The README stays true: its config reference is the one generated from utils/config.py."""

import subprocess
import sys

from utils.config import REPO_ROOT


def test_readme_config_reference_is_current():
    generated = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "config_reference.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    readme = (REPO_ROOT / "README.md").read_text()
    assert generated in readme, (
        "README config reference is stale: run tools/config_reference.py --write"
    )


def test_readme_shows_the_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
