"""codectts: neural-codec-language-model text-to-speech (VALL-E recipe first).

`pip install -e .` installs the pinned stack from requirements.txt. The system packages
`espeak-ng` (phonemizer backend) and `sox` come from apt; `make demo` / `make test` install them.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="codectts",
    version="0.1.0",
    description="Neural codec language model TTS toolkit (VALL-E recipe)",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(
        include=["bins*", "evaluation*", "models*", "modules*", "preprocessors*", "text*", "utils*"]
    ),
    install_requires=read_requirements(),
    license="MIT",
)
