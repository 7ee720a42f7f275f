"""Descriptions for corpora that have none (the dataspeech idea, without its model zoo).

Three measurements per utterance (`measure`, on 16 kHz audio), each binned into words and put
into a sentence:

* speaking rate = phones per second of speech: phones from our G2P (`text/g2p.py`; word
  separators and punctuation not counted) over the span from the first to the last sample the
  voice activity detector calls speech (the whole audio when it finds none);
* pitch: a normalised-autocorrelation F0 track (voiced frames only); level = median F0,
  variation = standard deviation of F0 in semitones;
* noise: SNR in dB = speech power over non-speech power, speech samples from silero-vad
  (`silero_speech_mask`; its model ships in its wheel). When the detector leaves less than
  MIN_NOISE_S of non-speech (or finds no speech), the noise power is the mean of the quietest
  10 % of 20 ms frames and the speech power that of the others (`snr_method` "quietest_frames"
  instead of "vad").

Bins (documented constants below; upper bounds, the last bin is open):

    RATE_BINS   phones/s   < 9 very slowly | < 11 slowly | < 13 slightly slowly | < 15 at a
                           moderate speed | < 17 slightly fast | < 19 fast | very fast
    PITCH_BINS  median Hz  < 110 very low-pitched | < 150 low-pitched | < 200 moderate-pitch |
                           < 260 high-pitched | very high-pitched
    MONOTONY    st. dev.   < 1.5 very monotone | < 2.5 monotone | < 4 slightly expressive |
                semitones  < 6 expressive | very expressive
    NOISE_BINS  SNR dB     < 10 very noisy | < 20 quite noisy | < 30 slightly noisy |
                           < 45 clean | very clean

Pitch relative to the corpus (`speaker_pitch_words`, config `annotation_pitch =
"speaker_corpus"`): each speaker's median F0 is ranked among the corpus' speakers and the rank
picks one of the five PITCH_BINS words (centred quantiles: one speaker = "moderate-pitch", two =
"low-pitched" / "high-pitched"), so a corpus of low voices still uses the whole vocabulary.

Template (`describe`): "{speaker} speaks {rate}{style} with a {pitch} voice that sounds
{monotony}, in a {noise} recording." with speaker = the corpus' speaker name or "A speaker" and
style = " in a <style> style" when the corpus names one (Expresso: "happy", "whisper", ...;
"default" and no style give ""). There is no LLM rewriter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from silero_vad import get_speech_timestamps, load_silero_vad

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
    "{speaker} speaks {rate}{style} with a {pitch} voice that sounds {monotony}, in a {noise} "
    "recording."
)
SAMPLE_RATE = 16000  # analysis rate of `measure` (silero-vad takes 16 kHz)
MIN_NOISE_S = 0.1  # less non-speech than this (s): SNR from the quietest frames instead
QUIET_FRACTION = 0.1  # quietest_frames method: this fraction of 20 ms frames is "noise"

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
    """Per-sample speech mask from silero-vad (16 kHz or 8 kHz input; its model is in the wheel;
    pinned in requirements.txt). The model is loaded once per process."""
    stamps = get_speech_timestamps(wav.float(), _silero(), sampling_rate=sample_rate)
    mask = torch.zeros(wav.shape, dtype=torch.bool)
    for s in stamps:
        mask[s["start"] : s["end"]] = True
    return mask


@cache
def _silero():
    return load_silero_vad()


def _snr_quietest_frames(wav: torch.Tensor, sample_rate: int) -> float:
    size = round(0.02 * sample_rate)
    power = wav.double()[: wav.numel() // size * size].reshape(-1, size).pow(2).mean(dim=1)
    if power.numel() < 10:
        raise AnnotationError("too short for an SNR estimate (fewer than 10 frames of 20 ms)")
    power = power.sort().values
    quiet = max(1, round(QUIET_FRACTION * power.numel()))
    p_noise, p_speech = float(power[:quiet].mean()), float(power[quiet:].mean())
    return 10 * math.log10(max(p_speech - p_noise, 1e-20) / max(p_noise, 1e-20))


def measure(wav: torch.Tensor, num_phones: int) -> dict:
    """The annotation measures of one utterance (1-D, SAMPLE_RATE): phones_per_second,
    pitch_hz, pitch_std_semitones, snr_db, snr_method (see the module docstring)."""
    speech = silero_speech_mask(wav, SAMPLE_RATE)
    found = torch.nonzero(speech)
    if found.numel():
        first, last = int(found[0]), int(found[-1])
        seconds = (last - first + 1) / SAMPLE_RATE
    else:
        seconds = wav.numel() / SAMPLE_RATE
    level, spread = pitch_stats(wav, SAMPLE_RATE)
    if found.numel() and int((~speech).sum()) >= MIN_NOISE_S * SAMPLE_RATE:
        snr, method = snr_db(wav, speech, SAMPLE_RATE), "vad"
    else:
        snr, method = _snr_quietest_frames(wav, SAMPLE_RATE), "quietest_frames"
    return {
        "phones_per_second": round(speaking_rate(num_phones, seconds), 4),
        "pitch_hz": round(level, 3),
        "pitch_std_semitones": round(spread, 4),
        "snr_db": round(snr, 3),
        "snr_method": method,
    }


def speaker_pitch_words(speaker_pitch: dict[str, float]) -> dict[str, str]:
    """{speaker: PITCH_BINS word} from each speaker's median F0, ranked within the corpus."""
    names = [name for _, name in PITCH_BINS]
    ranked = sorted(speaker_pitch, key=lambda s: (speaker_pitch[s], s))
    n = len(ranked)
    return {s: names[int((rank + 0.5) * len(names) / n)] for rank, s in enumerate(ranked)}


@dataclass
class Measures:
    phones_per_second: float
    pitch_hz: float
    pitch_std_semitones: float
    snr_db: float
    snr_method: str = "vad"  # how snr_db was measured (informative; not binned)

    def words(self) -> dict[str, str]:
        return {
            "rate": word(self.phones_per_second, RATE_BINS),
            "pitch": word(self.pitch_hz, PITCH_BINS),
            "monotony": word(self.pitch_std_semitones, MONOTONY_BINS),
            "noise": word(self.snr_db, NOISE_BINS),
        }


def describe(
    measures: Measures,
    speaker: str | None = None,
    style: str | None = None,
    pitch_word: str | None = None,
) -> str:
    """The description sentence of TEMPLATE for these measurements (`pitch_word` replaces the
    absolute pitch bin, e.g. by `speaker_pitch_words`)."""
    words = measures.words()
    if pitch_word is not None:
        words["pitch"] = pitch_word
    style_text = f" in a {style.replace('_', ' ')} style" if style and style != "default" else ""
    return TEMPLATE.format(speaker=speaker or "A speaker", style=style_text, **words)
