"""Checkpoint averaging for stage 3 (utils/checkpoint_average.py, run.sh --infer_avg) on the tiny
stage-3 experiment of tests/inference_world.py (two checkpoints of one model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from inference_world import (
    CKPT_NEW,
    CKPT_OLD,
    TEXTS,
    build_world,
    read_records,
    run_sh,
    save_tiny_checkpoint,
    tiny_model,
)
from safetensors.torch import load_file, save_file

from models.tts.valle.inference import find_model_source, load_model
from utils.checkpoint import CheckpointError, resolve_checkpoint
from utils.checkpoint_average import average_weights, checkpoints_to_average
from utils.config import load_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("stage3_avg"))
    world["old"] = (world["exp"] / "checkpoint" / CKPT_OLD).resolve()
    world["new"] = (world["exp"] / "checkpoint" / CKPT_NEW).resolve()
    return world


def _safetensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_the_mean_of_two_checkpoints_is_the_mean_of_their_safetensors(world):
    latest = resolve_checkpoint(world["exp"])
    folders = checkpoints_to_average(latest, "2")
    assert folders == [world["old"], world["new"]]  # by step, ending at the latest
    assert checkpoints_to_average(latest, f"{CKPT_OLD}, {world['new']}") == folders  # a list
    a, b = _safetensors(world["old"]), _safetensors(world["new"])
    mean = average_weights(folders)
    assert set(mean) == set(a) == set(b)
    for key in a:
        assert mean[key].dtype == torch.float32
        assert torch.equal(mean[key], (a[key].float() + b[key].float()) / 2), key
    assert not torch.equal(mean["ar_predict_layer.weight"], a["ar_predict_layer.weight"])
    # The model stage 3 decodes with holds exactly those weights.
    recipe = load_config(world["recipe"])
    source = find_model_source(world["exp"], "latest", recipe, "2")
    assert source.checkpoints == tuple(folders)
    state = load_model(source).state_dict()
    for key, value in mean.items():
        assert torch.equal(state[key], value), key


def test_avg_1_is_the_plain_checkpoint(world):
    for which, folder in (("latest", world["new"]), ("best", world["old"])):
        found = resolve_checkpoint(world["exp"], which)
        assert [p.resolve() for p in checkpoints_to_average(found, "1")] == [folder]
        plain = _safetensors(folder)
        same = average_weights([folder])
        assert set(same) == set(plain)
        assert all(
            same[k].dtype == plain[k].dtype and torch.equal(same[k], plain[k]) for k in plain
        )


def test_averaging_refuses_what_does_not_fit(world, tmp_path):
    latest = resolve_checkpoint(world["exp"])
    with pytest.raises(
        CheckpointError, match=f"has 2 checkpoint.*{CKPT_OLD}, {CKPT_NEW}.*at most 2"
    ):
        checkpoints_to_average(latest, "3")
    best = resolve_checkpoint(world["exp"], "best")  # nothing before the best (oldest) one
    with pytest.raises(CheckpointError, match=f"has 1 checkpoint.*up to {CKPT_OLD}"):
        checkpoints_to_average(best, "2")
    with pytest.raises(CheckpointError, match="listed twice"):
        checkpoints_to_average(latest, f"{CKPT_OLD},{CKPT_OLD}")
    with pytest.raises(CheckpointError, match=f"'nope' is neither.*{CKPT_OLD}, {CKPT_NEW}"):
        checkpoints_to_average(latest, "nope")
    # Another model (config), other tensor names, another shape: refused naming the checkpoints.
    exp = tmp_path / "exp"
    shutil.copytree(world["exp"], exp)
    cfg = world["cfg"].model
    other = type(cfg)(**{**cfg.__dict__, "nhead": 4})  # same shapes, another model
    save_tiny_checkpoint(exp, "epoch-0003_step-0000030_loss-3.000000", tiny_model(2, other), other)
    with pytest.raises(CheckpointError, match=f"{CKPT_NEW} describes another model.*model.nhead"):
        checkpoints_to_average(resolve_checkpoint(exp), "2")
    state = _safetensors(world["new"])
    for name, broken in (
        ("names", {k: v for k, v in state.items() if k != "ar_predict_layer.weight"}),
        ("shape", {**state, "ar_predict_layer.weight": torch.zeros(3, 3)}),
    ):
        folder = tmp_path / name  # weights only: average_weights reads folders
        shutil.copytree(world["new"], folder)
        save_file(broken, str(folder / "model.safetensors"))
        expected = "different tensor names" if name == "names" else "'ar_predict_layer.weight' has"
        with pytest.raises(CheckpointError, match=f"cannot average .*{CKPT_OLD} and .*{expected}"):
            average_weights([world["old"], folder])


def test_a_release_averages_nothing(tmp_path, world):
    release = tmp_path / "release"
    (release / "checkpoint" / "only").mkdir(parents=True)
    shutil.copy(world["new"] / "model.safetensors", release / "checkpoint" / "only")
    (release / "args.json").write_text(json.dumps({"model": {"decoder_dim": 16}}))
    found = resolve_checkpoint(release)
    assert found.kind == "release"
    assert checkpoints_to_average(found, "1") == [release / "checkpoint" / "only"]
    with pytest.raises(CheckpointError, match="released model with one checkpoint.*--infer_avg 1"):
        checkpoints_to_average(found, "2")


def test_run_sh_records_the_averaged_checkpoints(world, tmp_path):
    out = tmp_path / "out"
    proc = run_sh(world, out, "--infer_mode", "single", "--infer_text", TEXTS[0],
                  "--infer_text_prompt", "prompt " + TEXTS[1],
                  "--infer_audio_prompt", str(world["prompts"] / "a.wav"),
                  "--infer_avg", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    names = [str(world["old"]), str(world["new"])]
    assert f"weights: the mean of {', '.join(names)}" in logs
    (record,) = read_records(out / "single" / "results.jsonl")
    assert record["checkpoints"] == names
    assert json.loads((out / "single" / "run.json").read_text())["checkpoints"] == names
    proc = run_sh(world, out, "--infer_mode", "single", "--infer_text", TEXTS[0],
                  "--infer_text_prompt", "prompt " + TEXTS[1],
                  "--infer_audio_prompt", str(world["prompts"] / "a.wav"),
                  "--infer_avg", "5")  # fmt: skip
    assert proc.returncode == 1
    assert "--infer_avg 5:" in proc.stderr and "Traceback" not in proc.stderr
