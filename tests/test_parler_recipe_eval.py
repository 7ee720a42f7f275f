"""Parler-TTS stage 4 pieces: results without prompt audio are scored (no SIM-o), and the
speaker similarity between outputs that name the same speaker (resemblyzer, espeak-ng voices:
one voice twice is more alike than two voices)."""

from __future__ import annotations

import json
import subprocess

from evaluation.backends import load_backend
from evaluation.scoring import Item, load_checked, read_results, same_speaker_similarity
from models.tts.parler.inference import speaker_name


def espeak(text: str, voice: str, path):
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path


def test_results_without_prompt_audio_and_speaker_names(tmp_path):
    parler = {"name": "a", "description": "Jerry speaks.", "text": "hi", "output": "a.wav",
              "speaker": speaker_name("Jerry speaks.")}  # fmt: skip
    valle = {"name": "b", "text": "hi", "output": "b.wav"}  # a VALL-E record needs its prompt
    (tmp_path / "results.jsonl").write_text(json.dumps(parler) + "\n" + json.dumps(valle) + "\n")
    items, failures = read_results(tmp_path / "results.jsonl")
    assert [(i.name, i.audio_prompt, i.speaker) for i in items] == [("a", None, "Jerry")]
    assert items[0].output == tmp_path / "a.wav"
    assert failures[0]["name"] == "b" and "text_prompt" in failures[0]["error"]
    assert speaker_name("A man speaks") is None and speaker_name("Thomas's voice") == "Thomas"


def test_same_speaker_similarity(tmp_path):
    sim = load_backend("sim", "resemblyzer")
    texts = ["the weather is fine today", "we will walk to the station", "she reads a book"]
    voices = {"j1": ("Jerry", "en-us"), "j2": ("Jerry", "en-us"), "t1": ("Thomas", "en-us"),
              "t2": ("Thomas", "en-us+f3"), "x": (None, "en-us"),
              "solo": ("Talia", "en-us")}  # fmt: skip
    items = [Item(n, texts[i % 3], None, espeak(texts[i % 3], v, tmp_path / f"{n}.wav"), s)
             for i, (n, (s, v)) in enumerate(voices.items())]  # fmt: skip
    got = same_speaker_similarity(items, sim, batch_size=2)
    assert sorted(got) == ["j1", "j2", "t1", "t2"]  # no name / alone: not scored
    assert abs(got["j1"] - got["j2"]) < 1e-6 and abs(got["t1"] - got["t2"]) < 1e-6
    assert got["j1"] > got["t1"]  # one voice twice is closer than a male and a female voice
    emb = sim.embed([load_checked(it.output, "output") for it in items[:2]])
    assert abs(float(emb[0] @ emb[1]) - got["j1"]) < 1e-5
