"""Descriptions for corpora that have none (the dataspeech idea, without its model zoo).

Three measurements per utterance, each binned into words and put into a sentence:

* speaking rate = phones per second of audio (the caller phonemizes with our G2P and counts
  phones, word separators and punctuation excluded);
* pitch: a normalised-autocorrelation F0 track (voiced frames only); level = median F0,
  variation = standard deviation of F0 in semitones;
* noise: SNR in dB = speech power over non-speech power, with speech frames from a voice
  activity detector (`silero_speech_mask`: silero-vad, whose model ships in its wheel) or any
  boolean mask the caller gives.

Bins (documented constants below; upper bounds, the last bin is open):

    RATE_BINS   phones/s   < 9 very slowly | < 11 slowly | < 13 slightly slowly | < 15 at a
                           moderate speed | < 17 slightly fast | < 19 fast | very fast
    PITCH_BINS  median Hz  < 110 very low-pitched | < 150 low-pitched | < 200 moderate-pitch |
                           < 260 high-pitched | very high-pitched
    MONOTONY    st. dev.   < 1.5 very monotone | < 2.5 monotone | < 4 slightly expressive |
                semitones  < 6 expressive | very expressive
    NOISE_BINS  SNR dB     < 10 very noisy | < 20 quite noisy | < 30 slightly noisy |
                           < 45 clean | very clean

Template (`describe`): "{speaker} speaks {rate} with a {pitch} voice that sounds {monotony}, in
a {noise} recording." with speaker = the corpus' speaker name or "A speaker".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RATE_BINS = [(9, "very slowly"), (11, "slowly"), (13, "slightly slowly"),
             (15, "at a moderate speed"), (17, "slightly fast"), (19, "fast"),
             (math.inf, "very fast")]  # fmt: skip
PITCH_BINS = [(110, "very low-pitched"), (150, "low-pitched"), (200, "moderate-pitch"),
              (260, "high-pitched"), (math.inf, "very high-pitched")]  # fmt: skip
MONOTONY_BINS = [(1.5, "very monotone"), (2.5, "monotone"), (4, "slightly expressive"),
                 (6, "expressive"), (math.inf, "very expressive")]  # fmt: skip
NOISE_BINS = [(10, "very noisy"), (20, "quite noisy"), (30, "slightly noisy"), (45, "clean"),
              (math.inf, "very clean")]  # fmt: skip
TEMPLATE = (
    "{speaker} speaks {rate} with a {pitch} voice that sounds {monotony}, in a {noise} recording."
)

FMIN, FMAX = 60.0, 400.0  # F0 search range (Hz)
FRAME_S, HOP_S = 0.04, 0.01  # analysis window / hop (s)
VOICING = 0.6  # normalised autocorrelation peak needed to call a frame voiced


class AnnotationError(ValueError):
    """A measurement is impossible for this utterance; the message says why."""


def word(value: float, bins: list[tuple[float, str]]) -> str:
    """The word of the first bin whose upper bound exceeds `value`."""
    if not math.isfinite(value):
        raise AnnotationError(f"cannot bin {value}")
    return next(name for bound, name in bins if value < bound)


def speaking_rate(num_phones: int, seconds: float) -> float:
    if seconds <= 0:
        raise AnnotationError(f"speaking rate of {seconds} s of audio")
    return num_phones / seconds


def _frames(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """1-D wav -> (N, frame) windows, FRAME_S long every HOP_S."""
    size, hop = round(FRAME_S * sample_rate), round(HOP_S * sample_rate)
    if wav.numel() < size:
        wav = F.pad(wav, (0, size - wav.numel()))
    return wav.unfold(0, size, hop)


def f0_track(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """F0 in Hz of the voiced frames (1-D, possibly empty): the lag of the best normalised
    autocorrelation between 1/FMAX and 1/FMIN, kept where it exceeds VOICING."""
    frames = _frames(wav.float(), sample_rate)
    frames = frames - frames.mean(dim=1, keepdim=True)
    n = frames.shape[1]
    spec = torch.fft.rfft(frames, 2 * n)
    ac = torch.fft.irfft(spec.abs() ** 2, 2 * n)[:, :n]  # (N, n) autocorrelation
    lo, hi = int(sample_rate / FMAX), min(int(sample_rate / FMIN), n - 1)
    lags = torch.arange(lo, hi + 1)
    # Normalise by the energies of the two overlapping parts x[:n-lag] and x[lag:], so that
    # long lags are not penalised for overlapping less.
    cum = torch.cumsum(frames**2, dim=1)
    head, tail = cum[:, n - lags - 1], cum[:, -1:] - cum[:, lags - 1]
    norm = ac[:, lags] / (head * tail).sqrt().clamp(min=1e-12)  # (N, lags)
    peak = norm.max(dim=1).values
    # Multiples of the period correlate as well as the period: take the best lag of the first
    # run of lags within 10 % of the best one (no octave-down errors) ...
    good = norm >= 0.9 * peak[:, None]
    after = torch.arange(len(lags))[None] >= good.int().argmax(dim=1, keepdim=True)
    run = good & after & ((~good & after).cumsum(dim=1) == 0)
    i = norm.masked_fill(~run, -math.inf).argmax(dim=1).clamp(1, len(lags) - 2)
    # ... refined between lags by a parabola through the three values around it.
    y0, y1, y2 = (norm.gather(1, (i + d)[:, None])[:, 0] for d in (-1, 0, 1))
    curve = y0 - 2 * y1 + y2
    shift = torch.where(curve < 0, 0.5 * (y0 - y2) / curve.clamp(max=-1e-12), 0.0)
    period = lags[i].float() + shift.clamp(-0.5, 0.5)
    loud = frames.pow(2).mean(dim=1) > 1e-6
    voiced = (peak > VOICING) & loud
    return sample_rate / period[voiced]


def pitch_stats(wav: torch.Tensor, sample_rate: int) -> tuple[float, float]:
    """(median F0 in Hz, F0 standard deviation in semitones) over the voiced frames."""
    f0 = f0_track(wav, sample_rate)
    if f0.numel() < 3:
        raise AnnotationError("fewer than 3 voiced frames: no pitch")
    semitones = 12 * torch.log2(f0 / f0.median())
    return float(f0.median()), float(semitones.std())


def snr_db(wav: torch.Tensor, speech: torch.Tensor, sample_rate: int) -> float:
    """SNR from a per-sample boolean speech mask: 10 log10((P_speech - P_noise) / P_noise)."""
    if speech.shape != wav.shape:
        raise AnnotationError(f"speech mask {tuple(speech.shape)} for audio {tuple(wav.shape)}")
    if bool(speech.all()) or not bool(speech.any()):
        raise AnnotationError("SNR needs both speech and non-speech samples")
    x = wav.double()
    p_speech, p_noise = x[speech].pow(2).mean(), x[~speech].pow(2).mean()
    signal = max(float(p_speech - p_noise), 1e-20)
    return 10 * math.log10(signal / max(float(p_noise), 1e-20))


def silero_speech_mask(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Per-sample speech mask from silero-vad (16 kHz or 8 kHz input; its model is in the wheel).

    silero-vad is not a dependency yet: `pip install silero-vad==6.2.3` (it needs only torch and
    packaging; its `read_audio` would need torchaudio/torchcodec, which we do not use)."""
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError:
        raise AnnotationError(
            "SNR needs silero-vad: pip install silero-vad==6.2.3 (or pass a speech mask)"
        ) from None
    stamps = get_speech_timestamps(wav.float(), load_silero_vad(), sampling_rate=sample_rate)
    mask = torch.zeros(wav.shape, dtype=torch.bool)
    for s in stamps:
        mask[s["start"] : s["end"]] = True
    return mask


@dataclass
class Measures:
    phones_per_second: float
    pitch_hz: float
    pitch_std_semitones: float
    snr_db: float

    def words(self) -> dict[str, str]:
        return {
            "rate": word(self.phones_per_second, RATE_BINS),
            "pitch": word(self.pitch_hz, PITCH_BINS),
            "monotony": word(self.pitch_std_semitones, MONOTONY_BINS),
            "noise": word(self.snr_db, NOISE_BINS),
        }


def describe(measures: Measures, speaker: str | None = None) -> str:
    """The description sentence of TEMPLATE for these measurements."""
    return TEMPLATE.format(speaker=speaker or "A speaker", **measures.words())
