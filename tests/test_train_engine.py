"""The training engine (models/base/) with a second, toy recipe: a recipe plugs in through
`TrainRecipe` alone and gets logs, checkpoints with its meta, the validation hook and exact
resume without any VALL-E code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lhotse import CutSet
from safetensors.torch import load_file
from train_fixtures import make_stage1, read_log, write_config

from models.base.train_data import ResumableBatches, make_loader, make_sampler
from models.base.train_recipe import TrainRecipe
from models.base.trainer import parse_args, train
from utils.checkpoint import list_checkpoints, load_weights, read_meta
from utils.cut_shards import read_cuts


class ToyDataset(torch.utils.data.Dataset):
    def __getitem__(self, cuts: CutSet) -> dict:
        codes = [torch.as_tensor(c.load_codes()[:, 0]).long() for c in cuts]
        y = torch.nn.utils.rnn.pad_sequence(codes, batch_first=True)  # (B, T)
        return {"y": y, "y_lens": torch.tensor([len(c) for c in codes]),
                "cut_ids": [c.id for c in cuts]}  # fmt: skip


class ToyModel(torch.nn.Module):
    """Predicts each codec frame's first code from the previous one, with dropout (so that the
    RNG streams matter for exact resume)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(1024, 8)
        self.dropout = torch.nn.Dropout(0.1)
        self.out = torch.nn.Linear(8, 1024)

    def forward(self, y, y_lens, generator):
        logits = self.out(self.dropout(self.embed(y[:, :-1])))  # (B, T-1, 1024)
        mask = torch.arange(y.shape[1] - 1)[None] < (y_lens[:, None] - 1)
        nll = torch.nn.functional.cross_entropy(logits[mask], y[:, 1:][mask], reduction="sum")
        noise = torch.rand((), generator=generator)  # a recipe draw, checkpointed by the engine
        return nll * (1 + 1e-3 * noise), int(mask.sum())


class ToyRecipe(TrainRecipe):
    metric_parts = ("toy",)
    fingerprint_names = {"cuts": "train cuts"}
    validations: list[dict] = []

    def check_data(self) -> dict:
        self.path = Path(self.cfg.preprocess.processed_dir) / "libritts"
        return {"processed_dir": str(self.path), "cuts": "v1"}

    def load_data(self, split: str) -> CutSet:
        return read_cuts(self.path, split)

    def make_loader(self, cuts, split, *, world_size, rank, num_workers):
        sampler = make_sampler(cuts, self.cfg, shuffle=split == "train", world_size=world_size,
                               rank=rank, name=split)  # fmt: skip
        batches = ResumableBatches(sampler)
        return make_loader(ToyDataset(), batches, num_workers), batches

    def build_model(self, init_from):
        model = ToyModel()
        if init_from is not None:
            model.load_state_dict(load_weights(init_from))
        return model, list(model.parameters())

    def batch_loss(self, model, batch, generator, device):
        y, y_lens = batch["y"].to(device), batch["y_lens"].to(device)
        loss_sum, frames = model(y, y_lens, generator)
        metrics = {"toy_loss": loss_sum.detach(), "toy_frames": frames, "toy_top10_correct": 0}
        return loss_sum / frames, metrics

    def meta(self) -> dict:
        return {"toy": "recipe"}

    def on_validation(self, run, result):
        self.validations.append({"step": run.step, **result})


def test_a_toy_recipe_trains_checkpoints_and_resumes_exactly(tmp_path):
    processed = make_stage1(tmp_path / "data", n_train=8, n_valid=2)

    def run(name: str, max_steps: int, *extra: str) -> Path:
        cfg = write_config(tmp_path / f"{name}.json", processed, tmp_path / "exp",
                           train={"max_steps": max_steps, "valid_interval": 2})  # fmt: skip
        args = parse_args(["--config", str(cfg), "--exp_name", name, *extra], "toy")
        assert train(args, ToyRecipe) == 0
        return tmp_path / "exp" / name

    ToyRecipe.validations.clear()
    whole = run("whole", 3)
    log = read_log(whole)
    assert sorted(log) == [1, 2, 3] and all(r["toy_loss"] > 0 for r in log.values())
    meta = read_meta(list_checkpoints(whole)[-1])
    assert meta["toy"] == "recipe" and meta["step"] == 3 and meta["data_fingerprint"]["cuts"]
    assert [v["step"] for v in ToyRecipe.validations] == [2, 3]  # interval 2, epoch end
    assert all(v["toy_loss"] > 0 for v in ToyRecipe.validations)
    assert json.loads((whole / "config.json").read_text())["train"]["max_steps"] == 3

    # 2 steps, then resumed to 3 (mid-epoch: 8 cuts in batches of 3): the same weights
    run("parts", 2)
    parts = run("parts", 3, "--resume", "true")
    a, b = (load_file(str(list_checkpoints(e)[-1] / "model.safetensors")) for e in (whole, parts))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(parts)[3]["loss"] == log[3]["loss"]
