"""Audio I/O with soundfile, resampled to the codec rate and downmixed to mono.

torchaudio 2.9's `load`/`save` need torchcodec + FFmpeg, so files are read and written with
soundfile only; resampling uses `torchaudio.functional.resample` (band-limited sinc, the same
filter `encodec.utils.convert_audio` uses). Stereo is downmixed by averaging the channels, which is
what `convert_audio` does for a mono codec.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from utils.fileio import atomic_path


class AudioError(RuntimeError):
    """An audio file cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample the last dimension of `wav` from orig_sr to new_sr (no-op when equal)."""
    if orig_sr == new_sr:
        return wav
    return AF.resample(wav, orig_freq=orig_sr, new_freq=new_sr)


def load_audio(path: str | os.PathLike, sample_rate: int = 24000) -> torch.Tensor:
    """Read any soundfile-readable file as 1-D float32 mono at `sample_rate`.

    Raises AudioError (naming the file) when the file is missing, unreadable, empty, or holds
    non-finite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / others
        raise AudioError(path, f"unreadable audio ({type(e).__name__}: {e})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "zero-length audio (no samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or Inf samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))  # downmix: channel mean
    return resample(wav, sr, sample_rate).contiguous()


def save_audio(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int) -> Path:
    """Write a 1-D (samples) or 2-D (channels, samples) waveform as 16-bit PCM wav, atomically."""
    path = Path(path)
    wav = wav.detach().float().cpu()
    if wav.dim() == 2:
        wav = wav.t()  # soundfile wants (samples, channels)
    elif wav.dim() != 1:
        raise ValueError(f"save_audio({path}): expected a 1-D or 2-D waveform, got {wav.shape}")
    with atomic_path(path) as tmp:
        sf.write(
            str(tmp), wav.clamp(-1.0, 1.0).numpy(), sample_rate, subtype="PCM_16", format="WAV"
        )
    return path
