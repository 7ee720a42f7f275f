"""`run.sh --stage 3 --stop_stage 4`: stage 4 scores the folder stage 3 just wrote, with SIM-r
through the experiment's (random-init) codec and the summary in the experiment's tensorboard."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from test_inference import TEXTS, world  # noqa: F401  (stage 3's tiny experiment fixture)

from utils.config import REPO_ROOT

RUN_SH = REPO_ROOT / "egs" / "tts" / "VALLE" / "run.sh"


def test_stage4_needs_an_input_dir_unless_stage3_runs():
    result = subprocess.run(["sh", str(RUN_SH), "--stage", "4"], capture_output=True, text=True)
    assert result.returncode != 0 and "needs --eval_input_dir" in result.stderr


def test_run_sh_stage_3_then_4(world, tmp_path):  # noqa: F811
    recipe = tmp_path / "recipe.json"
    offline = {"asr": "pocketsphinx", "sim": "resemblyzer", "mos": "none"}
    recipe.write_text(json.dumps({"base_config": str(world["recipe"]), "evaluation": offline}))
    test_list = tmp_path / "list.txt"
    test_list.write_text(f"{TEXTS[0]}|prompt {TEXTS[1]}|{world['prompts'] / 'a.wav'}|u0\n")
    out = tmp_path / "out"
    args = ["--config", str(recipe), "--stage", "3", "--stop_stage", "4", "--infer_mode", "batch"]
    args += ["--infer_expt_dir", str(world["exp"]), "--infer_test_list_file", str(test_list)]
    proc = subprocess.run(
        ["sh", str(RUN_SH), *args, "--infer_output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-3000:]
    assert f"Stage 4: evaluation of {out / 'batch'}" in logs
    summary = json.loads((out / "batch" / "eval" / "summary.json").read_text())
    assert summary["n"] == 1 and summary["n_failed"] == 0
    assert summary["wer"] is not None and summary["sim_o"] is not None
    assert summary["sim_r"] is not None  # run.json named the weights: their codec resynthesised
    assert "random_init" in summary["backends"]["sim_r"]
    assert summary["dnsmos_ovrl"] is None  # --mos none: not computed, not printed
    assert "RANDOM-INIT codec" in logs and "so are these numbers" in logs
    assert "| n/a |" in (out / "batch" / "eval" / "summary.md").read_text()
    events = list((world["exp"] / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "stage 4 wrote no tensorboard scalars into the experiment"


def test_run_sh_stage4_options_override_the_config(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    wav = folder / "a.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "we will go home now"], check=True)
    rec = {"name": "a", "text": "we will go home now", "text_prompt": "p",
           "audio_prompt": str(wav), "output": str(wav)}  # fmt: skip
    (folder / "results.jsonl").write_text(json.dumps(rec) + "\n")
    options = ["--eval_asr", "pocketsphinx", "--eval_sim", "resemblyzer", "--eval_mos", "none"]
    proc = subprocess.run(  # config/valle.json says whisper + wavlm: the options win
        ["sh", str(RUN_SH), "--config", str(REPO_ROOT / "config" / "valle.json"), "--stage", "4",
         "--eval_input_dir", "in", "--eval_output_dir", "out", *options],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())  # relative to the cwd
    assert summary["n"] == 1 and summary["backends"]["mos"] == "none"
    assert summary["backends"]["asr"].startswith("pocketsphinx")
    assert summary["backends"]["sim"].startswith("resemblyzer")
    assert summary["sim_o"] == pytest.approx(1.0, abs=1e-4)  # the output is its own prompt
