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
    offline = {"asr": "pocketsphinx", "sim": "resemblyzer", "mos": "dnsmos"}
    tree = {"base_config": str(REPO_ROOT / "config" / "valle.json"), "evaluation": offline}
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


def test_bad_input_is_reported_per_line_and_the_rest_scored(audio, config, tmp_path, capsys):
    d = tmp_path
    sf.write(d / "silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    good = record("good", SPEECH[0], audio["prompt"], audio["speech"][0])
    lines = [json.dumps(good)]
    for name, wav in [("missing", d / "nope.wav"), ("silence", d / "silence.wav"),
                      ("empty", d / "empty.wav"), ("corrupt", d / "corrupt.wav")]:  # fmt: skip
        lines.append(json.dumps(record(name, SPEECH[0], audio["prompt"], wav)))
    lines.append(json.dumps(record("notext", "  ", audio["prompt"], audio["speech"][1])))
    lines.append(json.dumps({"line": 9, "error": "phone 'x' is not in the symbol table"}))
    lines.append("{not json")
    (d / "results.jsonl").write_text("\n".join(lines) + "\n")
    # a run.json whose model is gone: scored all the same, without SIM-r and tensorboard
    run_json = {"weights": str(d / "gone" / "model.safetensors"), "random_init_codec": True}
    (d / "run.json").write_text(json.dumps(run_json))
    assert cli.main(["--config", str(config), "--input_dir", str(d), "--progress", "false"]) == 1
    summary = json.loads((d / "eval" / "summary.json").read_text())
    assert summary["n"] == 1 and summary["n_failed"] == 7
    reasons = {f["name"]: f["error"] for f in summary["failed"]}
    assert "file not found" in reasons["missing"] and "silence" in reasons["silence"]
    assert "zero-length" in reasons["empty"] and "unreadable" in reasons["corrupt"]
    assert "empty text" in reasons["notext"]
    assert "stage 3 failed" in reasons["test-list line 9"]
    assert "not JSON" in reasons["results.jsonl line 8"]
    logs = capsys.readouterr().err
    assert "the model that wrote this folder is not usable" in logs
    assert "RANDOM-INIT codec: its audio is noise, and so are these numbers" in logs
    for name, why in reasons.items():  # each failure is in the log with its name and reason
        assert f"FAILED {name}: {why}" in logs
    assert summary["sim_r"] is None and summary["wer"] is not None
    table = (d / "eval" / "summary.md").read_text()
    assert "| n/a |" in table  # SIM-r was not computed: no number printed for it
    assert "FAILED silence" in table


def test_rerun_skips_scored_utterances_and_a_killed_run_loses_nothing(audio, config, tmp_path):
    recs = [record(f"s{i}", t, audio["prompt"], w) for i, (t, w) in enumerate(
        zip(SPEECH, audio["speech"], strict=True))]  # fmt: skip
    write_results(tmp_path, recs)
    args = ["--config", str(config), "--input_dir", str(tmp_path), "--progress", "false"]
    metrics = tmp_path / "eval" / "metrics.jsonl"
    assert cli.main(args + ["--mos", "none"]) == 0
    first = metrics.read_text().splitlines()
    assert [json.loads(x)["name"] for x in first] == ["s0", "s1"]
    # Killed while writing the second line: the first complete line is kept and not redone.
    metrics.write_text(first[0] + "\n" + first[1][:25])
    assert cli.main(args + ["--mos", "none"]) == 0
    lines = metrics.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["name"] == "s1"
    assert json.loads(lines[2])["wer"] == json.loads(first[1])["wer"]
    assert cli.main(args + ["--mos", "none"]) == 0
    assert len(metrics.read_text().splitlines()) == 3  # nothing left to score
    assert cli.main(args) == 0  # other backends (DNSMOS on): everything scored again
    assert len(metrics.read_text().splitlines()) == 5
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["dnsmos_ovrl"] is not None


def test_evaluation_config_is_validated(tmp_path):
    from utils.config import ConfigError, load_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base_config": str(REPO_ROOT / "config" / "valle.json"),
                                "evaluation": {"asr": "kaldi"}}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"c\.json: key 'evaluation\.asr': must be one of"):
        load_config(path)
    with pytest.raises(ConfigError, match="evaluation.batch_size"):
        load_config(path, overrides={"evaluation": {"asr": "hubert", "batch_size": 0}})
    assert load_config(path, overrides={"evaluation": {"asr": "hubert"}}).evaluation.asr == "hubert"
