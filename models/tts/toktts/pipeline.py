"""TokTTS model folders and the text -> speech pipeline.

A model folder is self-describing::

    <model_dir>/
        config.json        {"format": "codectts-toktts-1", "model": {...TokTTSConfig...},
                            "random_init": bool, "normalize_text": bool}
        model.safetensors  TokTTS state dict
        chars.json         the character table (CharTable.save)
        codec/codec.json   the EnCodec 24 kHz 1.5 kbps codec that made the training tokens
                           (+ its weights when it is a random-init codec; CodecTokenizer.save)

``save_model_dir`` writes one atomically (a temporary folder renamed when complete);
``text_to_speech_pipeline(model_dir)`` loads one. A TokTTS experiment of recipe stage 2
(``<log_dir>/<name>``: the trainer puts ``chars.json`` and ``codec/`` next to its
``checkpoint/`` folders) or one of its checkpoint folders loads the same way, no export needed
(``find_model``: an experiment gives its newest checkpoint, or ``which="best"``)::

    pipeline = text_to_speech_pipeline(model_dir)
    out = pipeline("I am happy you are here", top_k=50, top_p=1.0, temperature=1.0, seed=0)
    out["audio"]  # (samples,) float32 at out["sampling_rate"] = 24000
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from models.codec.encodec import CodecTokenizer
from models.tts.toktts.decode import generate
from models.tts.toktts.model import CharTable, TokTTS, TokTTSConfig
from text.normalize import normalize_text
from utils.seeding import utterance_generators

log = logging.getLogger(__name__)

FORMAT = "codectts-toktts-1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHARS = "chars.json"
CODEC = "codec"  # CodecTokenizer.from_processed_dir(model_dir) reads codec/codec.json
RANDOM_INIT_WARNING = (
    "RANDOM-INIT TokTTS model in %s: its weights were never trained, so its audio is "
    "MEANINGLESS (use it only for tests and plumbing checks)"
)


class ModelDirError(RuntimeError):
    """A model folder is missing a file or does not fit together; the message says which."""


def save_model_dir(
    model_dir: str | os.PathLike,
    model: TokTTS,
    chars: CharTable,
    codec: CodecTokenizer,
    *,
    random_init: bool,
    normalize_text: bool = False,
) -> Path:
    """Write a complete model folder (replacing any older one only once the new one is whole).

    random_init: True for a model that was never trained (its folder says so and loading it
    logs a warning). normalize_text: it was trained on normalised texts (`text.normalize`),
    so the pipeline normalises its input too."""
    from safetensors.torch import save_file

    from utils.checkpoint import atomic_directory

    if len(chars) > model.cfg.vocab_size:
        raise ModelDirError(
            f"character table has {len(chars)} ids but the model has vocab_size "
            f"{model.cfg.vocab_size}: not the table it was built for"
        )
    if codec.num_quantizers != model.cfg.num_codebooks:
        raise ModelDirError(
            f"codec gives {codec.num_quantizers} codebooks (bandwidth {codec.bandwidth} kbps), "
            f"the model needs {model.cfg.num_codebooks}"
        )
    with atomic_directory(model_dir) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        chars.save(tmp / CHARS)
        codec.save(tmp / CODEC)
        meta = {
            "format": FORMAT,
            "model": model.cfg.to_dict(),
            "random_init": random_init,
            "normalize_text": normalize_text,
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Path(model_dir)


@dataclass
class ModelSource:
    """Where a model's parts are: a model folder (save_model_dir), or one of our experiments /
    checkpoint folders (stage 2 output: the checkpoint's weights and meta.json, the experiment's
    chars.json and codec/, which the trainer puts there)."""

    kind: str  # "model_dir", "experiment" or "checkpoint"
    root: Path  # the model folder or the experiment
    weights: Path
    model: dict  # the model section describing the weights
    model_file: Path  # where `model` comes from
    random_init: bool  # never trained (a model folder that says so)
    normalize_text: bool  # the stage-1 text normaliser was on (text.normalize)
    checkpoints: tuple[Path, ...] = ()  # averaged checkpoint folders (--infer_avg); () = weights


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    return data


def find_model(path: str | os.PathLike, which: str = "latest", avg: str = "1") -> ModelSource:
    """A model folder, or an experiment (its `which` checkpoint: latest / best) or checkpoint;
    `avg` (--infer_avg): the checkpoints whose mean is used (utils/checkpoint_average.py)."""
    from utils.checkpoint import CheckpointError, resolve_checkpoint
    from utils.checkpoint_average import checkpoints_to_average, only_one_checkpoint

    root = Path(path)
    config = root / CONFIG
    meta = _read_json(config) if config.is_file() else {}
    if meta.get("format") == FORMAT:
        if not isinstance(meta.get("model"), dict):
            raise ModelDirError(f"{config}: no 'model' section")
        only_one_checkpoint(avg, root)
        return ModelSource(
            "model_dir",
            root,
            root / WEIGHTS,
            meta["model"],
            config,
            bool(meta.get("random_init")),
            bool(meta.get("normalize_text")),
        )
    try:
        found = resolve_checkpoint(root, which)
    except CheckpointError as e:
        raise ModelDirError(
            f"{root} is not a TokTTS model folder ({config} not found or not format "
            f"{FORMAT!r}) nor a TokTTS experiment: {e}"
        ) from None
    saved = _read_json(found.config) if found.config.is_file() else {}
    if saved.get("model_type") != "TokTTS":
        raise ModelDirError(
            f"{found.config}: not a TokTTS experiment (model_type {saved.get('model_type')!r})"
        )
    normalize = bool(saved.get("preprocess", {}).get("normalize_text"))
    averaged = checkpoints_to_average(found, avg)
    return ModelSource(found.kind, found.root, found.weights, found.model, found.model_file, False,
                       normalize, tuple(averaged) if len(averaged) > 1 else ())  # fmt: skip


def load_model_dir(
    model_dir: str | os.PathLike, device: torch.device | str = "cpu", which: str = "latest"
) -> tuple[TokTTS, CharTable, CodecTokenizer]:
    """(model in eval mode, character table, codec) from a folder written by save_model_dir, or
    from a TokTTS experiment (its `which` checkpoint) or one of its checkpoint folders."""
    return load_source(find_model(model_dir, which), device)


def load_source(
    source: ModelSource, device: torch.device | str = "cpu"
) -> tuple[TokTTS, CharTable, CodecTokenizer]:
    from utils.checkpoint import CheckpointError, load_tensor_file
    from utils.checkpoint_average import average_weights

    cfg = TokTTSConfig.from_dict(source.model, f"{source.model_file} (model section)")
    model = TokTTS(cfg)
    try:
        if source.checkpoints:  # --infer_avg: the mean of several checkpoints' weights
            model.load_state_dict(average_weights(source.checkpoints))
        else:
            model.load_state_dict(load_tensor_file(source.weights))
    except CheckpointError as e:
        raise ModelDirError(str(e)) from None
    except RuntimeError as e:  # wrong keys or shapes: first problem only (the list is long)
        first = [line.strip() for line in str(e).splitlines() if line.strip()][1:2]
        raise ModelDirError(
            f"{source.weights}: the weights do not fit the model section of {source.model_file} "
            f"({first[0] if first else e})"
        ) from None
    chars_path = source.root / CHARS
    try:
        chars = CharTable.load(chars_path)
    except ValueError as e:
        raise ModelDirError(str(e)) from None
    if len(chars) > cfg.vocab_size:
        raise ModelDirError(
            f"{chars_path}: {len(chars)} ids, more than the model's vocab_size {cfg.vocab_size}"
        )
    codec = CodecTokenizer.from_processed_dir(source.root, device=device)
    if codec.num_quantizers != cfg.num_codebooks:
        raise ModelDirError(
            f"{source.root / CODEC}: {codec.num_quantizers} codebooks, the model needs "
            f"{cfg.num_codebooks}"
        )
    if source.random_init:
        log.warning(RANDOM_INIT_WARNING, source.root)
    return model.to(device).eval(), chars, codec


class TextToSpeechPipeline:
    """text -> {"audio": (samples,) float32, "sampling_rate": 24000}."""

    def __init__(
        self, model: TokTTS, chars: CharTable, codec: CodecTokenizer, normalize: bool = False
    ):
        self.model = model
        self.normalize = normalize
        self.chars = chars
        self.codec = codec
        self.device = next(model.parameters()).device

    def __call__(
        self,
        text: str,
        *,
        top_k: int = 50,
        top_p: float = 1.0,
        temperature: float = 1.0,
        seed: int = 0,
        max_audio_seconds: float | None = None,
    ) -> dict:
        """Sampling: top_k (1 = greedy, <= 0 off), top_p, temperature; the draws come from a
        generator seeded by (seed, text). max_audio_seconds: a shorter cap than the model's."""
        return self.batch(
            [text],
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            seed=seed,
            max_audio_seconds=max_audio_seconds,
        )[0]

    def batch(
        self,
        texts: list[str],
        *,
        names: list[str] | None = None,
        top_k: int = 50,
        top_p: float = 1.0,
        temperature: float = 1.0,
        seed: int = 0,
        max_audio_seconds: float | None = None,
    ) -> list[dict]:
        """Several texts decoded as one batch; item i samples from a generator seeded by
        (seed, names[i]) (default: its text), so its audio does not depend on the batch."""
        names = list(texts) if names is None else names
        assert len(names) == len(texts), f"{len(names)} names for {len(texts)} texts"
        if self.normalize:
            texts = [normalize_text(t) for t in texts]
        rows = [torch.tensor(self.chars.encode(t), device=self.device) for t in texts]
        max_frames = None
        if max_audio_seconds is not None:
            max_frames = max(1, round(max_audio_seconds * self.model.cfg.frame_rate))
        result = generate(
            self.model,
            rows,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            generators=utterance_generators(seed, names, self.device),
            max_frames=max_frames,
        )
        rate = self.codec.sample_rate
        wavs = [self.codec.decode(c[None].to(self.codec.device))[0] for c in result.codes]
        return [{"audio": w.float().cpu().numpy(), "sampling_rate": rate} for w in wavs]


def text_to_speech_pipeline(
    model_dir: str | os.PathLike, device: torch.device | str | None = None
) -> TextToSpeechPipeline:
    """Load a model folder (``save_model_dir``) or a TokTTS experiment / checkpoint folder
    (its newest checkpoint) for synthesis; device default: CUDA if any."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = find_model(model_dir)
    return TextToSpeechPipeline(*load_source(source, device), normalize=source.normalize_text)
