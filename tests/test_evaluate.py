"""Stage 4 (evaluation) with the real offline backends: pocketsphinx, resemblyzer, DNSMOS.

No mocks: espeak-ng speech in the prompt's voice must score a better WER, SIM-o and DNSMOS than
white noise. The backends are loaded once per session (`load_backend` caches them), so keep the
folders small: every utterance costs a few seconds of CPU.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bins.tts import evaluate as cli
from evaluation.backends import load_backend
from evaluation.scoring import Scorer, read_results, score_all
from evaluation.summary import summarise
from utils.config import REPO_ROOT

PROMPT_TEXT = "this is the voice of the prompt speaking clearly"
SPEECH = ["i like to read books in the morning", "we will go home now"]
NOISE_TEXT = "please open the door"


def espeak(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
    return path


def noise(path: Path, seconds: float = 2.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    return path


def write_results(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def record(name: str, text: str, prompt: Path, output: Path) -> dict:
    return {"name": name, "text": text, "text_prompt": PROMPT_TEXT, "audio_prompt": str(prompt),
            "output": str(output)}  # fmt: skip


@pytest.fixture(scope="session")
def offline_scorer() -> Scorer:
    return Scorer(
        load_backend("asr", "pocketsphinx"),
        load_backend("sim", "resemblyzer"),
        load_backend("mos", "dnsmos"),
    )


@pytest.fixture(scope="session")
def audio(tmp_path_factory) -> dict:
    """Prompt + speech in the prompt's voice (espeak-ng en-us) + white noise, written once."""
    d = tmp_path_factory.mktemp("eval_audio")
    return {
        "prompt": espeak(PROMPT_TEXT, d / "prompt.wav"),
        "speech": [espeak(t, d / f"speech{i}.wav") for i, t in enumerate(SPEECH)],
        "noise": noise(d / "noise.wav"),
        "dir": d,
    }


@pytest.fixture(scope="session")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval_cfg") / "eval.json"
    tree = {"base_config": str(REPO_ROOT / "config" / "valle.json"),
            "evaluation": {"asr": "pocketsphinx", "sim": "resemblyzer", "mos": "dnsmos"}}  # fmt: skip
    path.write_text(json.dumps(tree))
    return path


def test_speech_scores_better_than_noise(audio, offline_scorer, tmp_path):
    recs = [record(f"speech{i}", t, audio["prompt"], w) for i, (t, w) in enumerate(
        zip(SPEECH, audio["speech"], strict=True))]  # fmt: skip
    recs.append(record("noise", NOISE_TEXT, audio["prompt"], audio["noise"]))
    items, failures = read_results(write_results(tmp_path, recs))
    assert failures == []
    scored = score_all(items, offline_scorer, tmp_path / "eval" / "metrics.jsonl", 2, False)
    speech = summarise([scored[f"speech{i}"] for i in range(len(SPEECH))], [], {})
    white = summarise([scored["noise"]], [], {})
    print("speech", speech, "\nnoise", white)  # the measured numbers, shown with -s
    assert speech["wer"] < white["wer"] and speech["cer"] < white["cer"]
    assert speech["sim_o"] > white["sim_o"] + 0.1
    assert speech["dnsmos_ovrl"] > white["dnsmos_ovrl"] + 0.5
    assert speech["dnsmos_sig"] > white["dnsmos_sig"]
    for rec in scored.values():  # the backends stand beside every number
        assert "pocketsphinx 5.1.1" in rec["backends"]["asr"]
        assert "resemblyzer" in rec["backends"]["sim"] and "DNSMOS" in rec["backends"]["mos"]
        assert rec["sim_r"] is None  # no codec known: not computed, not invented
