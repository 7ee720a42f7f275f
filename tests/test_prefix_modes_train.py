"""Smoke run of recipe stage 2 (`run.sh --stage 2`) in NAR prefix modes 2 and 4 on the mini
corpus's stage-1 output: finite, decreasing losses, and an exact resume across a stop.

Mode 4 takes its prompts from the dataset (another utterance of the same speaker; the custom
corpus has a single-utterance speaker, so the self-prompt fallback runs too)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train_recipe import run_sh
from train_fixtures import make_stage1, read_log, write_config

from models.tts.valle import dataset, trainer
from utils.checkpoint import list_checkpoints

STEPS = 10


def config(tmp_path: Path, stage1: dict, prefix_mode: int, max_steps: int) -> Path:
    cfg = {
        "base_config": str(stage1["config"]),
        "log_dir": str(tmp_path / "exp"),
        "model": {"text_token_num": 256, "decoder_dim": 32, "nhead": 2, "num_decoder_layers": 1,
                  "prefix_mode": prefix_mode},
        "train": {"batch_size": 4, "max_epoch": 0, "max_steps": max_steps, "base_lr": 1e-2,
                  "warmup_steps": 2, "total_training_steps": 50, "valid_interval": 0,
                  "save_interval": 5, "log_interval": 1, "num_workers": 0, "keep_last": 2,
                  "random_seed": 11, "nar_prompt_seconds": 0.5},
    }  # fmt: skip
    path = tmp_path / f"mode{prefix_mode}_{max_steps}.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def train(cfg: Path, name: str, *options: str) -> None:
    proc = run_sh("--config", str(cfg), "--name", name, "--model_train_stage", "0", *options)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("prefix_mode", [2, 4])
def test_run_sh_trains_and_resumes_exactly(tmp_path, stage1, prefix_mode):
    full_cfg = config(tmp_path, stage1, prefix_mode, STEPS)
    train(full_cfg, "full")
    # the same run, stopped after 4 steps (mid-epoch) and resumed to the end
    train(config(tmp_path, stage1, prefix_mode, 5), "part")
    train(full_cfg, "part", "--resume", "true")

    full, part = read_log(tmp_path / "exp" / "full"), read_log(tmp_path / "exp" / "part")
    assert sorted(full) == sorted(part) == list(range(1, STEPS + 1))
    steps = [full[s] for s in range(1, STEPS + 1)]
    assert all(math.isfinite(r[k]) for r in steps for k in ("loss", "ar_loss", "nar_loss"))
    ar = [r["ar_loss"] for r in steps]
    assert sum(ar[-3:]) < sum(ar[:3]), ar
    # the NAR stage is drawn per step and the stages differ a lot (the random-init codec's
    # upper streams are nearly constant): compare each stage with itself
    by_stage: dict[float, list[float]] = {}
    for r in steps:
        by_stage.setdefault(r["nar_stage"], []).append(r["nar_loss"])
    repeated = {stage: losses for stage, losses in by_stage.items() if len(losses) > 1}
    assert repeated and all(losses[-1] < losses[0] for losses in repeated.values()), by_stage
    for step in range(6, STEPS + 1):
        for key in ("loss", "ar_loss", "nar_loss", "nar_stage", "lr", "grad_norm"):
            assert full[step][key] == part[step][key], (step, key)
    a = load_file(str(list_checkpoints(tmp_path / "exp" / "full")[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "exp" / "part")[-1] / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_trainer_gives_each_epoch_new_mode4_prompts(tmp_path, monkeypatch, caplog):
    # fake stage-1 cuts carry no speaker label: each is prompted by a chunk of itself (logged)
    processed = make_stage1(tmp_path / "data", n_train=4, n_valid=1)
    train = {"max_steps": 0, "max_epoch": 2, "batch_size": 2}
    cfg = write_config(tmp_path / "c.json", processed, tmp_path / "exp", {"prefix_mode": 4}, train)
    seen: list[tuple[int, int]] = []
    draw = dataset.SpeakerPrompts.__call__

    def recording(self, cuts, codes, load):
        prompts = draw(self, cuts, codes, load)
        seen.append((self.epoch, prompts.shape[1]))
        return prompts

    monkeypatch.setattr(dataset.SpeakerPrompts, "__call__", recording)
    assert trainer.main(["--config", str(cfg), "--exp_name", "m4", "--train_stage", "2"]) == 0
    assert "4 of 4 cuts are their speaker's only utterance" in caplog.text
    # 2 train batches per epoch (+ the validation batch, always epoch 0's draws)
    assert [epoch for epoch, _ in seen if epoch == 1] == [1, 1]
    assert all(16 <= frames <= 32 for _, frames in seen)  # the fake cuts have 16..32 frames
