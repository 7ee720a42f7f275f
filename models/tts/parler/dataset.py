"""Training data of Parler-TTS: stage-1 CutSets -> padded batches (the package's collator).

Stage 1 (bins/tts/parler_preprocess.py, docs/ARCHITECTURE.md "Parler-TTS") writes per cut the
description's and the transcript's token ids (`cut.custom["description_ids"]`, `["prompt_ids"]`,
made by the tokenizer of the model folder in `model_source.json`) and the DAC codes
(`cut.codes`, (frames, K)). A batch is a dict (what `ParlerTrainRecipe.batch_loss` feeds to
`ParlerTTS.forward`):

    input_ids              (B, S) description ids, right-padded with the T5 pad id
    attention_mask         (B, S) 1 = description token
    prompt_input_ids       (B, P) transcript ids, left-padded (the package's training script;
                                  our model gives the same result at any padding side)
    prompt_attention_mask  (B, P)
    labels                 (B, T + K, K) delayed labels (delay.delayed_labels), IGNORE-padded
    y_lens                 (B,) codec frames (the engine weighs validation losses by them)
    cut_ids                list[str]

Sampling and the resumable position are the engine's (models/base/train_data.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from lhotse import CutSet, combine
from lhotse.cut import Cut
from lhotse.dataset.collation import collate_vectors

from models.base.train_data import DataError
from models.tts.parler.delay import collate_labels, delayed_labels
from models.tts.parler.parler import ParlerConfig

logger = logging.getLogger(__name__)

STAGE1_FORMAT = "codectts-parler-stage1-1"
CUSTOM_KEYS = ("description_ids", "prompt_ids")


def read_stage1(processed_dir: Path) -> tuple[dict, dict]:
    """(stage1.done.json, model_source.json) of a finished stage 1; DataError otherwise."""
    out = []
    for name in ("stage1.done.json", "model_source.json"):
        path = processed_dir / name
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(
                f"stage-1 output missing: {path} does not exist. Run the data stage first "
                "(sh egs/tts/ParlerTTS/run.sh --stage 1 with the same --config) or point "
                "preprocess.processed_dir at its output."
            ) from None
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON ({e}); rerun stage 1") from None
    if out[0].get("format") != STAGE1_FORMAT:
        raise DataError(
            f"{processed_dir / 'stage1.done.json'}: format {out[0].get('format')!r}, expected "
            f"{STAGE1_FORMAT!r} (not Parler-TTS stage-1 output): rerun stage 1"
        )
    return out[0], out[1]


def load_split(processed_dir: Path, datasets: list[str], split: str) -> CutSet:
    """The `split` cuts of every corpus, in config order. Every corpus has train cuts; valid
    cuts may come from some corpora only (stage 1 writes none without a validation share)."""
    paths = [processed_dir / d / f"cuts_{split}.jsonl.gz" for d in datasets]
    sets = [CutSet.from_file(p).to_eager() for p in paths if p.is_file()]
    sets = [s for s in sets if len(s)]
    if len(sets) < (len(paths) if split == "train" else 1):
        raise DataError(
            f"no {split} cuts in some of {', '.join(map(str, paths))}: rerun stage 1 (the "
            "valid split needs preprocess.valid_fraction > 0 or a valid subset)"
        )
    return sets[0] if len(sets) == 1 else combine(*sets)


def check_cut(cut: Cut, arch: ParlerConfig) -> str | None:
    """Why a cut cannot be trained on by a model of architecture `arch`, or None."""
    custom = cut.custom or {}
    missing = [k for k in CUSTOM_KEYS if not custom.get(k)]
    if missing or not cut.has_custom("codes"):
        return f"no {', '.join(missing) or 'codes'} (not a Parler-TTS stage-1 cut)"
    shape = cut.codes.shape
    if len(shape) != 2 or shape[1] != arch.num_codebooks or shape[0] < 1:
        return f"codes of shape {tuple(shape)}, expected (frames >= 1, {arch.num_codebooks})"
    for key, size in (("description_ids", int(arch.text_encoder.get("vocab_size", 32128))),
                      ("prompt_ids", arch.prompt_vocab_size)):  # fmt: skip
        if not all(0 <= i < size for i in custom[key]):
            return f"{key} outside [0, {size}): tokenized by another tokenizer; rerun stage 1"
    positions = len(custom["prompt_ids"]) + shape[0] + arch.num_codebooks
    if positions > arch.max_position_embeddings:
        return (f"transcript + codes = {positions} positions > max_position_embeddings "
                f"{arch.max_position_embeddings}")  # fmt: skip
    return None


class ParlerDataset(torch.utils.data.Dataset):
    """Map-style lhotse dataset: `dataset[cutset]` -> one padded batch (module docstring)."""

    def __init__(self, num_codebooks: int, codebook_size: int, bos: int, eos: int, text_pad: int):
        self.K, self.codebook_size = num_codebooks, codebook_size
        self.bos, self.eos, self.text_pad = bos, eos, text_pad

    def load_codes(self, cut: Cut) -> torch.Tensor:
        """(K, frames) int64 codes of a cut, checked to be in [0, codebook_size)."""
        codes = torch.as_tensor(cut.load_codes()).long().t()
        if codes.shape[0] != self.K or codes.numel() == 0:
            raise DataError(f"cut {cut.id}: codes of shape {tuple(codes.shape[::-1])}, expected "
                            f"(frames >= 1, {self.K}): rerun stage 1")  # fmt: skip
        if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
            raise DataError(f"cut {cut.id}: codes outside [0, {self.codebook_size}): rerun stage 1")
        return codes

    def __getitem__(self, cuts: CutSet) -> dict:
        cuts = list(cuts)
        codes = [self.load_codes(c) for c in cuts]
        descriptions = [torch.tensor(c.custom["description_ids"]) for c in cuts]
        prompts = [torch.tensor(c.custom["prompt_ids"]) for c in cuts]
        ones = [torch.ones_like(p) for p in prompts]
        return {
            "input_ids": collate_vectors(descriptions, self.text_pad),  # (B, S)
            "attention_mask": collate_vectors([torch.ones_like(d) for d in descriptions], 0),
            "prompt_input_ids": collate_vectors(prompts, self.text_pad, pad_direction="left"),
            "prompt_attention_mask": collate_vectors(ones, 0, pad_direction="left"),
            "labels": collate_labels([delayed_labels(c, self.bos, self.eos) for c in codes]),
            "y_lens": torch.tensor([c.shape[1] for c in codes], dtype=torch.long),
            "cut_ids": [c.id for c in cuts],
        }
