"""Parler-TTS recipe through egs/tts/ParlerTTS/run.sh, stages 1 -> 3 on the espeak-ng mini corpus
(tests/conftest.py, with its bad files) and a tiny random model folder made by the recipe's
local script: stage 1 annotates descriptions and reports the bad files, stage 2 trains, stage 3
synthesises a test list (bad lines reported by number, exit status 1, the others written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import soundfile
from parler_world import REPO

RUN = REPO / "egs" / "tts" / "ParlerTTS" / "run.sh"


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(["sh", str(RUN), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_stages_1_to_3_through_run_sh(corpora, tmp_path):
    model = tmp_path / "model"
    script = REPO / "egs" / "tts" / "ParlerTTS" / "local" / "make_tiny_random_model.py"
    subprocess.run([sys.executable, str(script), str(model)], check=True, capture_output=True)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({
        "base_config": str(REPO / "egs" / "tts" / "ParlerTTS" / "exp_config_demo.json"),
        "dataset_path": {"libritts": str(corpora["libritts"])},
        "log_dir": str(tmp_path / "exp"),
        "preprocess": {"processed_dir": str(tmp_path / "data"), "max_duration": 6},
        "model": {"pretrained": str(model)},
        "train": {"max_steps": 2, "valid_interval": 0, "save_interval": 0},
        "inference": {"max_new_tokens": 20, "batch_size": 2},
    }), encoding="utf-8")  # fmt: skip
    lines = ["A calm voice speaks slowly.|Hello there.|one", "no text field here",
             "A quick, high pitched voice.|How are you today?"]  # fmt: skip
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run("--config", str(cfg), "--stage", "1", "--stop_stage", "3", "--name", "t",
               "--infer_expt_dir", str(tmp_path / "exp" / "t"), "--infer_mode", "batch",
               "--infer_test_list_file", str(tmp_path / "list.txt"))  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]  # line 2 is bad: reported, exit status 1
    assert "Stage 1" in out and "Stage 2" in out and "Stage 3" in out
    rejected = (tmp_path / "data" / "libritts" / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) >= 4  # corrupt, zero-length, empty transcript, too long, ...
    cuts = tmp_path / "data" / "libritts" / "cuts_train.jsonl.gz"
    from lhotse import CutSet

    assert all(c.custom["description"] for c in CutSet.from_file(cuts))  # annotation wrote them
    results = [json.loads(x) for x in (tmp_path / "exp" / "t" / "result" / "batch" /
                                       "results.jsonl").read_text().splitlines()]  # fmt: skip
    assert [r["line"] for r in results if "error" in r] == [2]
    good = [r for r in results if "error" not in r]
    assert sorted(r["name"] for r in good) == ["3", "one"]
    for r in good:
        assert soundfile.info(r["output"]).samplerate == 44100


def test_node_options_checked_as_in_valle_and_a_launched_copy_runs_only_stage_2(monkeypatch):
    help_text = run("--help").stdout
    for option in ("--nproc_per_node", "--num_nodes", "--node_rank", "--master_addr",
                   "--master_port", "--infer_num_workers", "--infer_avg"):  # fmt: skip
        assert option in help_text, option
    bad = run("--stage", "1", "--num_nodes", "2", "--node_rank", "1")
    assert bad.returncode != 0 and "Stage 1" not in bad.stdout
    assert "--num_nodes 2 needs --master_addr: the host name or IP of node 0" in bad.stderr
    assert "--nproc_per_node must be a whole number >= 1 (got '0'" in run(
        "--nproc_per_node", "0").stderr  # fmt: skip
    for key, value in {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}.items():
        monkeypatch.setenv(key, value)
    bad = run("--stage", "1")  # every srun task would redo stage 1
    assert bad.returncode != 0 and "Stage 1" not in bad.stdout
    assert "srun started this script as rank 1 of 2: run only --stage 2" in bad.stderr
