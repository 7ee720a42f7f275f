"""Recipe stage 2 for VALL-E: its part of the training engine (models/base/trainer.py).

VALL-E trains its AR decoder (train_stage 1), then its NAR decoders (2), or both (0). What is
VALL-E's here, behind the engine's `TrainRecipe` interface: the stage-1 data (lhotse cuts with
phones and EnCodec codes; fingerprinted by the codec and the phone table), the model and which
of its parameters a train_stage updates, the loss of a batch (Amphion's per-frame
normalisation, loss_sum / sum(y_lens)), and `--ar_model_ckpt_dir`
(a NAR run starts from an AR run's weights). Everything else (update order, accumulation,
mixed precision, checkpoints, resume, signals, logs) is the engine's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from models.base.train_data import DataError
from models.base.train_recipe import TrainRecipe
from models.base.train_state import TrainingError, check_model_config
from models.base.trainer import parse_args as engine_args
from models.base.trainer import train
from models.tts.valle.dataset import (
    VALLESplit,
    check_phones,
    filter_split,
    load_split,
    make_dataloader,
)
from models.tts.valle.listening import write_listening_samples
from models.tts.valle.valle import VALLE
from text.symbol_table import TextTokenizer
from utils.checkpoint import load_weights, resolve_checkpoint
from utils.config import Config, resolve_path

logger = logging.getLogger("codectts.train")

TRAIN_STAGES = {0: "AR + NAR", 1: "AR", 2: "NAR"}  # what each train_stage updates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def own(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ar_model_ckpt_dir", default="", help="NAR stage: AR run to start from")

    return engine_args(argv, "Recipe stage 2: train VALL-E (AR, NAR or both).", own)


def main(argv: list[str] | None = None) -> int:
    """One training process. run.sh starts one per visible GPU with `accelerate launch` (DDP)
    when there are several, one plain process otherwise (a GPU or the CPU)."""
    return train(parse_args(argv), VALLETrainRecipe)


def stage1_fingerprint(cfg: Config) -> tuple[Path, dict]:
    """Check the stage-1 output exists; return its folder and the hashes of codec + symbols."""
    processed_dir = resolve_path(cfg.preprocess.processed_dir)
    codec_json = processed_dir / "codec" / "codec.json"
    symbols = processed_dir / cfg.preprocess.symbols_dict
    for path in (codec_json, symbols):
        if not path.is_file():
            raise DataError(
                f"stage-1 output missing: {path} does not exist. Run the data stage first "
                "(sh egs/tts/VALLE/run.sh --stage 1 with the same --config) or point "
                "preprocess.processed_dir at its output."
            )
    try:  # the codec's description, not its formatting
        codec = json.dumps(json.loads(codec_json.read_text(encoding="utf-8")), sort_keys=True)
    except ValueError as e:
        raise DataError(f"{codec_json}: not valid JSON ({e}); rerun stage 1") from None
    fingerprint = {
        "processed_dir": str(processed_dir),
        "codec": hashlib.sha256(codec.encode()).hexdigest(),
        "symbols": hashlib.sha256(symbols.read_bytes()).hexdigest(),
    }
    return processed_dir, fingerprint


def build_model(cfg: Config, train_stage: int, init_from: Path | None) -> tuple[VALLE, list]:
    """VALL-E (weights of `init_from` when given) and the parameters `train_stage` trains."""
    model = VALLE(cfg.model)
    if init_from is not None:
        check_model_config(init_from, cfg)
        model.load_amphion_state_dict(load_weights(init_from))
        logger.info("weights loaded from %s", init_from)
    if train_stage == 2 and cfg.model.num_quantizers < 2:
        raise TrainingError("train_stage 2 trains the NAR decoders: needs model.num_quantizers > 1")
    trainable = model.set_train_stage(train_stage)  # the NAR positional alphas stay at 1
    model.set_gradient_checkpointing(cfg.train.gradient_checkpointing)
    return model, trainable


def load_data(cfg: Config, processed_dir: Path, split: str, tokenizer: TextTokenizer) -> VALLESplit:
    """The split, filtered (lazily for the per-shard layout: `filter_split`) and checked."""
    data, rejected = filter_split(
        load_split(cfg, processed_dir, split),
        cfg,
        split,
        min_duration=cfg.preprocess.min_duration,
        max_duration=cfg.preprocess.max_duration,
    )
    if rejected and data.shards is None:
        shown = "; ".join(f"{cut_id}: {why}" for cut_id, why in rejected[:5])
        logger.warning("%s: left out %d cuts (%s%s)", split, len(rejected), shown,
                       " ..." if len(rejected) > 5 else "")  # fmt: skip
    if data.num_cuts == 0 or (data.shards is not None and rejected):
        raise DataError(empty_split_message(cfg, processed_dir, split, rejected))
    check_phones(data, tokenizer)
    return data


def empty_split_message(cfg: Config, processed_dir: Path, split: str, rejected: list) -> str:
    """Which filters left no usable cut in a split, and what to change."""
    if not rejected:
        return f"the {split} split in {processed_dir} holds no cuts: rerun stage 1"
    filters = {  # left_out_reason's reasons -> the config keys behind them
        "duration": f"preprocess.min_duration / max_duration = [{cfg.preprocess.min_duration}, "
        f"{cfg.preprocess.max_duration}] s",
        "no custom": "stage-1 fields (custom['phones'], codes): rerun stage 1",
        "longer than": f"train.max_tokens = {cfg.train.max_tokens} codec frames",
    }
    counts = {}
    for _, why in rejected:
        key = next((f for k, f in filters.items() if why.startswith(k)), why)
        counts[key] = counts.get(key, 0) + 1
    return (
        f"no usable {split} cuts in {processed_dir}: all {len(rejected)} were left out by "
        + "; ".join(f"{key} ({n} cuts)" for key, n in counts.items())
        + ". Widen these limits in the config or give the split other utterances."
    )


class VALLETrainRecipe(TrainRecipe):
    """VALL-E behind the engine's interface (models/base/train_recipe.py)."""

    run_command = "sh egs/tts/VALLE/run.sh"
    metric_parts = ("ar", "nar")
    fingerprint_names = {
        "codec": "codec (codec/codec.json)",
        "symbols": "symbol table (symbols.dict)",
    }
    stage_hint = " (NAR from an AR run: --ar_model_ckpt_dir)"

    def check_data(self) -> dict:
        cfg = self.cfg
        self.processed_dir, fingerprint = stage1_fingerprint(cfg)
        self.tokenizer = TextTokenizer.from_file(self.processed_dir / cfg.preprocess.symbols_dict)
        if cfg.model.text_token_num < self.tokenizer.vocab_size:
            raise TrainingError(
                f"model.text_token_num = {cfg.model.text_token_num} is smaller than the phone "
                f"vocabulary of {self.tokenizer.source} ({self.tokenizer.vocab_size} ids incl. "
                "pad/bos/eos): raise model.text_token_num"
            )
        return fingerprint

    def init_source(self) -> Path | None:
        """`--ar_model_ckpt_dir`: a NAR run (train_stage 2) starts from the AR run's weights."""
        ar_run, train_stage = self.args.ar_model_ckpt_dir, self.cfg.train.train_stage
        if ar_run and train_stage != 2:
            logger.warning("--ar_model_ckpt_dir is used by train_stage 2 only; ignoring it")
        elif ar_run:
            return resolve_checkpoint(ar_run).folder
        elif train_stage == 2:
            logger.warning(
                "train_stage 2 (NAR) without --ar_model_ckpt_dir: the AR decoder stays random; "
                "pass the AR experiment to get a model that can synthesise"
            )
        return None

    def load_data(self, split: str) -> VALLESplit:
        return load_data(self.cfg, self.processed_dir, split, self.tokenizer)

    def make_loader(self, cuts: VALLESplit, split: str, *, world_size: int, rank: int,
                    num_workers: int):  # fmt: skip
        return make_dataloader(cuts, self.cfg, self.tokenizer, shuffle=split == "train",
                               world_size=world_size, rank=rank, num_workers=num_workers,
                               name=split)  # fmt: skip

    def build_model(self, init_from: Path | None) -> tuple[VALLE, list]:
        return build_model(self.cfg, self.cfg.train.train_stage, init_from)

    def prepare_exp_dir(self, exp_dir: Path) -> None:
        shutil.copyfile(
            self.processed_dir / self.cfg.preprocess.symbols_dict, exp_dir / "symbols.dict"
        )

    def batch_loss(self, model, batch: dict, generator: torch.Generator, device):
        """Per-frame loss (Amphion: loss_sum / sum(y_lens)) and the metrics of one batch."""
        x, x_lens, y, y_lens = (batch[k].to(device) for k in ("x", "x_lens", "y", "y_lens"))
        prompts = batch.get("nar_prompts")  # prefix_mode 4
        loss_sum, metrics = model(
            x, x_lens, y, y_lens, train_stage=self.cfg.train.train_stage, generator=generator,
            nar_prompt_codes=None if prompts is None else prompts.to(device),
        )  # fmt: skip
        return loss_sum / y_lens.sum(), metrics

    def on_validation(self, run, result: dict[str, float]) -> None:
        """Training-time listening: a few validation utterances to tensorboard as audio."""
        if run.writer is not None and self.cfg.evaluation.listen_utterances:
            acc = run.accelerator
            model, batch = acc.unwrap_model(run.model), next(iter(run.valid_loader))
            write_listening_samples(model, batch, self.cfg, run.writer, run.step, acc.device)

    def describe(self) -> str:
        stage = self.cfg.train.train_stage
        return f"train_stage {stage} ({TRAIN_STAGES[stage]})"
