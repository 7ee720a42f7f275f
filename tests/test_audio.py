"""utils/audio.py: soundfile reading, downmix, resampling to 24 kHz, errors, atomic save."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from utils.audio import AudioError, load_audio, save_audio


def _sine(freq: float, sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * math.pi * freq * t)).astype("float32")


def _peak_hz(wav: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wav).abs()
    return spectrum.argmax().item() * sr / len(wav)


def test_stereo_48k_is_downmixed_and_resampled(tmp_path):
    left, right = _sine(440, 48000, 1.0), _sine(1000, 48000, 1.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 48000, subtype="FLOAT")
    wav = load_audio(path, 24000)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert len(wav) == 24000
    # both tones survive at half amplitude each (channel mean)
    spectrum = torch.fft.rfft(wav).abs() / (len(wav) / 2)
    assert spectrum[440].item() == pytest.approx(0.25, abs=0.01)
    assert spectrum[1000].item() == pytest.approx(0.25, abs=0.01)


def test_8k_is_upsampled_to_24k(tmp_path):
    path = tmp_path / "narrow.wav"
    sf.write(path, _sine(300, 8000, 0.5), 8000, subtype="PCM_16")
    wav = load_audio(path)
    assert len(wav) == 12000
    assert _peak_hz(wav, 24000) == pytest.approx(300, abs=2)
    assert wav.abs().max().item() == pytest.approx(0.5, abs=0.02)


def test_24k_mono_is_read_unchanged(tmp_path):
    x = _sine(200, 24000, 0.25)
    path = tmp_path / "same.wav"
    sf.write(path, x, 24000, subtype="FLOAT")
    assert torch.equal(load_audio(path), torch.from_numpy(x))


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty", "nan"])
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        path.write_bytes(b"RIFF----WAVEfmt garbage" * 10)
    elif kind == "empty":
        sf.write(path, np.zeros(0, dtype="float32"), 24000)
    elif kind == "nan":
        sf.write(path, np.array([0.0, np.nan, 0.1], dtype="float32"), 24000, subtype="FLOAT")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in str(err.value) and err.value.path == str(path)


def test_save_audio_roundtrip_and_atomicity(tmp_path):
    x = torch.from_numpy(_sine(250, 24000, 0.2))
    path = save_audio(tmp_path / "out" / "a.wav", x, 24000)
    back, sr = sf.read(path, dtype="float32")
    assert sr == 24000 and np.abs(back - x.numpy()).max() < 1e-3
    assert [p.name for p in path.parent.iterdir()] == ["a.wav"]  # no temporary left behind
    with pytest.raises(ValueError):
        save_audio(tmp_path / "bad.wav", torch.zeros(1, 2, 3), 24000)
    assert not (tmp_path / "bad.wav").exists()
