"""Recipe stage 2 for Parler-TTS: its part of the training engine (models/base/trainer.py).

What is Parler's here, behind the engine's `TrainRecipe` interface:
- data: the stage-1 cuts (description / transcript ids, DAC codes; `dataset.py`), fingerprinted
  by the tokenizer that made the ids and the codec that made the codes;
- model: a fresh run starts from the released-layout folder `model.pretrained` (hub id or
  folder, e.g. parler-tts/parler-tts-mini-v1, or the demo's tiny random one) with the package's
  parameter names; a resume or `--resume_type finetune` from one of our experiments starts
  from its checkpoint. The T5 text encoder is frozen; the decoder (with enc_to_dec_proj where
  present) is trained, the prompt embedding too unless `train.train_prompt_embedding` is false;
- loss: the package's (`ParlerTTS.loss`): per codebook the mean cross-entropy over its codes and
  its one EOS under the delay pattern, summed over codebooks / K.
Everything else (update order, accumulation, bf16/fp16, DDP, checkpoints, exact resume,
signals, logs) is the engine's.

The experiment keeps the architecture and tokenizer files of the model it started from in
`<exp>/parler/` (config.json, generation_config.json, tokenizer files: a released-layout folder
without weights); `export_release` adds a checkpoint's weights to make a folder that
`pretrained.load_pretrained` (and the parler-tts package) read.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from lhotse import CutSet

from models.base.train_data import DataError, ResumableBatches, make_loader, make_sampler
from models.base.train_recipe import TrainRecipe
from models.base.train_state import TrainingError
from models.base.trainer import parse_args as engine_args
from models.base.trainer import train
from models.codec.dac import PACKAGE_PREFIX, DacCodec, package_state_from_dac
from models.tts.parler.dataset import ParlerDataset, check_cut, load_split, read_stage1
from models.tts.parler.parler import ParlerConfig, ParlerTTS
from models.tts.parler.pretrained import (
    ALLOW_PATTERNS,
    ParlerLoadError,
    load_pretrained,
    load_state,
    read_config,
    resolve_folder,
)
from utils.checkpoint import (
    CheckpointError,
    atomic_directory,
    load_weights,
    read_meta,
    resolve_checkpoint,
)
from utils.config import read_json5, resolve_path
from utils.config_parler import load_parler_config

logger = logging.getLogger("codectts.train")

MODEL_DIR = "parler"  # <exp>/parler: the released-layout files of the model, weights aside
MODEL_FILES = [p for p in ALLOW_PATTERNS if "safetensors" not in p]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return engine_args(argv, "Recipe stage 2: train (fine-tune) Parler-TTS.")


def main(argv: list[str] | None = None) -> int:
    """One training process (run.sh starts one per visible GPU under accelerate, DDP)."""
    return train(parse_args(argv), ParlerTrainRecipe)


def file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DataError(f"stage-1 output incomplete: {path} is missing; rerun stage 1") from None


def stage1_source(cfg) -> tuple[Path, Path, dict]:
    """(processed_dir, model folder whose tokenizer made the ids, data fingerprint)."""
    processed_dir = resolve_path(cfg.preprocess.processed_dir)
    _, source = read_stage1(processed_dir)
    if source.get("pretrained") != cfg.model.pretrained:
        raise DataError(
            f"model.pretrained = {cfg.model.pretrained!r}, but the stage-1 data in "
            f"{processed_dir} were tokenized with {source.get('pretrained')!r} "
            f"({processed_dir / 'model_source.json'}): the ids would mean something else. Use "
            "the same model.pretrained, or rerun stage 1."
        )
    folder = Path(source.get("folder") or "")
    if not (folder / "config.json").is_file():
        folder = resolve_folder(cfg.model.pretrained)
    codec = processed_dir / "codec"
    codec_meta = next((codec / n for n in ("dac.json", "codec.json") if (codec / n).is_file()),
                      codec / "dac.json")  # fmt: skip
    fingerprint = {
        "processed_dir": str(processed_dir),
        "tokenizer": file_hash(folder / "tokenizer.json"),
        "codec": file_hash(codec_meta),
    }
    return processed_dir, folder, fingerprint


def experiment_model_dir(ckpt: Path) -> Path:
    """<exp>/parler of the experiment a checkpoint folder belongs to."""
    return ckpt.parent.parent / MODEL_DIR


def copy_model_files(src: Path, dst: Path, tensors: dict | None = None) -> None:
    """The released-layout files other than weights (config, generation config, tokenizer)
    into a new folder `dst`, written atomically; with `tensors`, model.safetensors too."""
    from safetensors.torch import save_file

    with atomic_directory(dst) as tmp:
        for name in MODEL_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        if tensors is not None:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})


def trainable_parameters(model: ParlerTTS, train_prompt_embedding: bool) -> list:
    """Decoder (+ enc_to_dec_proj) and, optionally, the prompt embedding; T5 stays frozen."""
    model.freeze_text_encoder()
    model.embed_prompts.requires_grad_(train_prompt_embedding)
    return [p for p in model.parameters() if p.requires_grad]


def build_model(init_from: Path | None, fresh: Path) -> tuple[ParlerTTS, Path]:
    """(model, its architecture folder): `fresh`'s released weights, or a checkpoint's."""
    if init_from is None:
        model = load_pretrained(fresh)
        logger.info("weights loaded from %s", fresh)
        return model, fresh
    arch = experiment_model_dir(init_from)
    model = ParlerTTS(read_config(arch))
    load_state(model, load_weights(init_from), init_from / "model.safetensors")
    logger.info("weights loaded from %s (architecture %s)", init_from, arch / "config.json")
    return model, arch


def top10_metrics(out, labels: torch.Tensor) -> dict:
    """Sums over the positions in the loss: cross-entropy, count, top-10 hits (for the logs)."""
    mask = out.loss_mask  # (B, T, K)
    logits = out.logits.detach().transpose(1, 2)[mask].float()  # (N, V)
    targets = labels[mask]
    hits = (logits.topk(min(10, logits.shape[-1]), dim=-1).indices == targets[:, None]).any(-1)
    return {
        "audio_loss": float(F.cross_entropy(logits, targets, reduction="sum")),
        "audio_frames": int(mask.sum()),
        "audio_top10_correct": int(hits.sum()),
    }


class ParlerTrainRecipe(TrainRecipe):
    """Parler-TTS behind the engine's interface (models/base/train_recipe.py)."""

    run_command = "sh egs/tts/ParlerTTS/run.sh"
    metric_parts = ("audio",)
    fingerprint_names = {
        "tokenizer": "tokenizer (tokenizer.json of model_source.json's folder)",
        "codec": "DAC codec (codec/)",
    }
    load_config = staticmethod(load_parler_config)

    def check_data(self) -> dict:
        self.processed_dir, self.fresh, fingerprint = stage1_source(self.cfg)
        self.arch: ParlerConfig = read_config(self.fresh)
        return fingerprint

    def load_data(self, split: str) -> CutSet:
        cfg, arch = self.cfg, self.arch
        kept, rejected = [], []
        for cut in load_split(self.processed_dir, cfg.dataset, split):
            why = check_cut(cut, arch) or self.too_long(cut)
            (kept if why is None else rejected).append(cut if why is None else (cut.id, why))
        if rejected:
            shown = "; ".join(f"{c}: {why}" for c, why in rejected[:5])
            logger.warning("%s: left out %d cuts (%s%s)", split, len(rejected), shown,
                           " ..." if len(rejected) > 5 else "")  # fmt: skip
        if not kept:
            raise DataError(f"no usable {split} cuts in {self.processed_dir} "
                            f"({len(rejected)} left out, see above)")  # fmt: skip
        return CutSet.from_cuts(kept)

    def too_long(self, cut) -> str | None:
        frames, train = cut.codes.shape[0], self.cfg.train
        if train.use_dynamic_batchsize and frames > train.max_tokens:
            return f"{frames} frames > train.max_tokens = {train.max_tokens}"
        return None

    def make_loader(self, cuts: CutSet, split: str, *, world_size: int, rank: int,
                    num_workers: int):  # fmt: skip
        a = self.arch
        text_pad = int(a.text_encoder.get("pad_token_id", 0))
        dataset = ParlerDataset(a.num_codebooks, a.pad_token_id, a.bos_token_id,
                                a.eos_token_id, text_pad)  # fmt: skip
        sampler = make_sampler(cuts, self.cfg, shuffle=split == "train", world_size=world_size,
                               rank=rank, name=split)  # fmt: skip
        batches = ResumableBatches(sampler)
        return make_loader(dataset, batches, num_workers), batches

    def build_model(self, init_from: Path | None) -> tuple[ParlerTTS, list]:
        train_prompt = self.cfg.train.train_prompt_embedding
        if init_from is not None and self.args.resume and self.args.resume_type == "resume":
            recorded = read_meta(init_from).get("train_prompt_embedding", train_prompt)
            if recorded != train_prompt:  # the optimizer state holds other parameters
                raise TrainingError(
                    f"{init_from} was trained with train.train_prompt_embedding = "
                    f"{str(recorded).lower()}: resume with the same value, or start a new "
                    "experiment from it with --resume_type finetune"
                )
        model, self.model_dir = build_model(init_from, self.fresh)
        if model.cfg.num_codebooks != self.arch.num_codebooks:
            raise DataError(f"{self.model_dir}: {model.cfg.num_codebooks} codebooks, the data "
                            f"{self.arch.num_codebooks}")  # fmt: skip
        return model, trainable_parameters(model, train_prompt)

    def meta(self) -> dict:
        return {"train_prompt_embedding": self.cfg.train.train_prompt_embedding}

    def prepare_exp_dir(self, exp_dir: Path) -> None:
        if self.model_dir != exp_dir / MODEL_DIR:
            copy_model_files(self.model_dir, exp_dir / MODEL_DIR)

    def batch_loss(self, model, batch: dict, generator: torch.Generator, device):
        """The package's loss (mean per codebook, / K) and the log metrics of one batch."""
        keys = ("input_ids", "attention_mask", "prompt_input_ids", "prompt_attention_mask")
        labels = batch["labels"].to(device)
        out = model(**{k: batch[k].to(device) for k in keys}, labels=labels)
        return out.loss, top10_metrics(out, labels)

    def describe(self) -> str:
        prompt = "+ prompt embedding " if self.cfg.train.train_prompt_embedding else ""
        return f"the Parler-TTS decoder {prompt}(T5 text encoder frozen)"


def export_release(expt: str | Path, output_dir: Path, which: str = "latest") -> Path:
    """A released-layout folder (config.json, tokenizer files, model.safetensors with every
    parameter under the package's names) from an experiment or one of its checkpoints."""
    try:
        found = resolve_checkpoint(expt, which)
    except CheckpointError as e:
        raise ParlerLoadError(str(e)) from None
    src = experiment_model_dir(found.folder)
    model = ParlerTTS(read_config(src))
    load_state(model, load_weights(found.folder), found.weights)
    # every name stored (T5's tied pair twice, as the package saves), plus the experiment's DAC
    # under the package's audio_encoder.model.* names, so the folder holds its codec too
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    codec = DacCodec.load(experiment_codec(found.root))
    tensors.update({PACKAGE_PREFIX + k: v for k, v in package_state_from_dac(codec.model).items()})
    copy_model_files(src, output_dir, tensors)
    logger.info("exported %s (+ the DAC of %s) -> %s", found.folder, codec.source, output_dir)
    return output_dir


def experiment_codec(root: Path) -> Path:
    """The stage-1 DAC of an experiment: <processed_dir>/codec of its saved config."""
    try:
        processed = read_json5(root / "config.json")["preprocess"]["processed_dir"]
    except (OSError, KeyError, TypeError, ValueError):
        raise ParlerLoadError(f"{root / 'config.json'}: no preprocess.processed_dir (is this a "
                              "Parler-TTS experiment?)") from None  # fmt: skip
    return resolve_path(processed) / "codec"
