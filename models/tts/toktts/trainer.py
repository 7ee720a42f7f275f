"""Recipe stage 2 for TokTTS: its part of the training engine (models/base/trainer.py).

What is TokTTS's here, behind the engine's `TrainRecipe` interface: the stage-1 data (lhotse cuts
whose `codes` are the first `model.max_audio_seconds` of 2-codebook EnCodec tokens, texts encoded
with the stage-1 `chars.json`; fingerprinted by the codec and the character table), the model
(one stage: train_stage 0 = everything), and the loss of a batch: cross-entropy per target token
(`model.make_batch`: frame-major tokens + EOS when the utterance ended before the cap).
Everything else (accelerate / DDP, update order, accumulation, mixed precision, checkpoints,
resume / finetune, signals, logs) is the engine's.

The experiment folder gets `chars.json` and `codec/` (hard links when possible) next to its
`checkpoint/` folders, so `models.tts.toktts.text_to_speech_pipeline(<log_dir>/<name>)` loads
it directly (pipeline.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lhotse import CutSet

from models.base.train_data import DataError, ResumableBatches, make_loader, make_sampler
from models.base.train_recipe import TrainRecipe
from models.base.train_state import check_model_config
from models.base.trainer import parse_args as engine_args
from models.base.trainer import train
from models.tts.toktts.model import IGNORE, CharTable, TokTTS, TokTTSBatch, make_batch
from text.chars import UnknownCharacterError
from utils.checkpoint import load_weights
from utils.config_loader import resolve_path
from utils.toktts_config import TokTTSRecipeConfig, load_toktts_config

logger = logging.getLogger("codectts.train")
BATCH_KEYS = ("text", "text_lens", "inputs", "targets")


def main(argv: list[str] | None = None) -> int:
    """One training process; run.sh starts one per visible GPU (DDP) when there are several."""
    return train(engine_args(argv, "Recipe stage 2: train TokTTS."), TokTTSTrainRecipe)


class TokTTSDataset(torch.utils.data.Dataset):
    """CutSet -> {text, text_lens, inputs, targets (model.TokTTSBatch fields), cut_ids, y_lens}."""

    def __init__(self, cfg: TokTTSRecipeConfig, chars: CharTable):
        self.cfg, self.chars = cfg, chars

    def __getitem__(self, cuts: CutSet) -> dict:
        cuts = list(cuts)
        text = [torch.tensor(self.chars.encode(c.supervisions[0].text)) for c in cuts]
        codes = [torch.from_numpy(c.load_codes().astype(np.int64)) for c in cuts]
        batch = make_batch(self.cfg.model, text, codes)
        frames = [min(len(c), self.cfg.model.max_frames) for c in codes]
        return {
            **{k: getattr(batch, k) for k in BATCH_KEYS},
            "cut_ids": [c.id for c in cuts],
            "y_lens": torch.tensor(frames),
        }


def _sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_stage1(cfg: TokTTSRecipeConfig) -> tuple[Path, dict]:
    """The stage-1 folder, checked against the model section; its fingerprint."""
    processed = resolve_path(cfg.preprocess.processed_dir)
    needed = [processed / n for n in ("stage1.done.json", "chars.json", "config.json")]
    needed.append(processed / "codec" / "codec.json")
    for path in needed:
        if not path.is_file():
            raise DataError(
                f"stage-1 output missing: {path} does not exist. Run the data stage "
                "first (sh egs/tts/TokTTS/run.sh --stage 1 with the same --config) "
                "or point preprocess.processed_dir at its output."
            )
    made = json.loads((processed / "config.json").read_text(encoding="utf-8")).get("model", {})
    for key in ("max_audio_seconds", "frame_rate", "num_codebooks"):
        if made.get(key) != getattr(cfg.model, key):
            raise DataError(
                f"{processed} was made with model.{key} = {made.get(key)}, the "
                f"config asks for {getattr(cfg.model, key)}: rerun stage 1 with "
                "this config (or another preprocess.processed_dir)"
            )
    fingerprint = {
        "processed_dir": str(processed),
        "codec": _sha_file(processed / "codec" / "codec.json"),
        "chars": _sha_file(processed / "chars.json"),
    }
    return processed, fingerprint


def load_split(cfg: TokTTSRecipeConfig, processed: Path, split: str, chars: CharTable) -> CutSet:
    """The `split` cuts of every corpus; every text must fit the character table."""
    paths = [processed / name / f"cuts_{split}.jsonl.gz" for name in cfg.dataset]
    found = [p for p in paths if p.is_file()]
    if not found:
        raise DataError(
            f"no {split} cuts: none of {', '.join(map(str, paths))} exists. Rerun "
            "stage 1 (a valid split needs preprocess.valid_fraction > 0)."
        )
    cuts = CutSet.from_cuts(c for p in found for c in CutSet.from_file(p))
    if len(cuts) == 0:
        raise DataError(f"the {split} split in {processed} holds no cuts: rerun stage 1")
    for cut in cuts:
        try:
            chars.encode(cut.supervisions[0].text)
        except (UnknownCharacterError, ValueError, IndexError) as e:
            raise DataError(
                f"{split} cut {cut.id}: {e} ({processed / 'chars.json'}): rerun stage 1"
            ) from None
    return cuts


def link_tree(src: Path, dst: Path) -> None:
    """Copy a folder as hard links (no space used) where the file system allows, else copies;
    files already there (a resumed run) are replaced."""

    def link(a: str, b: str) -> None:
        Path(b).unlink(missing_ok=True)
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


class TokTTSTrainRecipe(TrainRecipe):
    """TokTTS behind the engine's interface (models/base/train_recipe.py)."""

    run_command = "sh egs/tts/TokTTS/run.sh"
    metric_parts = ("audio",)
    fingerprint_names = {
        "codec": "codec (codec/codec.json)",
        "chars": "character table (chars.json)",
    }

    @staticmethod
    def load_config(path: str, overrides: dict) -> TokTTSRecipeConfig:
        return load_toktts_config(path, overrides)

    def resume_options(self, train_stage: int) -> str:
        return ""  # one training stage

    def check_data(self) -> dict:
        self.processed_dir, fingerprint = check_stage1(self.cfg)
        self.chars = CharTable.load(self.processed_dir / "chars.json")
        if len(self.chars) > self.cfg.model.vocab_size:
            raise DataError(
                f"{self.processed_dir / 'chars.json'} has {len(self.chars)} ids, "
                f"model.vocab_size is {self.cfg.model.vocab_size}: raise it"
            )
        return fingerprint

    def load_data(self, split: str) -> CutSet:
        return load_split(self.cfg, self.processed_dir, split, self.chars)

    def make_loader(
        self, cuts: CutSet, split: str, *, world_size: int, rank: int, num_workers: int
    ) -> tuple[torch.utils.data.DataLoader, ResumableBatches]:
        sampler = make_sampler(
            cuts, self.cfg, shuffle=split == "train", world_size=world_size, rank=rank, name=split
        )
        batches = ResumableBatches(sampler)
        return make_loader(TokTTSDataset(self.cfg, self.chars), batches, num_workers), batches

    def build_model(self, init_from: Path | None) -> tuple[TokTTS, list]:
        model = TokTTS(self.cfg.model)
        if init_from is not None:
            check_model_config(init_from, self.cfg)
            model.load_state_dict(load_weights(init_from))
            logger.info("weights loaded from %s", init_from)
        return model, list(model.parameters())

    def prepare_exp_dir(self, exp_dir: Path) -> None:
        shutil.copyfile(self.processed_dir / "chars.json", exp_dir / "chars.json")
        link_tree(self.processed_dir / "codec", exp_dir / "codec")

    def batch_loss(self, model, batch: dict, generator: torch.Generator, device):
        """Cross-entropy per target token, and the sums behind audio_loss / audio_top10_acc."""
        logits = model(TokTTSBatch(*(batch[k].to(device) for k in BATCH_KEYS)))  # (B, L, V)
        targets = batch["targets"].to(device)
        real = targets != IGNORE
        loss_sum = F.cross_entropy(
            logits.transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="sum"
        )
        top10 = (logits.topk(10, dim=-1).indices == targets[..., None]).any(-1) & real
        tokens = real.sum()
        metrics = {
            "audio_loss": loss_sum.detach(),
            "audio_frames": tokens,
            "audio_top10_correct": top10.sum(),
        }
        return loss_sum / tokens, metrics

    def describe(self) -> str:
        return "TokTTS (character encoder + audio decoder, train_stage 0)"
