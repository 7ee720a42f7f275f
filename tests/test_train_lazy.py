"""Training on the per-shard stage-1 layout (utils/cut_shards.py): start-up reads the index only,
filters and phone checks need no pass over the cuts, the bucketing sampler's state is in the
checkpoint and a resume is bit for bit mid-epoch; the one-file layout of before still trains."""

from __future__ import annotations

import pytest
import torch
from lhotse import MonoCut
from train_fixtures import check_ok, last_weights, make_stage1, read_log, run_training
from train_fixtures import exp_config as config
from train_fixtures import train_args as args

from models.base import train_data
from models.base.train_data import estimate_steps_per_epoch, largest_batch
from models.tts.valle.dataset import DataError, check_phones, make_dataloader
from models.tts.valle.trainer import load_data
from text.symbol_table import TextTokenizer
from utils import cut_shards
from utils.checkpoint import list_checkpoints, load_training_state
from utils.config import load_config

BUCKETS = {"use_dynamic_batchsize": True, "max_tokens": 90, "max_sentences": 3, "num_buckets": 2}


def test_start_up_reads_the_index_only_and_the_first_batch_a_buffer(tmp_path, monkeypatch):
    monkeypatch.setattr(cut_shards, "LONGEST_KEPT", 3)  # the index keeps the 3 longest cuts
    processed = make_stage1(tmp_path / "data", n_train=60, n_valid=2, frames=(10, 40))
    cfg = load_config(config(tmp_path, processed, **BUCKETS))
    tok = TextTokenizer.from_file(processed / "symbols.dict")
    read = []
    from_dict = MonoCut.from_dict

    def counting(data):
        read.append(data.get("id"))
        return from_dict(data)

    monkeypatch.setattr(MonoCut, "from_dict", staticmethod(counting))
    monkeypatch.setattr(train_data, "LAZY_BUFFER", 10)
    data = load_data(cfg, processed, "train", tok)  # filters + phone check included
    loader, batches = make_dataloader(data, cfg, tok, shuffle=True, name="train")
    assert data.num_cuts == 60 and estimate_steps_per_epoch(data, cfg, 1) >= 20
    assert largest_batch(data.longest, cfg)  # the OOM pre-check's cuts: from the index
    assert len(read) == 3  # the index's longest cuts, not one cut of the corpus
    assert type(batches.sampler).__name__ == "DynamicBucketingSampler"
    assert batches.sampler.duration_bins  # from the index's durations, no estimation pass
    next(iter(loader))
    assert len(read) - 3 <= 2 * 10 < 60  # the sampler's buffer, not the corpus


def test_filters_and_phone_check_are_lazy(tmp_path, caplog):
    processed = make_stage1(tmp_path / "data", n_train=12, n_valid=2, frames=(10, 40))
    cfg = load_config(config(tmp_path, processed, **{**BUCKETS, "max_tokens": 30}))
    tok = TextTokenizer.from_file(processed / "symbols.dict")
    data = load_data(cfg, processed, "train", tok)
    every = list(cut_shards.read_cuts(processed / "libritts", "train"))
    long = {c.id for c in every if c.codes.num_frames > 30}
    assert long and len(long) < len(every)
    with caplog.at_level("WARNING"):
        kept = {c.id for c in data.cuts}
    assert kept == {c.id for c in every} - long
    assert caplog.text.count("left out cut") == min(len(long), 5)  # reported as met
    assert all(c.id not in long for c in data.longest)
    # an unknown phone is found in the index, naming the first cut that uses it
    first = min(c.id for c in every if "a" in c.custom["phones"])
    (processed / "symbols.dict").write_text("<eps> 0\n" + "".join(
        f"{p} {i}\n" for i, p in enumerate("bcdefghijklmnop", 1)), encoding="utf-8")  # fmt: skip
    with pytest.raises(DataError, match=rf"cut {first}: phones \['a'\]"):
        check_phones(data, TextTokenizer.from_file(processed / "symbols.dict"))


def test_lazy_resume_is_bitwise_exact_mid_epoch_with_the_sampler_state(tmp_path):
    # 24 cuts in 3 shards, <= 3 per batch: about 10 batches an epoch, step 13 is mid-epoch 1
    processed = make_stage1(tmp_path / "data", n_train=24, n_valid=2, frames=(10, 30))
    cfg = config(tmp_path, processed, max_steps=16, **BUCKETS)
    check_ok(run_training(args(cfg, "full", "--train_stage", "1")))
    check_ok(run_training(args(cfg, "part", "--train_stage", "1"), ["--sigterm_at_step", "13"]))
    part = tmp_path / "exp" / "part"
    state = load_training_state(list_checkpoints(part)[-1])
    sampler = state["sampler"]
    assert state["epoch"] == 1 and 0 < state["batches_done"] == sampler["batches_done"]
    assert sampler["sampler"] == "DynamicBucketingSampler" and sampler["duration_bins"]
    assert len(sampler["shards"]) == 3 and sampler["lhotse"]["shuffle"] is True
    check_ok(run_training(args(cfg, "part", "--train_stage", "1", "--resume", "true")))
    full_log, part_log = read_log(tmp_path / "exp" / "full"), read_log(part)
    assert sorted(full_log) == sorted(part_log) == list(range(1, 17))
    for step in range(14, 17):
        for key in ("loss", "ar_loss", "lr", "grad_norm"):
            assert full_log[step][key] == part_log[step][key], (step, key)
    a, b = last_weights(tmp_path / "exp" / "full"), last_weights(part)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_one_file_manifests_of_before_still_train(tmp_path):
    processed = make_stage1(tmp_path / "data", n_train=6, n_valid=1, layout="single")
    cfg = config(tmp_path, processed, max_steps=2)
    check_ok(run_training(args(cfg, "old", "--train_stage", "1")))
    state = load_training_state(list_checkpoints(tmp_path / "exp" / "old")[-1])
    assert state["sampler"]["shards"] is None  # read eagerly, as before


def test_sampler_state_check(tmp_path):
    processed = make_stage1(tmp_path / "data", n_train=12, n_valid=1)
    cfg = load_config(config(tmp_path, processed, **BUCKETS))
    tok = TextTokenizer.from_file(processed / "symbols.dict")
    data = load_data(cfg, processed, "train", tok)
    _, batches = make_dataloader(data, cfg, tok, shuffle=True)
    state = batches.state_dict(2, 5)
    assert batches.check_state(state) == []
    assert batches.check_state({"epoch": 2, "batches_done": 5}) == []  # older checkpoints
    other = load_config(config(tmp_path, processed, **{**BUCKETS, "max_sentences": 2}))
    _, changed = make_dataloader(load_data(other, processed, "train", tok), other, tok,
                                 shuffle=True)  # fmt: skip
    assert any(d.startswith("max_cuts") for d in changed.check_state(state))
