"""models/tts/valle/dataset.py: batches, seeded / sharded / bucketed sampling, exact skip."""

from __future__ import annotations

import pytest
import torch
from lhotse import AudioSource, CutSet, Recording
from lhotse.utils import fastcopy
from train_fixtures import PHONES, make_stage1, write_config

from models.tts.valle.dataset import (
    DataError,
    ResumableBatches,
    VALLEDataset,
    check_phones,
    filter_cuts,
    load_cuts,
    make_dataloader,
    make_sampler,
)
from text.symbol_table import TextTokenizer
from utils.config import load_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_dataset")
    processed = make_stage1(root / "data", n_train=10, n_valid=2, seed=1, frames=(10, 60))
    cfg = load_config(write_config(root / "c.json", processed, root / "exp"))
    cuts = load_cuts(cfg, processed, "train").to_eager()
    return cfg, cuts, TextTokenizer.from_file(processed / "symbols.dict")


def ids(batches) -> list[list[str]]:
    return [[c.id for c in b] for b in batches]


def test_batch_contents(data):
    cfg, cuts, tok = data
    picked = CutSet.from_cuts([cuts[3], cuts[0]])
    batch = VALLEDataset(tok)[picked]
    assert batch["cut_ids"] == [cuts[3].id, cuts[0].id]
    for i, cut in enumerate(picked):
        phones = cut.custom["phones"]
        # <bos>=1, phone k of the sorted table = k + 3 (<eps> sorts before letters: "a" = 4)
        expected = [1] + [PHONES.index(p) + 4 for p in phones] + [2]
        n = len(expected)
        assert batch["x_lens"][i] == n
        assert batch["x"][i, :n].tolist() == expected and not batch["x"][i, n:].any()
        codes = torch.as_tensor(cut.codes.load()).long()
        t = codes.shape[0]
        assert batch["y_lens"][i] == t and batch["y"].shape[2] == 8
        assert torch.equal(batch["y"][i, :t], codes) and not batch["y"][i, t:].any()


def test_seeded_shuffle_per_epoch_and_sharding(data):
    cfg, cuts, _ = data
    a, b = make_sampler(cuts, cfg, shuffle=True), make_sampler(cuts, cfg, shuffle=True)
    a.set_epoch(1), b.set_epoch(1)
    epoch1 = ids(a)
    assert epoch1 == ids(b)
    a.set_epoch(2)
    assert ids(a) != epoch1 and sorted(sum(ids(a), [])) == sorted(sum(epoch1, []))
    shards = []
    for rank in (0, 1):
        s = make_sampler(cuts, cfg, shuffle=True, world_size=2, rank=rank)
        s.set_epoch(0)
        shards.append(sum(ids(s), []))
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == {c.id for c in cuts}


def test_dynamic_batches_respect_max_tokens_and_sentences(data):
    cfg, cuts, _ = data
    cfg.train.use_dynamic_batchsize = True
    cfg.train.max_tokens, cfg.train.max_sentences = 100, 3
    try:
        sampler = make_sampler(cuts, cfg, shuffle=True)
        batches = list(sampler)
    finally:
        cfg.train.use_dynamic_batchsize = False
    assert sorted(c.id for b in batches for c in b) == sorted(c.id for c in cuts)
    for b in batches:
        assert len(b) <= 3
        assert sum(c.codes.shape[0] for c in b) <= 100 + 1  # float duration rounding


def test_resumable_batches_skip_exactly(data):
    cfg, cuts, tok = data
    loader, batches = make_dataloader(cuts, cfg, tok, shuffle=True)
    batches.set_position(epoch=3)
    full = [b["cut_ids"] for b in loader]
    batches.set_position(epoch=3, batches_done=2)
    assert [b["cut_ids"] for b in loader] == full[2:]
    assert batches.state_dict(3, 2)["batches_done"] == 2
    assert isinstance(batches, ResumableBatches)


def test_missing_stage1_and_unknown_phone(data, tmp_path):
    cfg, cuts, tok = data
    with pytest.raises(
        DataError, match=r"stage-1 output missing: .*cuts_train.jsonl.gz.*--stage 1"
    ):
        load_cuts(cfg, tmp_path, "train")
    bad = cuts[0].with_id("bad")
    bad.custom = {"phones": ["a", "§"]}
    with pytest.raises(DataError, match=r"cut bad: phones \['§'\]"):
        check_phones(CutSet.from_cuts([bad]), tok)


def _as_older_stage1(cuts: CutSet, remainders: list[int]) -> CutSet:
    """The cuts as a stage 1 before manifest format 2 wrote them: a recording of N samples with
    ceil(N / 320) codec frames, the cut's duration the audio's N / 24000 s."""
    out = []
    for cut, r in zip(cuts, remainders, strict=False):
        n = (cut.codes.num_frames - 1) * 320 + r
        rec = Recording(
            id=cut.id,
            sources=[AudioSource(type="file", channels=[0], source="/nowhere/a.wav")],
            sampling_rate=24000,
            num_samples=n,
            duration=n / 24000,
        )
        out.append(fastcopy(cut, recording=rec, duration=rec.duration))
    return CutSet.from_cuts(out)


def test_older_stage1_cuts_are_converted_on_read_and_every_frame_is_trained(tmp_path, caplog):
    processed = make_stage1(
        tmp_path / "data", n_train=6, n_valid=1, seed=3, frames=(10, 40), layout="single"
    )
    cfg = load_config(write_config(tmp_path / "c.json", processed, tmp_path / "exp"))
    path = processed / "libritts" / "cuts_train.jsonl.gz"
    remainders = [1, 100, 159, 160, 250, 320]  # samples in the last codec frame (320: full)
    _as_older_stage1(CutSet.from_file(path), remainders).to_file(path)
    old = CutSet.from_file(path)
    # lhotse leaves out a last frame covering under half a hop: the 3 cuts with r < 160
    short = [len(c.load_codes()) < c.codes.num_frames for c in old]
    assert short == [True, True, True, False, False, False]
    with caplog.at_level("WARNING"):
        cuts = load_cuts(cfg, processed, "train")
    assert "5 cuts come from an older stage 1" in caplog.text and "Rerun stage 1" in caplog.text
    tok = TextTokenizer.from_file(processed / "symbols.dict")
    batch = VALLEDataset(tok)[cuts]
    for i, (cut, before) in enumerate(zip(cuts, old, strict=True)):
        codes = torch.as_tensor(before.codes.load()).long()
        t = len(codes)
        assert t == -(-before.recording.num_samples // 320)  # ceil(samples / 320)
        assert batch["y_lens"][i] == t and torch.equal(batch["y"][i, :t], codes), cut.id
        assert cut.recording == before.recording and cut.supervisions == before.supervisions
    kept, rejected = filter_cuts(cuts, cfg, min_duration=0.0, max_duration=old[0].duration)
    assert old[0].id in {c.id for c in kept}  # the audio's length is filtered, not the span's
    caplog.clear()
    load_cuts(cfg, processed, "valid")  # current-format cuts: read as they are, no warning
    assert "older stage 1" not in caplog.text


@pytest.mark.parametrize(
    ("num_cuts", "max_sentences", "expected"),
    [(1, 10, 0), (9, 10, 0), (10, 3, 3), (10, 2, 5), (10, 1, 10)],
)
def test_dynamic_sampler_buckets_what_the_split_can_fill(data, caplog, num_cuts, max_sentences,
                                                         expected):  # fmt: skip
    # lhotse's DynamicBucketingSampler asserts num_buckets <= cuts: a small split gets fewer
    # buckets (each able to fill a batch of max_sentences) or none, saying so in one line
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

    cfg, cuts, _ = data
    subset = CutSet.from_cuts(list(cuts)[:num_cuts])
    cfg.train.use_dynamic_batchsize, cfg.train.max_sentences = True, max_sentences
    caplog.set_level("INFO")
    try:
        sampler = make_sampler(subset, cfg, shuffle=True, name="valid")
        batches = list(sampler)
    finally:
        cfg.train.use_dynamic_batchsize, cfg.train.max_sentences = False, 10
    if expected:
        assert isinstance(sampler, DynamicBucketingSampler)
        assert len(sampler.duration_bins) + 1 <= expected  # lhotse merges sparse bins
        assert f"valid: dynamic batches with {expected} duration buckets" in caplog.text
    else:
        assert isinstance(sampler, DynamicCutSampler)
        assert f"valid: dynamic batches with no duration buckets ({num_cuts} cuts" in caplog.text
    assert sorted(c.id for b in batches for c in b) == sorted(c.id for c in subset)
    assert all(len(b) <= max_sentences for b in batches)


def test_stop_signal_while_a_worker_starts_does_not_kill_it(data, monkeypatch):
    # SIGTERM to the process group can reach a dataloader worker before its worker_init_fn has
    # set SIG_IGN (every epoch and validation start new workers): it must survive
    import os
    import signal
    import time

    from models.base import train_data

    cfg, cuts, tok = data
    init = train_data.ignore_stop_signals

    def slow_start(worker_id):
        time.sleep(1.0)  # the window between the fork and SIG_IGN, made wide
        init(worker_id)

    monkeypatch.setattr(train_data, "ignore_stop_signals", slow_start)
    loader, _ = make_dataloader(cuts, cfg, tok, shuffle=False, num_workers=1)
    batches = iter(loader)
    os.kill(batches._workers[0].pid, signal.SIGTERM)
    assert sum(len(b["cut_ids"]) for b in batches) == len(cuts)
