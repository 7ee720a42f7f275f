"""The VALL-E recipe's typed json5 configuration: the sections, their rules, `load_config`.

A config file is json5. It may name a `base_config`; that path is looked up relative to the file
that names it first and then, for Amphion compatibility (`"base_config": "config/valle.json"`),
relative to the repository root. Files are merged deepest-base first, each later file overriding
leaf keys. The merged tree is then checked against the dataclasses below:

* an unknown key is an error naming the key, the file that set it and the closest valid key;
* a wrong type is an error naming the key, the file, the expected and the found type;
* cross-field rules (e.g. `preprocess.max_duration > preprocess.min_duration`) are checked.

Relative *paths inside* a config (`processed_dir`, `log_dir`, `dataset_path.*`, ...) are resolved
relative to the repository root by `resolve_path`, never relative to the current directory, so a
recipe behaves the same from any working directory.

The recipe-agnostic machinery (json5 reading, merging, typing, `check`, `build`) is
`utils/config_loader.py`; its names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.config_loader import (
    REPO_ROOT,
    ConfigError,
    build,
    check,
    check_corpora,
    config_to_dict,
    found_name,
    load_raw_config,
    read_json5,
    resolve_path,
    save_config,
)

log = logging.getLogger("config")

__all__ = [
    "REPO_ROOT",
    "ConfigError",
    "check",
    "config_to_dict",
    "load_raw_config",
    "read_json5",
    "resolve_path",
    "save_config",
    "PreprocessConfig",
    "ModelConfig",
    "EngineTrainConfig",
    "TrainConfig",
    "InferenceConfig",
    "ScoringConfig",
    "EvaluationConfig",
    "Config",
    "SECTIONS",
    "IGNORED",
    "FIXED",
    "ASR_BACKENDS",
    "SIM_BACKENDS",
    "MOS_BACKENDS",
    "load_config",
    "config_from_dict",
]


# --------------------------------------------------------------------------------------------
# Sections. Every field is a config key; the comment after it is its documentation (README).
# --------------------------------------------------------------------------------------------


@dataclass
class PreprocessConfig:
    extract_phone: bool = True  # Amphion key, ignored (warns if false): stage 1 always makes phones
    phone_extractor: str = "espeak"  # G2P backend; must be "espeak" (phonemizer + espeak-ng)
    phone_language: str = "en-us"  # espeak-ng language code
    extract_acoustic_token: bool = True  # Amphion key, ignored (warns if false): codes always made
    acoustic_token_extractor: str = "Encodec"  # codec; must be "Encodec" (EnCodec 24 kHz)
    acoustic_token_dir: str = "acoustic_tokens"  # folder (inside processed_dir/<dataset>) for codes
    use_phone: bool = True  # Amphion key; must be true (phones are the only text input)
    use_acoustic_token: bool = True  # Amphion key; must be true (codec tokens are the only target)
    processed_dir: str = "data/processed"  # stage-1 output root (relative = repository root)
    symbols_dict: str = "symbols.dict"  # phone table file name inside processed_dir
    existing_symbols_dict: str = ""  # reuse this phone table unchanged (e.g. a release's)
    sample_rate: int = 24000  # Amphion key; must be 24000 (EnCodec 24 kHz; audio is resampled)
    codec_hop_size: int = 320  # Amphion key; must be 320 (EnCodec 24 kHz: 75 frames/s)
    codec_bandwidth: float = 6.0  # EnCodec bandwidth in kbps; 6.0 = 8 codebooks
    codec_pretrained: bool = True  # official EnCodec weights; false = random init (demo/tests)
    codec_checkpoint: str = ""  # local EnCodec weights file (no network needed)
    codec_init_seed: int = 0  # seed of the k-means init of a random-init codec
    codec_batch_seconds: float = 60.0  # total audio seconds per codec batch
    codec_init_seconds: float = 20.0  # corpus audio (s) for the k-means init of a random-init codec
    shard_size: int = 200  # utterances per stage-1 work shard (unit of parallelism and resume)
    num_workers: int = 1  # stage-1 worker processes (per device list entry with --gpu)
    min_duration: float = 0.5  # utterances shorter than this (s) are rejected
    max_duration: float = 14.0  # utterances longer than this (s) are rejected
    train_file: str = "train.json"  # name of the training split (Amphion key; stem is used)
    valid_file: str = "valid.json"  # name of the validation split (Amphion key; stem is used)
    libritts_train_subsets: list[str] = field(default_factory=lambda: ["train-clean-100"])  # train
    libritts_valid_subsets: list[str] = field(default_factory=lambda: ["dev-clean"])  # validation
    libritts_test_subsets: list[str] = field(default_factory=list)  # LibriTTS test subsets
    valid_fraction: float = 0.0  # held-out fraction for corpora without a valid subset
    test_fraction: float = 0.0  # held-out test fraction for corpora without a test subset
    split_seed: int = 42  # seed of the held-out split

    def validate(self) -> None:
        check(self.min_duration >= 0, "min_duration", "must be >= 0")
        check(
            self.max_duration > self.min_duration,
            "max_duration",
            f"must be greater than min_duration ({self.max_duration} <= {self.min_duration})",
        )
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.codec_batch_seconds > 0, "codec_batch_seconds", "must be positive")
        check_codec_and_splits(self)


def check_codec_and_splits(pcfg) -> None:
    """The rules of the stage-1 keys every recipe's preprocess section shares (VALL-E's above,
    TokTTS's in utils/toktts_config.py): codec bandwidth / init, shards, held-out fractions."""
    check(
        pcfg.codec_bandwidth in (1.5, 3.0, 6.0, 12.0, 24.0),
        "codec_bandwidth",
        "must be one of 1.5, 3.0, 6.0, 12.0, 24.0 (EnCodec 24 kHz bandwidths)",
    )
    check(pcfg.codec_init_seconds > 0, "codec_init_seconds", "must be positive")
    check(pcfg.shard_size >= 1, "shard_size", "must be >= 1")
    for key in ("valid_fraction", "test_fraction"):
        check(0.0 <= getattr(pcfg, key) < 1.0, key, "must be in [0, 1)")
    check(
        pcfg.valid_fraction + pcfg.test_fraction < 1.0,
        "test_fraction",
        "valid_fraction + test_fraction must be < 1",
    )


@dataclass
class ModelConfig:
    text_token_num: int = 512  # phone vocabulary size (embedding rows)
    audio_token_num: int = 1024  # codec codebook size (>= 1024); EOS id = audio_token_num
    decoder_dim: int = 1024  # transformer width
    nhead: int = 16  # attention heads
    num_decoder_layers: int = 12  # layers of the AR and of the NAR decoder
    norm_first: bool = True  # pre-norm transformer layers
    add_prenet: bool = False  # conv/linear prenets before the decoders
    prefix_mode: int = 0  # NAR prompt: 0 none, 1 start of utterance, 2 random span, 4 other utt.
    share_embedding: bool = True  # tie NAR output layers to the next stream's input embedding
    nar_scale_factor: float = 1.0  # NAR width = decoder_dim * nar_scale_factor
    prepend_bos: bool = False  # prepend a BOS frame to the AR input
    num_quantizers: int = 8  # codebooks modelled (1 AR + num_quantizers - 1 NAR)
    dropout: float = 0.1  # dropout in the decoders (training only)
    ar_loss_ignore_padding: bool = False  # true: AR loss skips padded frames (Amphion counts them)

    def validate(self) -> None:
        check(self.decoder_dim > 0, "decoder_dim", "must be positive")
        check(self.nhead > 0, "nhead", "must be positive")
        check(
            self.decoder_dim % self.nhead == 0,
            "nhead",
            f"decoder_dim ({self.decoder_dim}) must be divisible by nhead ({self.nhead})",
        )
        nar_dim = int(self.decoder_dim * self.nar_scale_factor)
        check(
            nar_dim > 0 and nar_dim % self.nhead == 0,
            "nar_scale_factor",
            f"decoder_dim * nar_scale_factor ({nar_dim}) must be a positive multiple of nhead",
        )
        check(self.num_decoder_layers > 0, "num_decoder_layers", "must be positive")
        check(self.prefix_mode in (0, 1, 2, 4), "prefix_mode", "must be one of 0, 1, 2, 4")
        check(self.num_quantizers >= 1, "num_quantizers", "must be >= 1")
        check(self.text_token_num > 0, "text_token_num", "must be positive")
        check(
            self.audio_token_num >= 1024,
            "audio_token_num",
            "must be >= 1024 (EnCodec codes are in [0, 1024); EOS is audio_token_num)",
        )
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass
class EngineTrainConfig:
    """The training engine's keys (models/base/), the same in every recipe's train section."""

    batch_size: int = 4  # utterances per batch when use_dynamic_batchsize is false
    use_dynamic_batchsize: bool = False  # bucket by duration (lhotse DynamicBucketingSampler)
    max_tokens: int = 4000  # dynamic batches: max codec frames per batch
    max_sentences: int = 10  # dynamic batches: max utterances per batch
    num_buckets: int = 10  # dynamic batches: duration buckets
    max_epoch: int = 20  # epochs to train (0 = until max_steps)
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    random_seed: int = 970227  # seed of init, shuffling and the recipe draws (VALL-E: NAR)
    optimizer: str = "AdamW"  # must be "AdamW"
    scheduler: str = "cosine"  # "cosine" (linear warmup + cosine decay) or "constant"
    base_lr: float = 1e-4  # peak learning rate
    warmup_steps: int = 16000  # linear warmup steps
    total_training_steps: int = 800000  # cosine schedule length
    weight_decay: float = 0.01  # AdamW weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    grad_clip: float = 1.0  # max global grad norm (0 = no clipping)
    gradient_accumulation_step: int = 1  # micro-batches per optimizer step
    mixed_precision: str = "no"  # "no", "fp16" or "bf16"
    num_workers: int = -1  # dataloader workers; -1 = min(4, cpu count - 1)
    valid_interval: int = 1000  # validate every N optimizer steps (and each epoch end)
    log_interval: int = 10  # tensorboard scalars every N steps
    save_checkpoint_stride: list[int] = field(default_factory=lambda: [1])  # Amphion key, epochs
    save_interval: int = 1000  # save a checkpoint every N optimizer steps (0 = per epoch only)
    keep_last: int = 3  # checkpoints kept besides the best
    max_nonfinite_steps: int = 10  # consecutive NaN/Inf losses before stopping
    check_largest_batch: bool = True  # CUDA: try the largest batch (+ AdamW state) before training

    def validate(self) -> None:
        check(self.optimizer.lower() == "adamw", "optimizer", "must be AdamW (the engine's)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.max_tokens >= 1, "max_tokens", "must be >= 1")
        check(self.max_sentences >= 1, "max_sentences", "must be >= 1")
        check(self.max_epoch >= 0 and self.max_steps >= 0, "max_epoch", "must be >= 0")
        check(self.max_epoch > 0 or self.max_steps > 0, "max_steps", "max_epoch or max_steps > 0")
        check(self.scheduler in ("cosine", "constant"), "scheduler", "'cosine' or 'constant'")
        check(self.base_lr > 0, "base_lr", "must be positive")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(
            self.total_training_steps > self.warmup_steps or self.scheduler == "constant",
            "total_training_steps",
            "must be greater than warmup_steps",
        )
        check(len(self.adam_betas) == 2, "adam_betas", "must be two numbers [beta1, beta2]")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        check(self.gradient_accumulation_step >= 1, "gradient_accumulation_step", "must be >= 1")
        check(
            self.mixed_precision in ("no", "fp16", "bf16"),
            "mixed_precision",
            "must be 'no', 'fp16' or 'bf16'",
        )
        check(self.keep_last >= 1, "keep_last", "must be >= 1")
        check(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be >= 1")
        check(self.valid_interval >= 0 and self.save_interval >= 0, "valid_interval", ">= 0")


@dataclass
class TrainConfig(EngineTrainConfig):
    """VALL-E's train section: the engine's keys and these."""

    train_stage: int = 1  # 0 = AR + NAR, 1 = AR decoder, 2 = NAR decoders
    ddp: bool = True  # Amphion key, ignored (warns if false): run.sh --gpu chooses the GPUs
    gradient_checkpointing: bool = False  # recompute decoder activations in backward
    log_epoch_step: int = 1000  # Amphion key, ignored (warns if changed): see log_interval
    nar_prompt_seconds: float = 3.0  # prefix_mode 4: prompt = min(this, shortest in batch) (s)

    def validate(self) -> None:
        super().validate()
        check(self.train_stage in (0, 1, 2), "train_stage", "must be 0 (both), 1 (AR) or 2 (NAR)")
        check(self.nar_prompt_seconds > 0, "nar_prompt_seconds", "must be positive")


@dataclass
class InferenceConfig:
    top_k: int = 100  # sample from the k most likely codes (1 = greedy)
    top_p: float = 1.0  # nucleus sampling mass (1.0 = off)
    temperature: float = 1.0  # softmax temperature
    seed: int = 0  # sampling seed; each utterance's own seed = hash(seed, output name)
    batch_size: int = 8  # test-list lines decoded together
    continual: bool = False  # continue the prompt's own utterance (text_prompt|audio_prompt)
    use_kv_cache: bool = True  # false = reference path that recomputes every frame
    max_frames_per_phone: float = 16.0  # length cap: frames <= this * text length + 1 (original)
    max_frames: int = 0  # absolute cap in frames (0 = off; the smaller cap wins)
    max_seconds: float = 0.0  # absolute cap in seconds (0 = off; the smaller cap wins)
    min_frames: int = 1  # EOS is suppressed before this many frames (with a warning)
    max_prompt_seconds: float = 10.0  # longer audio prompts are refused (see trim_long_prompts)
    trim_long_prompts: bool = False  # true = cut long prompts to max_prompt_seconds (text kept!)
    drop_unknown_phones: bool = False  # drop phones missing from the table instead of failing
    checkpoint: str = "latest"  # which checkpoint of an experiment: "latest" or "best"

    def validate(self) -> None:
        check(self.top_k >= 1, "top_k", "must be >= 1 (1 = greedy)")
        check(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        check(self.temperature > 0, "temperature", "must be positive")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.max_frames_per_phone > 0, "max_frames_per_phone", "must be positive")
        check(self.max_frames >= 0 and self.max_seconds >= 0, "max_frames", "must be >= 0")
        check(self.min_frames >= 1, "min_frames", "must be >= 1")
        check(self.max_prompt_seconds > 0, "max_prompt_seconds", "must be positive")
        check(self.checkpoint in ("latest", "best"), "checkpoint", "'latest' or 'best'")


@dataclass
class ScoringConfig:
    """Stage 4's keys (bins/tts/evaluate.py, evaluation/), the same in every recipe."""

    asr: str = "whisper"  # stage 4 WER/CER backend: "whisper", "hubert" or "pocketsphinx" (offline)
    asr_model: str = ""  # ASR hub id or local folder ("" = the backend default, see README)
    sim: str = "wavlm"  # speaker similarity backend: "wavlm" or "resemblyzer" (offline)
    sim_model: str = ""  # speaker model hub id or folder ("" = microsoft/wavlm-base-plus-sv)
    mos: str = "dnsmos"  # MOS estimate: "dnsmos" (speechmos, offline) or "none"
    batch_size: int = 8  # utterances scored together
    device: str = ""  # torch device of the transformers backends ("" = cuda if available, else cpu)

    def validate(self) -> None:
        check(self.asr in ASR_BACKENDS, "asr", f"must be one of {', '.join(ASR_BACKENDS)}")
        check(self.sim in SIM_BACKENDS, "sim", f"must be one of {', '.join(SIM_BACKENDS)}")
        check(self.mos in MOS_BACKENDS, "mos", f"must be one of {', '.join(MOS_BACKENDS)}")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass
class EvaluationConfig(ScoringConfig):
    """VALL-E's evaluation section: stage 4's keys and these."""

    sim_r: bool = True  # also SIM-r (prompt resynthesised by the experiment's codec) when known
    listen_utterances: int = 2  # training: valid utterances synthesised to tensorboard (0 = off)
    listen_max_seconds: float = 4.0  # training: cap on each listening sample's generated seconds

    def validate(self) -> None:
        super().validate()
        check(self.listen_utterances >= 0, "listen_utterances", "must be >= 0 (0 = off)")
        check(self.listen_max_seconds > 0, "listen_max_seconds", "must be positive")


ASR_BACKENDS = ("whisper", "hubert", "pocketsphinx")
SIM_BACKENDS = ("wavlm", "resemblyzer")
MOS_BACKENDS = ("dnsmos", "none")


@dataclass
class Config:
    model_type: str = "VALLE"  # Amphion key; must be "VALLE"
    task_type: str = "tts"  # Amphion key; must be "tts"
    dataset: list[str] = field(default_factory=lambda: ["libritts"])  # corpora to prepare
    dataset_path: dict[str, str] = field(default_factory=dict)  # corpus name -> root / list file
    log_dir: str = "exp"  # experiments go to log_dir/<name> (relative = repository root)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def validate(self) -> None:
        known = ("libritts", "ljspeech", "custom")
        check_corpora(
            self.dataset,
            lambda name: name in known or name.startswith("custom"),
            f"use one of {known} (or 'custom_<name>')",
        )


SECTIONS = {
    "preprocess": PreprocessConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "inference": InferenceConfig,
    "evaluation": EvaluationConfig,
}

# Amphion keys accepted so that Amphion configs load, that change nothing here: a value other
# than the default is logged as a warning naming the key, the file and why.
IGNORED = {
    "preprocess.extract_phone": "stage 1 always makes the phones (the model's input) and "
    "reuses what an earlier run made",
    "preprocess.extract_acoustic_token": "stage 1 always makes the codec tokens and reuses the "
    "shards an earlier run finished",
    "train.ddp": "the GPUs are chosen by run.sh --gpu (accelerate launches one process per GPU)",
    "train.log_epoch_step": "Amphion's VALL-E trainer does not read it either; tensorboard "
    "scalars are written every train.log_interval steps",
}

# Amphion keys with the one value this toolkit supports (strings compared case-insensitively,
# as Amphion's code does): any other value is an error that names the key, the file and why.
FIXED = {
    "model_type": ("VALLE", "only the VALL-E model is implemented"),
    "task_type": ("tts", "only text-to-speech is implemented"),
    "preprocess.phone_extractor": ("espeak", "phones come from phonemizer + espeak-ng"),
    "preprocess.acoustic_token_extractor": ("Encodec", "the codec is EnCodec 24 kHz"),
    "train.optimizer": ("AdamW", "the trainer builds torch.optim.AdamW"),
    "preprocess.use_phone": (True, "phones are the only text input"),
    "preprocess.use_acoustic_token": (True, "codec tokens are the only training target"),
    "preprocess.sample_rate": (
        24000,
        "the EnCodec 24 kHz codec reads 24 kHz audio (other rates are resampled on load)",
    ),
    "preprocess.codec_hop_size": (320, "the EnCodec 24 kHz codec has 320 samples per frame"),
}


def _same(value: Any, required: Any) -> bool:
    if isinstance(value, str) and isinstance(required, str):
        return value.lower() == required.lower()
    return value == required


def _amphion_keys(obj: Any, tree: dict, prefix: tuple, origin: dict, default_file: Path) -> None:
    """FIXED keys set to another value fail; IGNORED keys set to another value warn."""
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    for key, value in tree.items():
        dotted = ".".join(prefix + (key,))
        file = origin.get(prefix + (key,), default_file)
        if dotted in FIXED and not _same(getattr(obj, key), FIXED[dotted][0]):
            required, why = FIXED[dotted]
            raise ConfigError(
                f"{file}: key '{dotted}': must be {json.dumps(required)} ({why}), "
                f"found {found_name(value)}"
            )
        if dotted in IGNORED and getattr(obj, key) != defaults[key]:
            log.warning(
                "%s: key '%s' = %s is ignored: %s", file, dotted, json.dumps(value), IGNORED[dotted]
            )


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> Config:
    """Load, merge and validate a json5 config (and optional nested overrides, e.g. from CLI)."""
    tree, origin, chain = load_raw_config(path, overrides)
    return build(Config, tree, chain[0], origin, key_rules=_amphion_keys)


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """Validate an already-merged dict (e.g. a saved resolved config) into a Config."""
    return build(Config, data, source, key_rules=_amphion_keys)
