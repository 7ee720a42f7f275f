"""Training correctness on the paths real runs take (issue 9, items 1-5): the NAR positional
alphas stay fixed, fp16 loss-scaler skips and scaler state, bf16 autocast resume, the epoch's
partial accumulation group, and the out-of-memory pre-check's traces. DDP per-rank dropout is
in tests/test_train.py (test_exact_resume_with_two_processes)."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from train_fixtures import check_ok, last_weights, make_stage1, read_log, run_training, write_config
from train_fixtures import exp_config as config
from train_fixtures import train_args as args

from models.base import trainer as engine
from models.tts.valle import trainer
from utils.checkpoint import list_checkpoints, load_training_state
from utils.config import load_config
from utils.cut_shards import read_cuts

ALPHAS = ("nar_text_position.alpha", "nar_audio_position.alpha")
TINY = dict(text_token_num=32, decoder_dim=32, nhead=2, num_decoder_layers=1)


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    return make_stage1(tmp_path_factory.mktemp("stage1") / "data", n_train=8, n_valid=2)


def test_nar_alphas_stay_fixed_and_bench_trains_the_trainers_parameters(tmp_path, processed):
    from bench.train_step import trainable_model

    cfg = config(tmp_path, processed, max_steps=3)
    for stage in (0, 1, 2):
        model, trainable = trainer.build_model(load_config(cfg), stage, None)
        names = {n for n, p in model.named_parameters() if any(p is t for t in trainable)}
        assert not names & set(ALPHAS), stage
        assert {n for n, p in model.named_parameters() if p.requires_grad} == names
        bench_model, bench_params = trainable_model(stage, **TINY)
        bench_names = {n for n, p in bench_model.named_parameters() if p.requires_grad}
        assert bench_names == names, stage
        assert len(bench_params) == len(trainable)
    torch.set_num_threads(1)
    assert trainer.main(args(cfg, "both", "--train_stage", "0")) == 0
    weights = last_weights(tmp_path / "exp" / "both")
    for name in ALPHAS:
        assert torch.equal(weights[name], torch.ones(1)), (name, weights[name])
    assert not torch.equal(weights["ar_text_position.alpha"], torch.ones(1))  # AR's do train


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_resume_is_exact(tmp_path, processed, precision):
    # fp16: accelerate's real scaler path on the CPU (tests/train_fixtures.py --cpu_fp16). Its
    # scale grows every 2 updates and overflows now and then; a resume must restore it (a fresh
    # scaler would overflow at the first resumed step). bf16: CPU autocast as on a GPU.
    train = {"max_steps": 6} if precision == "fp16" else {"max_steps": 6, "mixed_precision": "bf16"}
    cfg = config(tmp_path, processed, **train)
    hooks = ["--cpu_fp16"] if precision == "fp16" else []
    check_ok(run_training(args(cfg, "full", "--train_stage", "0"), hooks))
    stop = hooks + ["--sigterm_at_step", "3"]
    check_ok(run_training(args(cfg, "part", "--train_stage", "0"), stop))
    part = tmp_path / "exp" / "part"
    state = load_training_state(list_checkpoints(part)[-1])
    assert (state["scaler"] is not None) == (precision == "fp16")
    check_ok(run_training(args(cfg, "part", "--train_stage", "0", "--resume", "true"), hooks))

    full_lines = (tmp_path / "exp" / "full" / "train_log.jsonl").read_text().splitlines()
    part_lines = (part / "train_log.jsonl").read_text().splitlines()
    assert full_lines == part_lines  # every step and every skipped update, bit for bit
    a, b = last_weights(tmp_path / "exp" / "full"), last_weights(part)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    if precision == "fp16":
        records = [json.loads(line) for line in full_lines]
        skipped = [r for r in records if r.get("skipped")]
        assert skipped and all(r["reason"] == "fp16 overflow" for r in skipped)
        # a skipped update advances neither the step count nor the LR schedule
        steps = [r for r in records if not r.get("skipped")]
        assert [r["step"] for r in steps] == list(range(1, 7))
        factor = engine.lr_lambda(load_config(cfg))
        for r in steps:
            assert r["lr"] == pytest.approx(1e-3 * factor(r["step"] - 1), rel=1e-12), r["step"]
        assert load_training_state(list_checkpoints(part)[-1])["counters"]["overflow_total"] == len(
            skipped
        )


def test_partial_accumulation_group_is_the_mean_of_what_it_holds(tmp_path, processed):
    # 8 cuts / batch 3 = 3 batches per epoch. A learning rate far below one ulp of the weights
    # leaves them unchanged, so both runs see the same weights: with accumulation 2 the epoch's
    # tail step holds batch 3 alone and must have the gradient of the accumulation-1 step 3.
    torch.set_num_threads(1)
    norms = {}
    for accum in (1, 2):
        train = {"max_steps": 0, "max_epoch": 1, "gradient_accumulation_step": accum,
                 "base_lr": 1e-30, "grad_clip": 0.0}  # fmt: skip
        cfg = write_config(tmp_path / f"{accum}.json", processed, tmp_path / "exp", train=train)
        assert trainer.main(args(cfg, f"acc{accum}", "--train_stage", "1")) == 0
        norms[accum] = read_log(tmp_path / "exp" / f"acc{accum}")
    assert sorted(norms[1]) == [1, 2, 3] and sorted(norms[2]) == [1, 2]
    assert norms[2][2]["frames"] == norms[1][3]["frames"]
    assert norms[2][2]["grad_norm"] == pytest.approx(norms[1][3]["grad_norm"], rel=1e-5)


def test_largest_batch_check_counts_adam_state_and_leaves_no_trace(tmp_path, processed):
    from types import SimpleNamespace

    from models.tts.valle.dataset import VALLEDataset
    from text.symbol_table import TextTokenizer

    cfg = load_config(config(tmp_path, processed, model={"add_prenet": True}))
    cfg.train.train_stage = 0  # AR + NAR: every trainable parameter gets a gradient
    model, trainable = trainer.build_model(cfg, 0, None)
    model.train()
    optimizer = torch.optim.AdamW(trainable)
    run = SimpleNamespace(
        cfg=cfg, model=model, trainable=trainable, optimizer=optimizer, train_stage=0,
        recipe=trainer.VALLETrainRecipe(cfg, None),
        accelerator=SimpleNamespace(device=torch.device("cpu"), backward=torch.Tensor.backward),
        train_loader=SimpleNamespace(dataset=VALLEDataset(TextTokenizer.from_file(
            processed / "symbols.dict"))),
    )  # fmt: skip
    seen = {}
    batch_loss = engine.batch_loss

    def counting_batch_loss(run, batch, generator):
        # what lives next to the forward: a zero tensor of each trainable's shape, twice
        tensors = [t for t in gc.get_objects() if type(t) is torch.Tensor]
        zeros = [t for t in tensors if not t.any()]  # parameters are not exactly torch.Tensor
        seen["state"] = sum(t.numel() for t in zeros)
        return batch_loss(run, batch, generator)

    before = {n: b.clone() for n, b in model.named_buffers()}
    assert any("running_mean" in n for n in before)  # add_prenet's BatchNorm
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    cuts = read_cuts(processed / "libritts", "train")
    engine.batch_loss, saved = counting_batch_loss, engine.batch_loss
    try:
        engine.check_largest_batch_fits(run, cuts)
    finally:
        engine.batch_loss = saved
    assert seen["state"] >= 2 * sum(p.numel() for p in trainable)
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]) and p.grad is None, name
    assert torch.equal(torch.get_rng_state(), rng)


def test_split_emptied_by_filters_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    data = make_stage1(tmp_path / "data", n_train=4, n_valid=2, frames=(16, 20))
    cfg = write_config(tmp_path / "c.json", data, tmp_path / "exp", train={"max_steps": 1})
    settings = json.loads(cfg.read_text())
    settings["preprocess"]["max_duration"] = 0.2  # every cut is >= 16 frames = 0.21 s
    cfg.write_text(json.dumps(settings))

    def no_model(*a, **k):
        raise AssertionError("the model was built before the data were checked")

    monkeypatch.setattr(trainer, "build_model", no_model)
    with pytest.raises(trainer.DataError) as err:
        trainer.main(args(cfg, "empty"))
    message = str(err.value)
    assert "no usable train cuts" in message and "all 4 were left out" in message
    assert "preprocess.min_duration / max_duration = [0.1, 0.2] s (4 cuts)" in message
