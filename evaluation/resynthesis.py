"""SIM-r: the audio prompt resynthesised through the codec of the model that made the outputs
(so the similarity measures the language model, not the codec's loss of voice detail)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from evaluation.backends import SAMPLE_RATE
from models.tts.valle.inference import ModelSource, load_codec
from utils.audio import load_audio, resample


def prompt_resynthesiser(source: ModelSource, device: str) -> tuple[Callable, str]:
    """(path -> resynthesised 16 kHz prompt, description of the codec)."""
    codec = load_codec(source, device)
    cache: dict[Path, np.ndarray] = {}

    @torch.inference_mode()
    def resynth(path: Path) -> np.ndarray:
        if path not in cache:
            wav = load_audio(path, codec.sample_rate)
            codes = codec.encode([wav.to(codec.device)])[0]  # (frames, Q)
            out = codec.decode(codes[None].to(codec.device))[0, : wav.numel()].float().cpu()
            cache[path] = resample(out, codec.sample_rate, SAMPLE_RATE).numpy()
        return cache[path]

    what = f"codec of {source.describe()} ({codec.source.get('source', '?')})"
    return resynth, what
