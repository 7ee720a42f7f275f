#!/usr/bin/env python3
"""The click at the cut: how loud is the end of a TokTTS training clip, before and after the codec?

TokTTS keeps the first `max_audio_seconds` of each utterance; the original notes a faint click
with augmentation. A hard cut in the middle of speech ends the clip on a non-zero sample, and a
codec round trip of such a clip may smear it into a burst. For every utterance longer than the
cap, and for copy 0 (original) and augmented copies (speed + gain, preprocessors/toktts_data.py),
this measures, for the hard cut and for a fade-out of --fade_ms:

* end_db: RMS of the last --window_ms of the clip relative to the RMS of the whole clip (dB);
* step_db: |last sample| relative to the clip RMS (dB): the jump to silence when playback stops;
* the same two on the codec's decoding of the clip (codec.decode(codec.encode(clip))).

    python -m bench.toktts_click --processed_dir data/demo_toktts --wavs corpus/mini_lj/wavs

The codec is the one of --processed_dir (stage 1's codec/): with a random-init codec (the demo,
here) the decoded figures describe that codec, not EnCodec's released weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.codec.encodec import CodecTokenizer  # noqa: E402
from preprocessors.toktts_data import Copy, clip_audio  # noqa: E402
from utils.audio import load_audio  # noqa: E402


def db(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(20 * torch.log10(num.clamp(min=1e-8) / den.clamp(min=1e-8)))


def edges(wav: torch.Tensor, window: int) -> tuple[float, float]:
    rms = wav.pow(2).mean().sqrt()
    return db(wav[-window:].pow(2).mean().sqrt(), rms), db(wav[-1].abs(), rms)


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    codec = CodecTokenizer.from_processed_dir(args.processed_dir)
    frames, window = round(args.seconds * 75), round(args.window_ms * 24)
    rows: dict[str, list[float]] = {}
    perturbations = [("copy 0", 1.0, 0.0), ("augmented", args.speed, args.gain_db)]
    for path in sorted(Path(args.wavs).glob("*.wav"))[: args.max_files]:
        wav = load_audio(path)
        if len(wav) <= frames * 320 * 1.2:  # the cap must cut speech, not the silence after it
            continue
        for label, speed, gain in perturbations:
            item = Copy(SimpleNamespace(id=path.stem), 0, speed, gain)
            for fade in (0.0, args.fade_ms / 1000):
                clip = clip_audio(wav, item, frames, fade)
                decoded = codec.decode(codec.encode([clip])[0][None])[0]
                cut = f"fade {args.fade_ms:g} ms" if fade else "hard cut"
                kind = f"{label}, {cut}"
                for where, x in (("input", clip), ("decoded", decoded)):
                    end, step = edges(x, window)
                    rows.setdefault(f"{kind}, {where}, end_db", []).append(end)
                    rows.setdefault(f"{kind}, {where}, step_db", []).append(step)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processed_dir", required=True, help="stage-1 output (its codec/)")
    p.add_argument("--wavs", required=True, help="folder of the corpus' wav files")
    p.add_argument("--seconds", type=float, default=2.0, help="the cap (max_audio_seconds)")
    p.add_argument("--fade_ms", type=float, default=10.0, help="fade-out compared")
    p.add_argument("--window_ms", type=float, default=10.0, help="end window")
    p.add_argument("--speed", type=float, default=1.05, help="augmented copy's speed")
    p.add_argument("--gain_db", type=float, default=3.0, help="augmented copy's gain")
    p.add_argument("--max_files", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = measure(args)
    n = len(next(iter(rows.values()), []))
    print(f"{n} clips of {args.seconds} s; mean over clips, dB re the clip RMS")
    for name, values in rows.items():
        print(f"| {name} | {sum(values) / len(values):+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
