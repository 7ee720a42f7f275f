"""The Parler-TTS recipe's typed json5 configuration (`egs/tts/ParlerTTS/exp_config*.json`).

Same machinery as the other recipes (`utils/config_loader.py`): json5 with `base_config`
inheritance, unknown keys and wrong types rejected naming the key and the file, cross-field rules
in `validate()`. Relative paths inside the config (`processed_dir`, `log_dir`, `dataset_path.*`)
are relative to the repository root (`resolve_path`); a relative audio path inside a `custom`
list file is relative to that list file.

Sections: top level (corpora, `log_dir`), `preprocess` (stage 1: manifests, DAC codes, token ids,
descriptions), `model` (`pretrained`: the released-layout Parler-TTS folder or hub id whose
tokenizer, codec and weights the recipe uses), and `train` / `inference` / `evaluation`
(stages 2-4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from utils.config import EngineTrainConfig, ScoringConfig
from utils.config_loader import build, check, check_corpora, load_raw_config

CORPORA = ("libritts", "libritts_r", "expresso", "custom")  # custom_<name> / expresso_<name> too
ANNOTATE_MODES = ("missing", "all", "none")
PITCH_MODES = ("absolute", "speaker_corpus")
# The four Expresso voices under the names the Parler-TTS Expresso fine-tune speaks of
# (parler-tts/parler-tts-mini-expresso: Jerry, Elisabeth, Thomas, Talia), as public Expresso
# preparation scripts map the corpus' speaker ids.
EXPRESSO_NAMES = {"ex01": "Jerry", "ex02": "Elisabeth", "ex03": "Thomas", "ex04": "Talia"}


@dataclass
class ParlerPreprocessConfig:
    processed_dir: str = "data/parler"  # stage-1 output root (relative = repository root)
    num_workers: int = 1  # stage-1 DAC worker processes (per device)
    shard_size: int = 100  # utterances per DAC shard (unit of parallelism and resume)
    min_duration: float = 0.5  # utterances shorter than this (s) are rejected
    max_duration: float = 30.0  # utterances longer than this (s) are rejected (Parler: 30 s)
    libritts_train_subsets: list[str] = field(default_factory=lambda: ["train-clean-100"])  # train
    libritts_valid_subsets: list[str] = field(default_factory=lambda: ["dev-clean"])  # validation
    valid_fraction: float = 0.0  # held-out fraction for corpora without a valid split
    split_seed: int = 42  # seed of the held-out split
    expresso_speaker_names: dict[str, str] = field(default_factory=EXPRESSO_NAMES.copy)  # id: name
    expresso_styles: list[str] = field(default_factory=list)  # Expresso read styles kept ([] = all)
    codec: str = ""  # "" = DAC inside model.pretrained; a DacModel folder / hub id; "random_init"
    codec_seed: int = 0  # seed of a random-init codec (codec = "random_init": demo/tests only)
    annotate: str = "missing"  # descriptions: "missing" = write the absent ones, "all", "none"
    phone_language: str = "en-us"  # espeak-ng language of the G2P counting phones (speaking rate)
    annotation_pitch: str = "absolute"  # pitch words: "absolute" (Hz bins) or "speaker_corpus"
    # Not keys: the DAC's frame (44.1 kHz, hop 512), for the engine's batch limits in frames.
    sample_rate = 44100
    codec_hop_size = 512

    def validate(self) -> None:
        check(self.min_duration >= 0, "min_duration", "must be >= 0")
        check(
            self.max_duration > self.min_duration,
            "max_duration",
            f"must be greater than min_duration ({self.max_duration} <= {self.min_duration})",
        )
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.shard_size >= 1, "shard_size", "must be >= 1")
        check(0.0 <= self.valid_fraction < 1.0, "valid_fraction", "must be in [0, 1)")
        check(self.annotate in ANNOTATE_MODES, "annotate", f"must be one of {ANNOTATE_MODES}")
        check(
            self.annotation_pitch in PITCH_MODES,
            "annotation_pitch",
            f"must be one of {PITCH_MODES}",
        )


@dataclass
class ParlerModelConfig:
    pretrained: str = "parler-tts/parler-tts-mini-v1"  # released-layout folder or hub id


@dataclass
class ParlerTrainConfig(EngineTrainConfig):
    """Stage 2: the training engine's keys (utils/config.py `EngineTrainConfig`) and these."""

    train_prompt_embedding: bool = True  # also train the transcript (prompt) embedding

    @property
    def train_stage(self) -> int:
        """Not a key: Parler-TTS has one model train stage (the engine records it)."""
        return 0


@dataclass
class ParlerInferenceConfig:
    do_sample: bool = True  # sample (the package's default); false = greedy
    top_k: int = 50  # sample from the k most likely codes (0 = off; package default 50)
    top_p: float = 1.0  # nucleus sampling mass (1.0 = off)
    temperature: float = 1.0  # softmax temperature
    seed: int = 0  # sampling seed; each utterance's own seed = hash(seed, output name)
    batch_size: int = 8  # test-list lines decoded together (true batching, per-item EOS)
    max_new_tokens: int = 2580  # length cap in decoder steps (2580 = 30 s at 86 frames/s)
    use_kv_cache: bool = True  # false = recompute the whole sequence every step (same tokens)
    checkpoint: str = "latest"  # which checkpoint of an experiment: "latest" or "best"
    codec: str = ""  # DAC folder / hub id ("" = the experiment's stage-1 codec; a release's DAC)

    def validate(self) -> None:
        check(self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        check(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        check(self.temperature > 0, "temperature", "must be positive")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.checkpoint in ("latest", "best"), "checkpoint", "'latest' or 'best'")


@dataclass
class ParlerEvaluationConfig(ScoringConfig):
    """Stage 4: the scoring keys (utils/config.py `ScoringConfig`): WER/CER, DNSMOS, and the
    speaker similarity between outputs that share a speaker name (no prompt audio here)."""


@dataclass
class ParlerConfig:
    dataset: list[str] = field(default_factory=lambda: ["custom"])  # corpora to prepare
    dataset_path: dict[str, str] = field(default_factory=dict)  # corpus name -> root / list file
    log_dir: str = "exp/parler"  # experiments go to log_dir/<name> (relative = repository root)
    preprocess: ParlerPreprocessConfig = field(default_factory=ParlerPreprocessConfig)
    model: ParlerModelConfig = field(default_factory=ParlerModelConfig)
    train: ParlerTrainConfig = field(default_factory=ParlerTrainConfig)
    inference: ParlerInferenceConfig = field(default_factory=ParlerInferenceConfig)
    evaluation: ParlerEvaluationConfig = field(default_factory=ParlerEvaluationConfig)

    def validate(self) -> None:
        check_corpora(
            self.dataset,
            lambda name: corpus_kind(name) is not None,
            f"use one of {CORPORA} (or custom_X, expresso_X)",
        )
        for name in self.dataset:
            check(
                name in self.dataset_path,
                "dataset_path",
                f"no entry for corpus {name!r} (named in 'dataset')",
            )


def corpus_kind(name: str) -> str | None:
    """The reader of a corpus name: libritts (also LibriTTS-R), expresso, custom; else None."""
    if name in ("libritts", "libritts_r"):
        return "libritts"
    for kind in ("expresso", "custom"):
        if name == kind or name.startswith(kind + "_"):
            return kind
    return None


def load_parler_config(path: str | os.PathLike, overrides: dict | None = None) -> ParlerConfig:
    """Load, merge (base_config chain, then `overrides`) and validate a Parler-TTS config."""
    tree, origin, chain = load_raw_config(path, overrides)
    return build(ParlerConfig, tree, chain[0], origin)


def parler_config_from_dict(data: dict, source: str = "<dict>") -> ParlerConfig:
    """Validate an already-merged dict (e.g. a saved resolved config) into a ParlerConfig."""
    return build(ParlerConfig, data, source)
