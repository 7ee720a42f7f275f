"""Stage 1 split over jobs (bins/tts/preprocess.py --nj N --job_index I, then the merge): the
same output as one run, and a merge that names what is missing, whose job it is and what to run."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import write_config

from bins.tts import preprocess
from utils.cut_shards import read_cuts, split_stems

pytestmark = pytest.mark.filterwarnings("ignore:RANDOM-INIT CODEC")


def _done(processed: Path) -> set[str]:
    return {p.name for p in processed.glob("*/acoustic_tokens/*.done")}


def _manifest_texts(processed: Path) -> dict[str, str]:
    """Every manifest and index of the processed dir, the folder's own path taken out."""
    texts = {}
    for path in sorted(processed.glob("*/cuts_*")):
        raw = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
        texts[str(path.relative_to(processed))] = raw.replace(str(processed), "<processed>")
    return texts


def test_three_jobs_then_merge_equal_one_run_and_a_missing_job_is_named(
    stage1, corpora, tmp_path, capsys, caplog
):
    processed = tmp_path / "processed"
    cfg = str(write_config(tmp_path / "cfg.json", corpora, processed))
    total = len(_done(stage1["processed"]))
    assert total >= 4  # enough shards for every job to own some
    done = {}
    for job in (0, 2):
        assert preprocess.main(["--config", cfg, "--nj", "3", "--job_index", str(job)]) == 0
        done[job] = _done(processed) - set().union(*done.values())
        assert done[job]  # the job encoded its shards ...
    assert not list(processed.glob("*/cuts_*"))  # ... and merged nothing
    assert not (processed / "stage1.done.json").exists()
    capsys.readouterr()

    assert preprocess.main(["--config", cfg, "--nj", "3"]) == 1  # job 1 has not run
    err = capsys.readouterr().err
    assert "shards are missing or incomplete" in err
    assert f"--config {cfg} --nj 3 --job_index 1" in err and "job 1 of 3" in err
    assert "job 0 of 3" not in err and "job 2 of 3" not in err
    assert not list(processed.glob("*/cuts_*"))

    assert preprocess.main(["--config", cfg, "--nj", "3", "--job_index", "1"]) == 0
    assert len(_done(processed)) == total
    assert preprocess.main(["--config", cfg, "--nj", "3"]) == 0  # the merge
    # the same shards (fingerprints), manifests and index (paths aside), codes bit for bit
    assert _done(processed) == _done(stage1["processed"])
    assert _manifest_texts(processed) == _manifest_texts(stage1["processed"])
    for name in ("libritts", "custom"):
        for stem in split_stems(stage1["processed"] / name):
            ours = {c.id: c for c in read_cuts(processed / name, stem)}
            for cut in read_cuts(stage1["processed"] / name, stem):
                assert np.array_equal(ours[cut.id].load_codes(), cut.load_codes()), cut.id
    record = json.loads((processed / "stage1.done.json").read_text())
    reference = json.loads((stage1["processed"] / "stage1.done.json").read_text())
    assert record["summaries"] == reference["summaries"]
    # a job run again after the merge: nothing to do
    with caplog.at_level("INFO", logger="preprocess"):
        assert preprocess.main(["--config", cfg, "--nj", "3", "--job_index", "0"]) == 0
    assert "nothing to do" in caplog.text


def test_job_options_are_checked(corpora, tmp_path, capsys):
    cfg = str(write_config(tmp_path / "cfg.json", corpora, tmp_path / "processed"))
    assert preprocess.main(["--config", cfg, "--job_index", "0"]) == 1
    assert "--job_index 0 needs --nj > 1" in capsys.readouterr().err
    assert preprocess.main(["--config", cfg, "--nj", "2", "--job_index", "2"]) == 1
    assert "--job_index 2 is outside 0 .. 1" in capsys.readouterr().err


def test_run_sh_passes_nj_and_job_index(corpora, tmp_path):
    run_sh = Path(__file__).resolve().parents[1] / "egs" / "tts" / "VALLE" / "run.sh"
    assert "--job_index" in subprocess.run(["sh", str(run_sh), "--help"], capture_output=True,
                                           text=True, check=True).stdout  # fmt: skip
    cfg = str(write_config(tmp_path / "cfg.json", corpora, tmp_path / "processed"))
    out = subprocess.run(
        ["sh", str(run_sh), "--stage", "1", "--config", cfg, "--nj", "2", "--job_index", "5"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode != 0 and "--job_index 5 is outside 0 .. 1 (--nj 2)" in out.stderr
