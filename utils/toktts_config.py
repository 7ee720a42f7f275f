"""The TokTTS recipe's typed json5 configuration (egs/tts/TokTTS/exp_config*.json).

The same machinery as the VALL-E recipe's (`utils/config_loader.py`: json5, `base_config`
inheritance, unknown keys and wrong types rejected naming the key and the file) and the same key
names where the meaning is the same (`dataset`, `dataset_path`, `log_dir`,
`preprocess.processed_dir`, `train.*`, `inference.top_k`, ...). Sections:

* `preprocess` (`TokTTSPreprocessConfig`): TokTTS's own stage 1 (no phones; the first
  `model.max_audio_seconds` of each utterance; augmentation; the optional text normaliser);
* `model` (`TokTTSConfig`, the architecture; `models/tts/toktts/model.py` re-exports it);
* `train`, `inference`, `evaluation`: VALL-E's sections (`utils/config.py`), reused as they are.
  Their VALL-E-only keys (`VALLE_ONLY`: the AR/NAR train stage, prompts, phones) do nothing
  here, so a file that sets one is refused like an unknown key; `train.train_stage` is 0
  (the whole model) for every TokTTS run.

This module is in `utils/` (level 0) because stage 1 (`preprocessors/`) and the recipe
(`models/tts/toktts/`) both read it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from utils.config import EvaluationConfig, InferenceConfig, TrainConfig, check_codec_and_splits
from utils.config_loader import ConfigError, build, check, check_corpora, load_raw_config


@dataclass
class TokTTSConfig:
    vocab_size: int = 0  # character embedding rows incl. padding (>= len(CharTable))
    dim: int = 256  # transformer width (encoder and decoder)
    nhead: int = 4  # attention heads
    encoder_layers: int = 4  # character encoder layers
    decoder_layers: int = 4  # audio decoder layers (self + cross-attention)
    dropout: float = 0.1  # dropout (training only)
    num_codebooks: int = 2  # EnCodec codebooks modelled (1.5 kbps = 2)
    codebook_size: int = 1024  # codes per codebook
    frame_rate: int = 75  # codec frames per second (EnCodec 24 kHz)
    max_audio_seconds: float = 2.0  # audio modelled per utterance (the first seconds)

    def validate(self) -> None:
        check(self.vocab_size > 1, "vocab_size", "must be > 1 (characters + padding)")
        check(self.dim > 0 and self.dim % 2 == 0, "dim", "must be a positive even number")
        check(self.nhead > 0 and self.dim % self.nhead == 0, "nhead", "must divide dim")
        check(self.encoder_layers > 0, "encoder_layers", "must be positive")
        check(self.decoder_layers > 0, "decoder_layers", "must be positive")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(self.num_codebooks > 0, "num_codebooks", "must be positive")
        check(self.codebook_size > 0, "codebook_size", "must be positive")
        check(self.frame_rate > 0, "frame_rate", "must be positive")
        check(self.max_frames >= 1, "max_audio_seconds", "must give at least one frame")

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> TokTTSConfig:
        """Typed and validated; an unknown key or a wrong type names the key and ``source``."""
        return build(cls, data, source)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def max_frames(self) -> int:
        return round(self.max_audio_seconds * self.frame_rate)

    @property
    def max_tokens(self) -> int:
        return self.max_frames * self.num_codebooks

    @property
    def bos_id(self) -> int:
        return self.num_codebooks * self.codebook_size

    @property
    def eos_id(self) -> int:
        return self.bos_id + 1

    @property
    def audio_vocab_size(self) -> int:
        return self.eos_id + 1


@dataclass
class TokTTSPreprocessConfig:
    processed_dir: str = "data/toktts"  # stage-1 output root (relative = repository root)
    codec_bandwidth: float = 1.5  # EnCodec 24 kHz kbps: 0.75 per codebook (= model.num_codebooks)
    codec_pretrained: bool = True  # official EnCodec weights; false = random init (demo/tests)
    codec_checkpoint: str = ""  # local EnCodec weights file (no network needed)
    codec_init_seed: int = 0  # seed of the k-means init of a random-init codec
    codec_init_seconds: float = 20.0  # corpus audio (s) for the k-means init of a random-init codec
    shard_size: int = 500  # utterance copies per stage-1 shard (unit of resume)
    min_duration: float = 0.5  # utterances shorter than this (s) are rejected
    max_duration: float = 30.0  # utterances longer than this (s) are rejected
    valid_fraction: float = 0.02  # held-out validation fraction (LJSpeech has no valid subset)
    test_fraction: float = 0.0  # held-out test fraction
    split_seed: int = 42  # seed of the held-out split
    augmentation_factor: int = 1  # copies of each train utterance: copy 0 original, 1.. perturbed
    augment_speed: list[float] = field(default_factory=lambda: [0.9, 1.1])  # speed factor range
    augment_gain_db: list[float] = field(default_factory=lambda: [-6.0, 3.0])  # gain range (dB)
    augment_seed: int = 0  # seed of the perturbation draws (per utterance and copy)
    fade_out_seconds: float = 0.0  # fade-out over the end of each clip (0 = hard cut at the cap)
    normalize_text: bool = False  # NFKC, typographic quotes/dashes -> ASCII, spaces collapsed

    # Not keys: the engine's frame hop (models/base/train_data.hop_seconds) reads these.
    sample_rate = 24000
    codec_hop_size = 320

    def validate(self) -> None:
        check(self.min_duration >= 0, "min_duration", "must be >= 0")
        check(self.max_duration > self.min_duration, "max_duration", "must be > min_duration")
        check_codec_and_splits(self)
        check(self.augmentation_factor >= 1, "augmentation_factor", "must be >= 1 (1 = off)")
        low, high = (self.augment_speed + [0.0, 0.0])[:2]
        check(
            len(self.augment_speed) == 2 and 0 < low <= high,
            "augment_speed",
            "must be [low, high] with 0 < low <= high",
        )
        low, high = (self.augment_gain_db + [0.0, 0.0])[:2]
        check(
            len(self.augment_gain_db) == 2 and low <= high,
            "augment_gain_db",
            "must be [low, high] in dB with low <= high",
        )
        check(self.fade_out_seconds >= 0, "fade_out_seconds", "must be >= 0")


@dataclass
class TokTTSRecipeConfig:
    model_type: str = "TokTTS"  # must be "TokTTS"
    dataset: list[str] = field(default_factory=lambda: ["ljspeech"])  # corpora to prepare
    dataset_path: dict[str, str] = field(default_factory=dict)  # corpus name -> root / list file
    log_dir: str = "exp/toktts"  # experiments go to log_dir/<name> (relative = repository root)
    preprocess: TokTTSPreprocessConfig = field(default_factory=TokTTSPreprocessConfig)
    model: TokTTSConfig = field(default_factory=TokTTSConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(train_stage=0))
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def validate(self) -> None:
        check(self.model_type == "TokTTS", "model_type", "must be 'TokTTS' (this recipe's model)")
        check_corpora(
            self.dataset,
            lambda name: name == "ljspeech" or name.startswith("custom"),
            "use 'ljspeech' or 'custom' / 'custom_<name>'",
        )


# VALL-E keys of the shared sections that mean nothing for TokTTS: refused when a file sets one.
VALLE_ONLY = {
    "train.train_stage": "TokTTS trains its whole model in one stage (train_stage 0)",
    "train.nar_prompt_seconds": "TokTTS has no NAR decoder",
    "train.ddp": "an Amphion VALL-E key; run.sh --gpu chooses the GPUs",
    "train.log_epoch_step": "an Amphion VALL-E key; see train.log_interval",
    "inference.continual": "TokTTS has no audio prompt",
    "inference.max_prompt_seconds": "TokTTS has no audio prompt",
    "inference.trim_long_prompts": "TokTTS has no audio prompt",
    "inference.max_frames_per_phone": "TokTTS has no phones (its cap: model.max_audio_seconds)",
    "inference.min_frames": "TokTTS decoding has no minimum length",
    "inference.drop_unknown_phones": "TokTTS reads characters, not phones",
    "evaluation.listen_utterances": "TokTTS writes no training-time listening samples",
    "evaluation.listen_max_seconds": "TokTTS writes no training-time listening samples",
}


def _refuse_valle_only(tree: dict, origin: dict, default: Path) -> None:
    for dotted, why in VALLE_ONLY.items():
        section, key = dotted.split(".")
        if isinstance(tree.get(section), dict) and key in tree[section]:
            file = origin.get((section, key), default)
            raise ConfigError(f"{file}: key '{dotted}' is not a TokTTS key ({why}): remove it")


def load_toktts_config(
    path: str | os.PathLike, overrides: dict | None = None
) -> TokTTSRecipeConfig:
    """Load, merge and validate a TokTTS recipe config (+ nested overrides, e.g. from the CLI).

    The engine's `--train_stage` override is accepted when it asks for 0 (the only stage)."""
    if overrides:
        overrides = {k: dict(v) for k, v in overrides.items()}
        stage = overrides.get("train", {}).pop("train_stage", 0)
        if stage != 0:
            raise ConfigError(f"--train_stage {stage}: {VALLE_ONLY['train.train_stage']}")
    tree, origin, chain = load_raw_config(path, overrides)
    _refuse_valle_only(tree, origin, chain[0])
    tree.setdefault("train", {})["train_stage"] = 0
    cfg = build(TokTTSRecipeConfig, tree, chain[0], origin)
    bandwidth, codebooks = cfg.preprocess.codec_bandwidth, cfg.model.num_codebooks
    if bandwidth != 0.75 * codebooks:  # a rule across two sections: name the file of each
        files = {origin.get(k, chain[0]) for k in (("preprocess", "codec_bandwidth"),
                                                   ("model", "num_codebooks"))}  # fmt: skip
        raise ConfigError(
            f"{', '.join(map(str, sorted(files)))}: preprocess.codec_bandwidth {bandwidth} kbps "
            f"gives {bandwidth / 0.75:g} codebooks, model.num_codebooks is {codebooks} "
            "(EnCodec 24 kHz: 0.75 kbps per codebook; 1.5 kbps = 2)"
        )
    return cfg
