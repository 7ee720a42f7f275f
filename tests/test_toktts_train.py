"""TokTTS recipe stage 2 on the engine (bins/tts/toktts_train.py, models/tts/toktts/trainer.py)
over a fake stage-1 output (random codes, no codec run): the recipe learns (greedy decoding of
the trained checkpoint gives back a training utterance's codes), resume is bit-exact, the
run.sh resume hint has no VALL-E option, and bad stage-1 data are refused naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import CutSet, MonoCut, SupervisionSegment
from lhotse.features.io import NumpyFilesWriter
from train_fixtures import check_ok, last_weights

from models.tts.toktts.decode import generate
from models.tts.toktts.model import CharTable, TokTTS
from utils.checkpoint import list_checkpoints, load_training_state, load_weights
from utils.config import REPO_ROOT
from utils.toktts_config import load_toktts_config

TEXTS = ["hello world.", "a cat sat", "no, not here!", "the sun", "ten hens", "we ran"]
MODEL = {
    "vocab_size": 32,
    "dim": 64,
    "nhead": 2,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "dropout": 0.1,
    "max_audio_seconds": 0.2,
}  # fmt: skip  15 frames = 30 tokens


def fake_stage1(root: Path, lengths: list[int], seed: int = 0) -> Path:
    """chars.json, config.json, stage1.done.json, codec/codec.json and ljspeech/cuts_*.jsonl.gz
    with random (frames, 2) codes: what check_stage1 and the dataset read."""
    rng = np.random.default_rng(seed)
    (root / "codec").mkdir(parents=True)
    (root / "codec" / "codec.json").write_text('{"source": "fake", "num_quantizers": 2}')
    (root / "stage1.done.json").write_text('{"format": "codectts-toktts-stage1-1"}')
    (root / "config.json").write_text(json.dumps({"model": {**MODEL, "frame_rate": 75,
                                                            "num_codebooks": 2}}))  # fmt: skip
    CharTable.from_texts(TEXTS).save(root / "chars.json")
    (root / "ljspeech").mkdir()
    with NumpyFilesWriter(str(root / "ljspeech" / "codes")) as writer:
        for split, items in (("train", lengths), ("valid", lengths[:1])):
            cuts = []
            for i, frames in enumerate(items):
                cut_id = f"{split}{i}"
                sup = SupervisionSegment(cut_id, cut_id, 0.0, frames * 320 / 24000,
                                         text=TEXTS[i % len(TEXTS)])  # fmt: skip
                cut = MonoCut(cut_id, 0.0, frames * 320 / 24000, 0, supervisions=[sup])
                codes = rng.integers(0, 1024, size=(frames, 2)).astype(np.int16)
                cut.codes = writer.store_array(cut_id, codes, frame_shift=320 / 24000,
                                               temporal_dim=0)  # fmt: skip
                cuts.append(cut)
            CutSet.from_cuts(cuts).to_file(root / "ljspeech" / f"cuts_{split}.jsonl.gz")
    return root


def write_config(path: Path, processed: Path, **train) -> Path:
    cfg = {"base_config": str(REPO_ROOT / "config" / "toktts.json"),
           "log_dir": str(path.parent / "exp"), "preprocess": {"processed_dir": str(processed)},
           "model": MODEL,
           "train": {"batch_size": 3, "max_epoch": 0, "max_steps": 8, "base_lr": 3e-3,
                     "warmup_steps": 2, "total_training_steps": 200, "valid_interval": 0,
                     "save_interval": 0, "log_interval": 1, "num_workers": 0, "keep_last": 2,
                     "random_seed": 3, **train}}  # fmt: skip
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def train(cfg: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, str(REPO_ROOT / "bins/tts/toktts_train.py"), "--config", str(cfg),
           "--exp_name", name, *extra]  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    # 8 cuts / batch 3 = 3 batches per epoch: step 4 is in the middle of epoch 1
    return fake_stage1(tmp_path_factory.mktemp("toktts") / "data", [9, 20, 12, 6, 15, 11, 8, 14])


def test_resume_is_bit_exact_and_its_hint_is_a_toktts_command(tmp_path, processed):
    full = write_config(tmp_path / "full.json", processed, max_steps=8)
    check_ok(train(full, "full"))
    part = write_config(tmp_path / "part.json", processed, max_steps=4)
    check_ok(train(part, "part"))
    state = load_training_state(list_checkpoints(tmp_path / "exp" / "part")[-1])
    assert (state["step"], state["epoch"], state["batches_done"]) == (4, 1, 1)
    check_ok(train(full, "part", "--resume", "true"))
    a, b = last_weights(tmp_path / "exp" / "full"), last_weights(tmp_path / "exp" / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "exp" / "part" / "train_log.jsonl").open()]
    assert {"audio_loss", "audio_top10_acc"} <= set(log[-1])
    from models.base.train_loop import how_to_resume
    from models.tts.toktts.trainer import TokTTSTrainRecipe

    run = type("Run", (), {"stop_signal": "SIGTERM", "step": 4, "train_stage": 0,
                           "recipe": TokTTSTrainRecipe(None, None),
                           "args": type("A", (), {"config": "c.json", "exp_name": "x",
                                                  "gpu": ""})()})()  # fmt: skip
    hint = how_to_resume(run, None)
    assert "sh egs/tts/TokTTS/run.sh" in hint and "--name x --resume true" in hint
    assert "model_train_stage" not in hint


def test_greedy_decoding_of_the_trained_checkpoint_gives_back_the_training_codes(tmp_path):
    data = fake_stage1(tmp_path / "data", [9])  # one utterance, ends before the cap: EOS
    cfg = write_config(tmp_path / "c.json", data, batch_size=1, max_steps=150)
    tree = json.loads(cfg.read_text())
    tree["model"] = {**MODEL, "dropout": 0.0}
    cfg.write_text(json.dumps(tree))
    check_ok(train(cfg, "overfit"))
    recipe = load_toktts_config(cfg)
    model = TokTTS(recipe.model)
    model.load_state_dict(load_weights(list_checkpoints(tmp_path / "exp" / "overfit")[-1]))
    cut = CutSet.from_file(data / "ljspeech" / "cuts_train.jsonl.gz")[0]
    text = torch.tensor(CharTable.load(data / "chars.json").encode(cut.supervisions[0].text))
    result = generate(model.eval(), [text])
    assert result.stop_reasons == ["eos"]
    assert torch.equal(result.codes[0], torch.from_numpy(cut.load_codes().astype(np.int64)))


def test_stage1_made_for_another_model_is_refused_naming_the_key(tmp_path, processed):
    cfg = write_config(tmp_path / "c.json", processed)
    tree = json.loads(cfg.read_text())
    tree["model"] = {**MODEL, "max_audio_seconds": 0.4}
    cfg.write_text(json.dumps(tree))
    result = train(cfg, "x")
    assert result.returncode == 1
    assert "made with model.max_audio_seconds = 0.2, the config asks for 0.4" in result.stderr
    assert "Traceback" not in result.stderr
