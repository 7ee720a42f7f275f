"""TokTTS model folders and the text -> speech pipeline.

A model folder is self-describing::

    <model_dir>/
        config.json        {"format": "codectts-toktts-1", "model": {...TokTTSConfig...},
                            "random_init": bool}
        model.safetensors  TokTTS state dict
        chars.json         the character table (CharTable.save)
        codec/codec.json   the EnCodec 24 kHz 1.5 kbps codec that made the training tokens
                           (+ its weights when it is a random-init codec; CodecTokenizer.save)

``save_model_dir`` writes one atomically (a temporary folder renamed when complete);
``text_to_speech_pipeline(model_dir)`` loads one::

    pipeline = text_to_speech_pipeline(model_dir)
    out = pipeline("I am happy you are here", top_k=50, top_p=1.0, temperature=1.0, seed=0)
    out["audio"]  # (samples,) float32 at out["sampling_rate"] = 24000
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from models.codec.encodec import CodecTokenizer
from models.tts.toktts.decode import generate
from models.tts.toktts.model import CharTable, TokTTS, TokTTSConfig
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
) -> Path:
    """Write a complete model folder (replacing any older one only once the new one is whole).

    random_init: True for a model that was never trained (its folder says so and loading it
    logs a warning)."""
    from safetensors.torch import save_file

    from utils.checkpoint import atomic_directory

    if len(chars) != model.cfg.vocab_size:
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
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Path(model_dir)


def load_model_dir(
    model_dir: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[TokTTS, CharTable, CodecTokenizer]:
    """(model in eval mode, character table, codec) from a folder written by save_model_dir."""
    from utils.checkpoint import CheckpointError, load_tensor_file

    root = Path(model_dir)
    config_path = root / CONFIG
    if not config_path.is_file():
        raise ModelDirError(f"{config_path} not found: {root} is not a TokTTS model folder")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{config_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelDirError(f"{config_path}: not a TokTTS model config (format {FORMAT!r})")
    if not isinstance(meta.get("model"), dict):
        raise ModelDirError(f"{config_path}: no 'model' section")
    cfg = TokTTSConfig.from_dict(meta["model"], f"{config_path} (model section)")
    model = TokTTS(cfg)
    try:
        state = load_tensor_file(root / WEIGHTS)
    except CheckpointError as e:
        raise ModelDirError(str(e)) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # wrong keys or shapes: first problem only (the list is long)
        first = [line.strip() for line in str(e).splitlines() if line.strip()][1:2]
        raise ModelDirError(
            f"{root / WEIGHTS}: the weights do not fit the model section of {config_path} "
            f"({first[0] if first else e})"
        ) from None
    chars_path = root / CHARS
    try:
        chars = CharTable.load(chars_path)
    except ValueError as e:
        raise ModelDirError(str(e)) from None
    if len(chars) != cfg.vocab_size:
        raise ModelDirError(
            f"{chars_path}: {len(chars)} ids, but the model has vocab_size {cfg.vocab_size}"
        )
    codec = CodecTokenizer.from_processed_dir(root, device=device)
    if codec.num_quantizers != cfg.num_codebooks:
        raise ModelDirError(
            f"{root / CODEC}: {codec.num_quantizers} codebooks, the model needs {cfg.num_codebooks}"
        )
    if meta.get("random_init"):
        log.warning(RANDOM_INIT_WARNING, root)
    return model.to(device).eval(), chars, codec


class TextToSpeechPipeline:
    """text -> {"audio": (samples,) float32, "sampling_rate": 24000}."""

    def __init__(self, model: TokTTS, chars: CharTable, codec: CodecTokenizer):
        self.model = model
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
    """Load a model folder (``save_model_dir``) for synthesis; device default: CUDA if any."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TextToSpeechPipeline(*load_model_dir(model_dir, device))
