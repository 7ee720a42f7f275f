"""A small Parler-TTS world for the recipe tests: a released-layout model folder, a stage-1 output
in the layout of the stage-1 contract (docs/ARCHITECTURE.md "Parler-TTS"), a recipe config.

The model folder is the oracle fixture's (../shared/fixtures/parler_tts_tiny: config.json,
model.safetensors with the package's names, K = 4 codebooks, vocab 64) plus a character-level
tokenizer.json made with the `tokenizers` library (ids end with </s> = 1, pad = 0). The stage-1
output holds random codes and the tokenizer's ids of random texts, written like stage 1 writes
them (lhotse cuts, codes as a TemporalArray with the DAC's 512 / 44100 s frame shift).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from parler_fixture import FIXTURE

REPO = Path(__file__).resolve().parents[1]
HOP = 512 / 44100
CHARS = list("abcdefghijklmnopqrstuvwxyz.,'?! ")
WORDS = "a calm voice speaks slowly quickly with high pitch low noise clear sad happy".split()


def make_model_folder(dst: Path) -> Path:
    """The fixture's weights + config and a tiny tokenizer, in the released layout."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copyfile(FIXTURE / name, dst / name)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])  # fmt: skip
    tok.save(str(dst / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>",
              "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 512}  # fmt: skip
    (dst / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return dst


def sentence(rng, n: tuple[int, int]) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(*n))))


def make_stage1(root: Path, model: Path, n_train: int = 6, n_valid: int = 2, seed: int = 0,
                frames: tuple[int, int] = (6, 14)) -> Path:  # fmt: skip
    """A stage-1 output under root (corpus "custom", 2 speakers) tokenized by `model`'s
    tokenizer, with a random-init DAC of 4 codebooks in root/codec; returns root."""
    from lhotse import CutSet, MonoCut, SupervisionSegment
    from lhotse.features.io import NumpyFilesWriter

    from models.codec.dac import DacCodec
    from models.tts.parler.pretrained import load_tokenizer

    rng, tokenizer = np.random.default_rng(seed), load_tokenizer(model)
    root.mkdir(parents=True, exist_ok=True)
    DacCodec.random_init(num_codebooks=4, seed=seed).save(root / "codec")
    done = {"format": "codectts-parler-stage1-1", "fingerprint": "test"}
    (root / "stage1.done.json").write_text(json.dumps(done), encoding="utf-8")
    source = {"pretrained": str(model), "folder": str(model)}
    (root / "model_source.json").write_text(json.dumps(source), encoding="utf-8")
    out = root / "custom"
    out.mkdir(exist_ok=True)
    with NumpyFilesWriter(str(out / "codes")) as writer:
        for split, n in (("train", n_train), ("valid", n_valid)):
            cuts = []
            for i in range(n):
                cut_id, t = f"{split}_{i:03d}", int(rng.integers(frames[0], frames[1] + 1))
                text, description = sentence(rng, (2, 5)), sentence(rng, (3, 7))
                cut = MonoCut(id=cut_id, start=0.0, duration=t * HOP, channel=0)
                cut.supervisions = [SupervisionSegment(cut_id, cut_id, 0.0, t * HOP, text=text,
                                                       speaker=f"spk{i % 2}")]  # fmt: skip
                cut.custom = {"description": description, "style": None, "annotation": None,
                              "description_ids": tokenizer(description).input_ids,
                              "prompt_ids": tokenizer(text).input_ids}  # fmt: skip
                codes = rng.integers(0, 1024, size=(t, 4)).astype(np.int16)
                cut.codes = writer.store_array(cut_id, codes, frame_shift=HOP, temporal_dim=0)
                cuts.append(cut)
            CutSet.from_cuts(cuts).to_file(out / f"cuts_{split}.jsonl.gz")
    return root


def write_config(path: Path, processed: Path, model: Path, log_dir: Path, **train) -> Path:
    """A recipe config over `processed` (json5 base: the demo config), tiny training run."""
    cfg = {
        "base_config": str(REPO / "egs" / "tts" / "ParlerTTS" / "exp_config_demo.json"),
        "dataset": ["custom"],
        "dataset_path": {"custom": str(processed / "list.txt")},
        "log_dir": str(log_dir),
        "preprocess": {"processed_dir": str(processed)},
        "model": {"pretrained": str(model)},
        "train": {"batch_size": 2, "max_epoch": 0, "max_steps": 6, "base_lr": 1e-3,
                  "warmup_steps": 1, "total_training_steps": 20, "valid_interval": 0,
                  "save_interval": 0, "log_interval": 1, "num_workers": 0, "keep_last": 2,
                  "random_seed": 7, **train},
    }  # fmt: skip
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path
