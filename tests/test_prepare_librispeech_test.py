"""egs/tts/VALLE/local/prepare_librispeech_test.py on a tiny fake LibriSpeech test-clean made of
espeak-ng speech (flac, 16 kHz, the real layout), one chapter with word alignments."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import soundfile as sf
from prepare_librispeech_test import main

from models.tts.valle.inference import parse_test_list

WORDS = "the old man walked slowly along the quiet river and watched the boats go by".split()


def utterance(chapter_dir, utt_id: str, n_words: int) -> tuple[str, float]:
    """espeak-ng reads n_words (cycling WORDS) into <utt_id>.flac; returns (text, seconds)."""
    text = " ".join(WORDS[i % len(WORDS)] for i in range(n_words)).upper()
    wav = chapter_dir / f"{utt_id}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text.lower()], check=True)
    audio, sr = sf.read(wav, dtype="float32")
    wav.unlink()
    audio = np.interp(np.arange(0, len(audio), sr / 16000), np.arange(len(audio)), audio)
    sf.write(chapter_dir / f"{utt_id}.flac", audio.astype(np.float32), 16000)
    return text, len(audio) / 16000


def fake_librispeech(root):
    chapters = {("1089", "134686"): [14, 20, 4], ("121", "121726"): [16, 40]}
    info = {}
    for (spk, ch), lengths in chapters.items():
        d = root / "test-clean" / spk / ch
        d.mkdir(parents=True)
        lines = []
        for i, n in enumerate(lengths):
            utt_id = f"{spk}-{ch}-{i:04d}"
            text, seconds = utterance(d, utt_id, n)
            info[utt_id] = (text, seconds)
            lines.append(f"{utt_id} {text}")
        (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    # Word alignments for the second chapter (LibriSpeech-alignments format): words evenly spread.
    ali = []
    for utt_id in ("121-121726-0000", "121-121726-0001"):
        text, seconds = info[utt_id]
        words = text.split()
        ends = [seconds * (k + 1) / len(words) for k in range(len(words))]
        ali.append(
            f'{utt_id} ",{",".join(words)}," "{",".join(f"{e:.3f}" for e in ends)},{seconds:.3f}"'
        )
    (root / "test-clean" / "121" / "121726" / "121-121726.alignment.txt").write_text("\n".join(ali))
    return info


def test_vall_e_protocol_lists(tmp_path):
    info = fake_librispeech(tmp_path / "LibriSpeech")
    targets = sorted(u for u, (_, s) in info.items() if 4.0 <= s <= 10.0)
    assert len(targets) >= 2 and len(targets) < len(info)  # some are out of 4-10 s
    out = tmp_path / "lists"
    assert main(["--corpus_dir", str(tmp_path / "LibriSpeech"), "--out_dir", str(out)]) == 0
    utts, failures = parse_test_list(out / "cross_sentence.txt")  # stage 3 reads it as is
    assert failures == [] and sorted(u.name for u in utts) == targets
    for u in utts:
        assert u.text == info[u.name][0]
        prompt_id = u.audio_prompt.stem
        assert prompt_id != u.name and prompt_id.split("-")[0] == u.name.split("-")[0]
        assert sf.info(u.audio_prompt).duration <= 3.0 + 1e-3
    # continuation with alignments: prompt = the words in the first 3 s, text = the rest
    cont, failures = parse_test_list(out / "continuation.txt")
    assert failures == [] and cont and all(u.name.startswith("121-") for u in cont)
    for u in cont:
        assert f"{u.text_prompt} {u.text}" == info[u.name][0]
        assert sf.info(u.audio_prompt).duration <= 3.0 + 1e-3
    # without alignments: continual-mode lines on the whole utterance
    continual, failures = parse_test_list(out / "continuation_continual.txt", continual=True)
    assert failures == [] and continual and all(u.name.startswith("1089-") for u in continual)
    # ground truth: the references as a stage-3 results.jsonl, full transcripts
    for name in ("cross_sentence", "continuation", "continuation_continual"):
        recs = [json.loads(x) for x in (out / "ground_truth" / name / "results.jsonl").open()]
        assert recs and all(r["text"] == info[r["name"]][0] for r in recs)
        assert all(r["output"].endswith(f"{r['name']}.flac") for r in recs)


def test_missing_part_is_an_error(tmp_path, caplog):
    assert main(["--corpus_dir", str(tmp_path), "--out_dir", str(tmp_path / "o")]) == 1
    assert "test-clean: no such folder" in caplog.text
