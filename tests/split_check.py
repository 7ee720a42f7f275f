"""The check every recipe's stage-3 split test makes: a run over several worker processes wrote
the same folder as a one-device run, line for line (models/base/inference_split.py)."""

from __future__ import annotations

import json
from pathlib import Path

TIMING = {"wall_time", "rtf", "batch_size", "output"}  # differ between runs / folders by nature


def run_records(run_dir: Path) -> list[dict]:
    """results.jsonl's records; the workers' part files were merged and removed."""
    assert not list(run_dir.glob(".results.jsonl.worker-*"))
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def assert_same_run(one: Path, two: Path) -> list[dict]:
    """Two run folders hold the same results, line for line, and the same audio; one's records."""
    a, b = run_records(one), run_records(two)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in TIMING} == {
            k: v for k, v in y.items() if k not in TIMING
        }
        if "output" in x:
            assert Path(x["output"]).read_bytes() == Path(y["output"]).read_bytes(), x["line"]
    assert sorted(p.name for p in one.glob("*.wav")) == sorted(p.name for p in two.glob("*.wav"))
    return a
