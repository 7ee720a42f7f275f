"""Shared fixtures: small espeak-ng corpora (LibriTTS layout + a custom list) with bad inputs.

The corpora are built once per test session (a few seconds) under pytest's tmp dir. Besides the
clean mini LibriTTS from `egs/tts/VALLE/local/make_mini_corpus.py`, an extra train chapter holds
the inputs stage 1 must handle: a stereo 48 kHz file, an 8 kHz file, a corrupt wav, a zero-length
wav, an empty transcript, a too-long file and a wav without a transcript line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "egs" / "tts" / "VALLE" / "local"))

SPECIAL_CHAPTER = ("1900", "4000")  # speaker, chapter of the extra LibriTTS chapter
MAX_DURATION = 6.0


def _utt(name: str) -> str:
    return f"{SPECIAL_CHAPTER[0]}_{SPECIAL_CHAPTER[1]}_{name}"


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> dict:
    """{"libritts": root, "custom": list file, "utts": {...}, "source": {...}}"""
    from make_mini_corpus import make_mini_corpus

    base = tmp_path_factory.mktemp("corpora")
    root = make_mini_corpus(
        base / "mini", num_speakers=2, utts_per_speaker=3, dev_speakers=1, dev_utts_per_speaker=2
    )
    # A clean utterance to derive the special files from.
    src_wav = sorted((root / "train-clean-100").rglob("*.wav"))[0]
    clean, sr = sf.read(src_wav, dtype="float32")
    assert sr == 24000
    x = torch.from_numpy(clean)
    chapter = root / "train-clean-100" / SPECIAL_CHAPTER[0] / SPECIAL_CHAPTER[1]
    chapter.mkdir(parents=True)
    text = "A sentence that espeak can certainly pronounce."
    utts = {
        "stereo48k": _utt("000000_000000"),
        "rate8k": _utt("000001_000000"),
        "corrupt": _utt("000002_000000"),
        "zero": _utt("000003_000000"),
        "empty_text": _utt("000004_000000"),
        "too_long": _utt("000005_000000"),
        "no_transcript": _utt("000006_000000"),
    }
    x48 = AF.resample(x, 24000, 48000)
    stereo = torch.stack([x48, 0.5 * x48], dim=1).numpy()  # L = x, R = x / 2
    sf.write(chapter / f"{utts['stereo48k']}.wav", stereo, 48000, subtype="PCM_16")
    sf.write(chapter / f"{utts['rate8k']}.wav", AF.resample(x, 24000, 8000).numpy(), 8000)
    (chapter / f"{utts['corrupt']}.wav").write_bytes(b"RIFF\x00\x01\x00\x00WAVEjunk" * 50)
    sf.write(chapter / f"{utts['zero']}.wav", np.zeros(0, dtype="float32"), 24000)
    sf.write(chapter / f"{utts['empty_text']}.wav", clean, 24000)
    reps = int(MAX_DURATION * 24000 / len(clean)) + 2
    sf.write(chapter / f"{utts['too_long']}.wav", np.tile(clean, reps), 24000)
    sf.write(chapter / f"{utts['no_transcript']}.wav", clean, 24000)
    lines = [f"{u}\t{text}\t{text}" for k, u in utts.items() if k not in ("no_transcript",)]
    lines = [
        ln if not ln.startswith(utts["empty_text"]) else f"{utts['empty_text']}\t\t" for ln in lines
    ]
    (chapter / f"{SPECIAL_CHAPTER[0]}_{SPECIAL_CHAPTER[1]}.trans.tsv").write_text(
        "\n".join(lines) + "\n", encoding="utf-8"
    )
    (chapter / f"{SPECIAL_CHAPTER[0]}_{SPECIAL_CHAPTER[1]}.book.tsv").write_text(
        "".join(f"{u}\t{text}\t{text}\t0\t0\t20.0\n" for u in utts.values()), encoding="utf-8"
    )

    # Custom list corpus: paths relative to the list file, one malformed line.
    custom = base / "custom"
    (custom / "audio").mkdir(parents=True)
    sf.write(custom / "audio" / "stereo.wav", stereo, 48000, subtype="FLOAT")
    sf.write(custom / "audio" / "narrow.wav", AF.resample(x, 24000, 8000).numpy(), 8000)
    sf.write(custom / "audio" / "clean.wav", clean, 24000)
    list_file = custom / "list.txt"
    list_file.write_text(
        f"audio/stereo.wav|{text}|spk_a\n"
        f"audio/narrow.wav|{text}|spk_b\n"
        f"audio/clean.wav|Hello there, how are you today?|spk_a\n"
        "this line has no separators\n",
        encoding="utf-8",
    )
    return {"libritts": root, "custom": list_file, "utts": utts, "clean": src_wav}


def write_config(path: Path, corpora: dict, processed: Path, **preprocess) -> Path:
    """A stage-1 config over the test corpora (random-init codec, tiny shards)."""
    import json

    settings = {
        "processed_dir": str(processed),
        "codec_pretrained": False,
        "codec_init_seconds": 6,
        "codec_batch_seconds": 8,
        "shard_size": 3,
        "max_duration": MAX_DURATION,
        "valid_fraction": 0.0,
    }
    settings.update(preprocess)
    cfg = {
        "base_config": str(REPO / "config" / "valle.json"),
        "dataset": ["libritts", "custom"],
        "dataset_path": {"libritts": str(corpora["libritts"]), "custom": str(corpora["custom"])},
        "preprocess": settings,
    }
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def stage1(corpora, tmp_path_factory) -> dict:
    """Stage 1 run once over both corpora; tests read its outputs (and must not modify them)."""
    from preprocessors.pipeline import run_stage1
    from utils.config import load_config

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("stage1")
    cfg_path = write_config(base / "cfg.json", corpora, base / "processed")
    cfg = load_config(cfg_path)
    summaries = run_stage1(cfg, ["cpu"], 1)
    return {"config": cfg_path, "processed": base / "processed", "summaries": summaries}
