"""Recipe stage 2 end to end on real stage-1 output (espeak-ng corpora, random-init codec):
`run.sh --stage 2` trains the AR decoder, then the NAR decoders from the AR run; plus gradient
accumulation. (The multi-GPU launch is tested in test_launch.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_stage1, read_log, write_config

from models.base import trainer as engine
from models.base.train_data import largest_batch
from models.tts.valle import trainer
from utils.checkpoint import list_checkpoints, read_best, read_meta
from utils.config import load_config
from utils.cut_shards import read_cuts

REPO = Path(__file__).resolve().parents[1]


def recipe_config(tmp_path: Path, stage1: dict) -> Path:
    cfg = {
        "base_config": str(stage1["config"]),
        "log_dir": str(tmp_path / "exp"),
        "model": {"text_token_num": 256, "decoder_dim": 32, "nhead": 2, "num_decoder_layers": 1,
                  "prefix_mode": 1},
        "train": {"batch_size": 4, "max_epoch": 2, "base_lr": 1e-3, "warmup_steps": 2,
                  "total_training_steps": 50, "valid_interval": 3, "save_interval": 3,
                  "log_interval": 1, "num_workers": 0, "keep_last": 1},
    }  # fmt: skip
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def run_sh(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "egs/tts/VALLE/run.sh", "--stage", "2", *options],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())},
    )  # fmt: skip


@pytest.mark.slow
def test_run_sh_stage2_ar_then_nar_on_stage1_output(tmp_path, stage1):
    cfg = recipe_config(tmp_path, stage1)
    ar = run_sh("--config", str(cfg), "--name", "ar", "--model_train_stage", "1")
    assert ar.returncode == 0, ar.stdout[-3000:] + ar.stderr[-3000:]
    assert "Successfully finished" in ar.stdout + ar.stderr
    ar_exp = tmp_path / "exp" / "ar"
    ckpts = list_checkpoints(ar_exp)
    assert ckpts and read_meta(ckpts[-1])["train_stage"] == 1
    # keep_last 1 + the best one by validation loss
    assert len(ckpts) <= 2 and read_best(ar_exp) in ckpts
    assert read_meta(read_best(ar_exp))["valid_loss"] is not None
    assert (ar_exp / "symbols.dict").read_bytes() == (
        stage1["processed"] / "symbols.dict"
    ).read_bytes()
    steps = read_log(ar_exp)
    assert steps and all("ar_top10_acc" in r for r in steps.values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(ar_exp / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/ar_loss", "train/ar_top10_acc", "train/lr", "train/grad_norm",
                "train/frames_per_s", "valid/loss", "valid/ar_top10_acc"):  # fmt: skip
        assert tag in tags, tags
    assert len(events.Scalars("train/ar_loss")) == len(steps)
    audio = events.Tags()["audio"]  # training-time listening (models/tts/valle/listening.py)
    assert any(t.startswith("listen/") and not t.endswith("/reference") for t in audio), audio

    nar = run_sh("--config", str(cfg), "--name", "nar", "--model_train_stage", "2",
                 "--ar_model_ckpt_dir", str(ar_exp))  # fmt: skip
    assert nar.returncode == 0, nar.stdout[-3000:] + nar.stderr[-3000:]
    a = load_file(str(ckpts[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "exp" / "nar")[-1] / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("ar_"))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("nar_"))


def test_gradient_accumulation_steps_and_epoch_tail(tmp_path):
    torch.set_num_threads(1)
    processed = make_stage1(tmp_path / "data", n_train=8, n_valid=2)
    # 8 cuts / batch 3 = 3 batches per epoch; accumulating 2: steps of 2 batches and 1 (the tail)
    train = {"max_steps": 0, "max_epoch": 2, "gradient_accumulation_step": 2}
    cfg = write_config(tmp_path / "c.json", processed, tmp_path / "exp", train=train)
    assert trainer.main(["--config", str(cfg), "--exp_name", "acc"]) == 0
    log = read_log(tmp_path / "exp" / "acc")
    assert sorted(log) == [1, 2, 3, 4]
    cuts = read_cuts(processed / "libritts", "train")
    frames = sum(len(c.codes.load()) for c in cuts)
    assert log[1]["frames"] + log[2]["frames"] == frames == log[3]["frames"] + log[4]["frames"]
    # 6 cuts of >= 16 frames vs 2 cuts of <= 32 frames
    assert log[1]["frames"] > log[2]["frames"] and log[3]["frames"] > log[4]["frames"]


def test_gradient_checkpointing_trains_the_same(tmp_path):
    # recomputed activations replay the same dropout masks: same losses and gradient norms
    torch.set_num_threads(1)
    processed = make_stage1(tmp_path / "data", n_train=6, n_valid=1)
    logs = []
    for flag in (False, True):
        train = {"max_steps": 3, "gradient_checkpointing": flag}
        cfg = write_config(tmp_path / f"{flag}.json", processed, tmp_path / "exp", train=train)
        model, _ = trainer.build_model(load_config(cfg), 0, None)
        assert model.ar_decoder.gradient_checkpointing is flag
        assert (
            trainer.main(["--config", str(cfg), "--exp_name", f"gc{flag}", "--train_stage", "0"])
            == 0
        )
        logs.append(read_log(tmp_path / "exp" / f"gc{flag}"))
    for step in (1, 2, 3):
        for key in ("loss", "grad_norm"):
            assert logs[1][step][key] == pytest.approx(logs[0][step][key], rel=1e-5), (step, key)


def test_batches_too_short_for_the_nar_prefix_train(tmp_path):
    # prefix_mode 1 draws randint(int(0.25 * min(y_lens)), ...): Amphion crashes below 4 frames
    processed = make_stage1(tmp_path / "data", n_train=4, n_valid=1, frames=(2, 3))
    train = {"max_steps": 2}
    cfg = write_config(tmp_path / "c.json", processed, tmp_path / "exp", train=train)
    settings = json.loads(cfg.read_text())
    settings["preprocess"]["min_duration"] = 0.0  # 3 frames = 0.04 s
    cfg.write_text(json.dumps(settings))
    assert trainer.main(["--config", str(cfg), "--exp_name", "short", "--train_stage", "2"]) == 0
    log = read_log(tmp_path / "exp" / "short")
    assert sorted(log) == [1, 2] and all(r["nar_loss"] > 0 for r in log.values())


def test_largest_batch_and_out_of_memory_advice(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from models.tts.valle.dataset import VALLEDataset
    from text.symbol_table import TextTokenizer

    processed = make_stage1(tmp_path / "data", n_train=8, n_valid=1, frames=(10, 60))
    cfg = load_config(write_config(tmp_path / "c.json", processed, tmp_path / "exp"))
    cuts = read_cuts(processed / "libritts", "train")
    frames = sorted((len(c.codes.load()) for c in cuts), reverse=True)
    assert [len(c.codes.load()) for c in largest_batch(cuts, cfg)] == frames[:3]
    cfg.train.use_dynamic_batchsize, cfg.train.max_tokens = True, frames[0] + frames[1]
    assert [len(c.codes.load()) for c in largest_batch(cuts, cfg)] == frames[:2]

    def out_of_memory(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine, "batch_loss", out_of_memory)
    dataset = VALLEDataset(TextTokenizer.from_file(processed / "symbols.dict"))
    run = SimpleNamespace(
        cfg=cfg, accelerator=SimpleNamespace(device=torch.device("cpu")),
        train_loader=SimpleNamespace(dataset=dataset), model=torch.nn.Linear(1, 1),
        optimizer=SimpleNamespace(state={}), trainable=[],
    )  # fmt: skip
    with pytest.raises(trainer.TrainingError) as err:
        engine.check_largest_batch_fits(run, cuts)
    message = str(err.value)
    assert f"2 utterances, {frames[0] + frames[1]} frames" in message
    assert f"lower train.max_tokens (now {frames[0] + frames[1]})" in message


def default_recipe_config(tmp_path: Path, processed: Path, **train) -> Path:
    """egs/tts/VALLE/exp_config.json as shipped (dynamic batching: max_tokens 4000, max_sentences
    10, num_buckets 10), only the paths and the model size changed (+ `train`: length, accum)."""
    cfg = {
        "base_config": str(REPO / "egs" / "tts" / "VALLE" / "exp_config.json"),
        "log_dir": str(tmp_path / "exp"),
        "preprocess": {"processed_dir": str(processed)},
        "model": {"decoder_dim": 32, "nhead": 2, "num_decoder_layers": 1},
        "train": train,
    }
    path = tmp_path / "default.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def sigterm_run_sh(after_steps: int, *options: str) -> str:
    """run.sh --stage 2; SIGTERM to the trainer (run.sh's child) once `after_steps` steps are
    logged, as `kill PID` would; returns the output."""
    exp = Path(options[options.index("--config") + 1]).parent / "exp"
    log = exp / options[options.index("--name") + 1] / "train_log.jsonl"
    proc = subprocess.Popen(
        ["bash", "egs/tts/VALLE/run.sh", "--stage", "2", *options], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())},
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and (
            not log.exists() or len(log.read_text().splitlines()) < after_steps
        ):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_run_sh_default_dynamic_batching_small_split_resumes_exactly(tmp_path, accum):
    # 42 train / 8 valid utterances (issue 16): fewer than the 10 buckets x 10 sentences
    processed = make_stage1(tmp_path / "data", n_train=42, n_valid=8, frames=(40, 90))
    train = {"max_epoch": 6} | ({"gradient_accumulation_step": accum} if accum > 1 else {})
    cfg = str(default_recipe_config(tmp_path, processed, **train))
    common = ("--config", cfg, "--model_train_stage", "0")
    full = run_sh(*common, "--name", "full")
    out = full.stdout + full.stderr
    assert full.returncode == 0, out[-3000:]
    assert "train: dynamic batches with 4 duration buckets (42 cuts fill 4" in out
    assert "valid: dynamic batches with no duration buckets (8 cuts fill 0" in out

    stopped = sigterm_run_sh(4, *common, "--name", "part")
    assert "Training stopped by SIGTERM" in stopped
    resumed = run_sh(*common, "--name", "part", "--resume", "true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    full_log, part_log = read_log(tmp_path / "exp" / "full"), read_log(tmp_path / "exp" / "part")
    assert full_log == part_log and len(full_log) > 3
    a = load_file(str(list_checkpoints(tmp_path / "exp" / "full")[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "exp" / "part")[-1] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
