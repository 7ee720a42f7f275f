"""The one interface between the training engine (models/base/trainer.py) and a recipe.

A recipe subclasses `TrainRecipe` once (VALL-E: models/tts/valle/trainer.py) and the engine does
the rest: accelerate, data loaders and their resume position, the update order, accumulation,
mixed precision, checkpoints, resume / finetune, signals, the non-finite guard, validation and
logs. The engine calls, in this order:

    cfg = Recipe.load_config(path, overrides)   the recipe's config (VALL-E: utils/config.py)
    recipe = Recipe(cfg, args)
    recipe.check_data()                    -> fingerprint of the prepared data (in meta.json)
    recipe.init_source()                   a fresh start (no resume / finetune): weights to
                                           start from, or None
    recipe.load_data(split)                -> CutSet ("train", "valid"), filtered and checked
    recipe.make_loader(cuts, split, ...)   -> (DataLoader, ResumableBatches); a dataset with
                                           `set_epoch(epoch)` is told each epoch
    recipe.build_model(init_from)          -> (model, trainable parameters)
    recipe.prepare_exp_dir(exp_dir)        files the experiment needs besides config.json
    recipe.batch_loss(model, batch, generator, device)   every micro-batch and validation batch
    recipe.meta()                          at every checkpoint: extra meta.json keys
    recipe.on_validation(run, result)      after every validation (tensorboard audio, ...)

A batch is the recipe's dict; the engine reads two keys of it: `cut_ids` (list[str], to name
utterances in errors) and `y_lens` ((B,) target frames: loss weighting, logs, advice).
`batch_loss` returns the per-frame loss (a scalar tensor) and a dict of metric *sums*: for
each part p of `metric_parts`, `{p}_loss`, `{p}_frames` and `{p}_top10_correct`, which the
engine turns into `{p}_loss` and `{p}_top10_acc` per frame in the logs. Its random draws use
`generator` only (the engine checkpoints it per rank; validation passes a fixed one).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet

from models.base.train_data import ResumableBatches
from utils.config import Config, load_config


class TrainRecipe:
    """What a recipe gives the engine. Override every method that raises NotImplementedError;
    the others are hooks with a default."""

    # the command that continues a run (the message printed when a signal stops training)
    run_command = "sh run.sh"
    # metric parts batch_loss reports sums for (see the module docstring)
    metric_parts: tuple[str, ...] = ()
    # data fingerprint key -> what it is, for the message when resumed on other data
    fingerprint_names: dict[str, str] = {}
    # what to do when a resume asks for another train_stage than the checkpoint's
    stage_hint = ""

    def __init__(self, cfg: Config, args: argparse.Namespace):
        self.cfg, self.args = cfg, args

    @staticmethod
    def load_config(path: str, overrides: dict) -> Any:
        """The recipe's typed config (sections preprocess, model, train, log_dir, ... with the
        engine's keys: train.*, preprocess.codec_hop_size / sample_rate for the frame hop)."""
        return load_config(path, overrides)

    def resume_options(self, train_stage: int) -> str:
        """run.sh options besides --config/--stage/--name/--resume that continue a run."""
        return f" --model_train_stage {train_stage}"

    def check_data(self) -> dict:
        """Check the prepared data exist and fit the config (before anything is built); return
        their fingerprint: {"processed_dir": ..., key: hash, ...}."""
        raise NotImplementedError

    def init_source(self) -> Path | None:
        """A fresh start (no --resume): the checkpoint whose weights to start from, or None."""
        return None

    def load_data(self, split: str) -> CutSet:
        """The usable cuts of `split` ("train" / "valid"); refuse an empty split."""
        raise NotImplementedError

    def make_loader(
        self, cuts: CutSet, split: str, *, world_size: int, rank: int, num_workers: int
    ) -> tuple[torch.utils.data.DataLoader, ResumableBatches]:
        """The loader of one split (shuffled for "train") and its resumable sampler."""
        raise NotImplementedError

    def build_model(self, init_from: Path | None) -> tuple[torch.nn.Module, list]:
        """The model (weights of `init_from` when given) and the parameters this run trains."""
        raise NotImplementedError

    def prepare_exp_dir(self, exp_dir: Path) -> None:
        """Copy what inference needs besides config.json into the experiment folder."""

    def batch_loss(
        self, model: torch.nn.Module, batch: dict, generator: torch.Generator, device
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(per-frame loss, metric sums) of one batch (see the module docstring)."""
        raise NotImplementedError

    def meta(self) -> dict:
        """What meta.json records besides the engine's keys (model, train_stage, epoch, step,
        loss, valid_loss, data_fingerprint)."""
        return {}

    def describe(self) -> str:
        """What this run trains, for the start-up log line."""
        return f"train_stage {self.cfg.train.train_stage}"

    def on_validation(self, run: Any, result: dict[str, float]) -> None:
        """After each validation (main process and others alike); `run` is the engine's Run."""
