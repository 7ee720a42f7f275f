"""preprocessors/annotate.py: measurements on synthetic audio with known answers, bins, template."""

from __future__ import annotations

import math

import pytest
import torch

from preprocessors.annotate import (
    MONOTONY_BINS,
    NOISE_BINS,
    PITCH_BINS,
    RATE_BINS,
    AnnotationError,
    Measures,
    describe,
    measure,
    pitch_stats,
    silero_speech_mask,
    snr_db,
    speaking_rate,
    word,
)

SR = 16000


def voiced(f0: torch.Tensor) -> torch.Tensor:
    """A harmonic voice-like signal following the per-sample F0 contour f0 (Hz)."""
    phase = 2 * math.pi * torch.cumsum(f0.double(), 0) / SR
    return sum(0.3 / h * torch.sin(h * phase) for h in range(1, 6)).float()


def test_pitch_level_and_variation():
    t = torch.arange(SR) / SR
    steady = voiced(torch.full((SR,), 150.0))
    level, spread = pitch_stats(steady, SR)
    assert abs(level - 150) < 3 and spread < 0.5
    assert word(spread, MONOTONY_BINS) == "very monotone"
    # A +-4 semitone vibrato-like contour around 220 Hz: expressive, level unchanged.
    contour = 220 * 2 ** (4 / 12 * torch.sin(2 * math.pi * 2 * t))
    level, spread = pitch_stats(voiced(contour), SR)
    assert abs(level - 220) < 10 and spread > 2.5
    with pytest.raises(AnnotationError, match="voiced"):
        pitch_stats(torch.zeros(SR), SR)


def test_snr_of_a_known_mixture():
    g = torch.Generator().manual_seed(0)
    speech = torch.zeros(SR * 2, dtype=torch.bool)
    speech[SR // 2 : SR + SR // 2] = True
    clean = torch.where(speech, voiced(torch.full((2 * SR,), 180.0)), 0.0)
    noise = torch.randn(2 * SR, generator=g)
    for target in (5.0, 20.0):
        p_signal = clean[speech].pow(2).mean()
        scale = (p_signal / 10 ** (target / 10)).sqrt()
        assert abs(snr_db(clean + scale * noise, speech, SR) - target) < 0.5
    assert word(5.0, NOISE_BINS) == "very noisy" and word(20.0, NOISE_BINS) == "slightly noisy"
    with pytest.raises(AnnotationError, match="both speech and non-speech"):
        snr_db(clean, torch.ones_like(speech), SR)


def test_rate_bins_and_template():
    assert speaking_rate(70, 5.0) == 14.0
    assert [word(v, RATE_BINS) for v in (8.9, 9.0, 14, 25)] == [
        "very slowly", "slowly", "at a moderate speed", "very fast"]  # fmt: skip
    with pytest.raises(AnnotationError):
        speaking_rate(10, 0.0)
    with pytest.raises(AnnotationError):
        word(float("nan"), RATE_BINS)
    m = Measures(phones_per_second=16.2, pitch_hz=120, pitch_std_semitones=1.0, snr_db=50)
    assert describe(m, "Talia") == (
        "Talia speaks slightly fast with a low-pitched voice that sounds very monotone, "
        "in a very clean recording."
    )
    assert describe(m).startswith("A speaker speaks")


def test_silero_finds_speech_in_a_voiced_burst_only():
    wav = torch.zeros(3 * SR)
    wav[SR : 2 * SR] = voiced(torch.full((SR,), 150.0))
    mask = silero_speech_mask(wav, SR)
    assert mask.shape == wav.shape and not mask[: SR // 2].any() and mask[SR : 2 * SR].any()


def espeak(text: str, speed: int, pitch: int = 50) -> torch.Tensor:
    """espeak-ng speech at SR (controlled speaking rate and pitch)."""
    import io
    import subprocess

    import soundfile as sf

    from utils.audio import resample

    out = subprocess.run(["espeak-ng", "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout  # fmt: skip
    x, rate = sf.read(io.BytesIO(out), dtype="float32")
    return resample(torch.from_numpy(x), rate, SR)


TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."


def test_measures_follow_the_speech():
    """Faster speech -> more phones per second -> "fast"; a lower espeak pitch -> lower F0;
    added noise -> lower SNR -> "very noisy"."""
    from preprocessors.parler_tokens import count_phones

    phones = count_phones(TEXT, "en-us")
    assert 55 <= phones <= 75  # G2P phones without word separators and punctuation
    slow, fast = measure(espeak(TEXT, 90), phones), measure(espeak(TEXT, 300), phones)
    assert fast["phones_per_second"] > 2.5 * slow["phones_per_second"]
    assert word(slow["phones_per_second"], RATE_BINS) in ("very slowly", "slowly")
    assert word(fast["phones_per_second"], RATE_BINS) in ("fast", "very fast")
    low, high = measure(espeak(TEXT, 160, 10), phones), measure(espeak(TEXT, 160, 90), phones)
    assert low["pitch_hz"] < 0.7 * high["pitch_hz"]
    clean = espeak(TEXT, 160)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = clean + noise * clean.pow(2).mean().sqrt() / 10 ** (3 / 20)  # speech 3 dB above
    m = measure(noisy, phones)
    assert m["snr_db"] < 10 < measure(clean, phones)["snr_db"]
    assert describe(Measures(**m)).endswith("in a very noisy recording.")


def test_snr_without_silence_uses_the_quietest_frames():
    """No non-speech for the VAD (a continuous voice) -> the quietest-frames estimate."""
    t = torch.arange(2 * SR) / SR
    tone = voiced(torch.full((2 * SR,), 150.0)) * (0.2 + 0.8 * (t > 0.2))  # 0.2 s quieter start
    m = measure(tone, 20)
    assert m["snr_method"] == "quietest_frames" and math.isfinite(m["snr_db"])


def test_speaker_pitch_relative_to_the_corpus_and_style():
    from preprocessors.annotate import speaker_pitch_words

    assert speaker_pitch_words({"a": 120.0}) == {"a": "moderate-pitch"}
    assert speaker_pitch_words({"a": 90.0, "b": 95.0}) == {"a": "low-pitched", "b": "high-pitched"}
    five = speaker_pitch_words({s: 100.0 + i for i, s in enumerate("abcde")})
    assert list(five.values()) == [name for _, name in PITCH_BINS]
    m = Measures(phones_per_second=20, pitch_hz=120, pitch_std_semitones=1.0, snr_db=50)
    assert describe(m, "Talia", "happy", "high-pitched") == (
        "Talia speaks very fast in a happy style with a high-pitched voice that sounds very "
        "monotone, in a very clean recording."
    )
    assert describe(m, "Jerry", "default").startswith("Jerry speaks very fast with a low-pitched")
