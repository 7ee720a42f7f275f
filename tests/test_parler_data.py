"""Parler-TTS stage 1 (preprocessors/parler_*.py) on tiny espeak corpora: the output contract,
exact DAC codes, token ids, descriptions, rejections, idempotent re-runs and resume."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from lhotse import CutSet
from lhotse.qa import validate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "egs" / "tts" / "ParlerTTS" / "local"))

SPEECH = "A sentence that espeak can certainly pronounce."


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from make_tiny_random_model import make_tiny_random_model

    torch.set_num_threads(1)
    return make_tiny_random_model(tmp_path_factory.mktemp("parler") / "tiny", seed=1)


def custom_corpus(base: Path, clean: Path) -> Path:
    """audio|text|description[|speaker]: a given description, an empty one (annotated), a
    line with too few fields, a missing file, a file with NaN samples (readable header)."""
    import numpy as np
    import soundfile as sf

    (base / "wavs").mkdir(parents=True)
    shutil.copy(clean, base / "wavs" / "a.wav")
    shutil.copy(clean, base / "wavs" / "b.wav")
    sf.write(base / "wavs" / "nan.wav", np.full(24000, np.nan, dtype="float32"), 24000, "FLOAT")
    lines = [
        "# audio|text|description|speaker",
        f"wavs/a.wav|{SPEECH}|Ann speaks calmly in a quiet room.|Ann",
        f"wavs/b.wav|{SPEECH}||Bo",
        "wavs/a.wav|only two fields",
        f"wavs/missing.wav|{SPEECH}|Someone speaks.",
        f"wavs/nan.wav|{SPEECH}|Someone speaks.",
    ]
    (base / "list.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return base / "list.txt"


def expresso_corpus(root: Path, clean: Path) -> Path:
    """The Expresso read-speech layout with a dev and a test id, a longform recording, a wav
    without transcript and a transcript without wav."""
    files = {
        "ex04/happy/base/ex04_happy_00001.wav": "I am *so* glad to see you.",
        "ex04/happy/base/ex04_happy_00002.wav": SPEECH,
        "ex01/default/base/ex01_default_00001.wav": SPEECH,
        "ex01/default/base/ex01_default_00003.wav": None,  # no transcript line
        "ex01/default/longform/ex01_default_longform_00001.wav": SPEECH,
    }
    lines = []
    for rel, text in files.items():
        path = root / "audio_48khz" / "read" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clean, path)
        if text is not None:
            lines.append(f"{Path(rel).stem}\t{text}")
    lines.append(f"ex01_sad_00009\t{SPEECH}")  # no audio
    (root / "read_transcriptions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("ex04_happy_00001\n")
    (root / "splits" / "dev.txt").write_text("ex04_happy_00002\n")
    (root / "splits" / "test.txt").write_text("ex01_default_00001\n")
    return root


def write_config(path: Path, processed: Path, model: Path, datasets: dict, **pre) -> Path:
    settings = {"processed_dir": str(processed), "shard_size": 3, "max_duration": 6.0}
    settings.update(pre)
    cfg = {"dataset": list(datasets), "dataset_path": {k: str(v) for k, v in datasets.items()},
           "preprocess": settings, "model": {"pretrained": str(model)}}  # fmt: skip
    path.write_text(json.dumps(cfg, indent=1))
    return path


def run(cfg_path: Path, model: Path, workers: int = 1):
    from models.tts.parler.pretrained import load_tokenizer
    from preprocessors.parler_pipeline import run_parler_stage1
    from utils.config_parler import load_parler_config

    cfg = load_parler_config(cfg_path)
    return run_parler_stage1(cfg, model, load_tokenizer(model), ["cpu"], workers)


@pytest.fixture(scope="module")
def stage1(corpora, tiny_model, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("parler_stage1")
    datasets = {
        "libritts_r": corpora["libritts"],
        "custom": custom_corpus(base / "custom", corpora["clean"]),
        "expresso": expresso_corpus(base / "expresso", corpora["clean"]),
    }
    cfg = write_config(base / "cfg.json", base / "processed", tiny_model, datasets,
                       annotation_pitch="speaker_corpus")  # fmt: skip
    return {"config": cfg, "processed": base / "processed", "summaries": run(cfg, tiny_model)}


def cuts_of(stage1, name: str, split: str = "train") -> dict:
    return {
        c.id: c for c in CutSet.from_file(stage1["processed"] / name / f"cuts_{split}.jsonl.gz")
    }


def rejected_of(stage1, name: str) -> dict[str, str]:
    lines = (stage1["processed"] / name / "rejected.jsonl").read_text().splitlines()
    return {r["id"]: r["reason"] for r in map(json.loads, lines)}


def test_contract_files_and_exact_codes(stage1, tiny_model):
    from models.codec.dac import DacCodec
    from models.tts.parler.pretrained import load_tokenizer
    from utils.audio import load_audio

    out = stage1["processed"]
    done = json.loads((out / "stage1.done.json").read_text())
    assert done["format"] == "codectts-parler-stage1-1" and len(done["fingerprint"]) == 64
    assert json.loads((out / "model_source.json").read_text()) == {
        "pretrained": str(tiny_model), "folder": str(tiny_model)}  # fmt: skip
    assert json.loads((out / "config.json").read_text())["model"]["pretrained"] == str(tiny_model)
    meta = json.loads((out / "codec" / "codec.json").read_text())
    assert meta["random_init"] is True and meta["source"]["source"] == "parler_checkpoint"
    saved = DacCodec.load(out / "codec")
    reference = DacCodec.from_parler_checkpoint(tiny_model)  # the folder's own DAC
    tok = load_tokenizer(tiny_model)
    cuts = [c for n in ("libritts_r", "custom", "expresso") for c in cuts_of(stage1, n).values()]
    assert len(cuts) == 8 + 2 + 1  # LibriTTS: 6 clean + the stereo 48 kHz and the 8 kHz file
    for cut in cuts:
        codes = torch.from_numpy(cut.load_codes().astype("int64"))
        wav = load_audio(cut.recording.sources[0].source, 44100)
        assert torch.equal(codes, reference.encode([wav])[0]), cut.id
        assert torch.equal(codes, saved.encode([wav])[0]), cut.id
        assert codes.shape == (-(-wav.numel() // 512), 4) and 0 <= codes.min() <= codes.max() < 1024
        assert cut.codes.frame_shift == 512 / 44100 and cut.codes.start == 0
        assert abs(cut.duration - codes.shape[0] * 512 / 44100) < 1e-9
        text, description = cut.supervisions[0].text, cut.custom["description"]
        assert cut.custom["prompt_ids"] == tok(text).input_ids
        assert cut.custom["description_ids"] == tok(description).input_ids
        assert cut.custom["description_ids"][-1] == 1 and len(cut.custom["description_ids"]) > 10
    validate(CutSet.from_cuts(cuts))  # lhotse's own checks accept the manifests


def test_rejections_are_reported_not_fatal(stage1, corpora):
    u = corpora["utts"]
    libri = rejected_of(stage1, "libritts_r")
    bad = ("corrupt", "zero", "empty_text", "too_long", "no_transcript")
    assert [libri[u[k]] for k in bad] == ["unreadable_audio", "zero_length_audio",
        "empty_transcript", "too_long", "missing_transcript"]  # fmt: skip
    assert rejected_of(stage1, "custom") == {"line4": "malformed_list_line",
        "wavs_missing": "missing_audio", "wavs_nan": "non_finite_audio"}  # fmt: skip
    assert rejected_of(stage1, "expresso") == {
        "ex01_default_00001": "test_split", "ex01_default_longform_00001": "longform",
        "ex01_default_00003": "missing_transcript", "ex01_sad_00009": "missing_audio"}  # fmt: skip
    s = stage1["summaries"]
    assert s["libritts_r"]["rejected"]["too_long"] == 1 and s["custom"]["splits"]["train"][
        "utterances"] == 2  # fmt: skip


def test_descriptions_given_or_annotated(stage1):
    custom = cuts_of(stage1, "custom")
    assert custom["wavs_a"].custom["description"] == "Ann speaks calmly in a quiet room."
    assert custom["wavs_a"].custom["annotation"] is None  # given: not measured
    annotated = custom["wavs_b"].custom
    assert annotated["description"].startswith("Bo speaks ")
    measures = {"phones_per_second", "pitch_hz", "pitch_std_semitones", "snr_db", "snr_method"}
    assert set(annotated["annotation"]) == measures
    train, valid = cuts_of(stage1, "expresso"), cuts_of(stage1, "expresso", "valid")
    happy = train["ex04_happy_00001"]
    assert happy.supervisions[0].text == "I am so glad to see you."  # emphasis marks dropped
    assert happy.supervisions[0].speaker == "Talia" and happy.custom["style"] == "happy"
    assert happy.custom["description"].startswith("Talia speaks ")
    assert " in a happy style with a " in happy.custom["description"]
    assert list(valid) == ["ex04_happy_00002"]  # splits/dev.txt
    libri = cuts_of(stage1, "libritts_r")
    assert all(c.custom["annotation"] and c.custom["style"] is None for c in libri.values())
    # LibriTTS speakers by their SPEAKERS.txt gender (1000: en-us "M", 1001: en-gb "M")
    assert libri["1000_3000_000000_000000"].custom["description"].startswith("A man speaks ")
    # annotation_pitch = "speaker_corpus": one pitch word per speaker, by rank in the corpus
    words: dict[str, set] = {}
    for c in libri.values():
        text = c.custom["description"]
        words.setdefault(c.supervisions[0].speaker, set()).add(
            text.split(" with a ")[1].split(" voice")[0]
        )
    assert all(len(w) == 1 for w in words.values()) and len(set.union(*words.values())) == len(
        words
    )


def test_rerun_is_a_no_op(stage1, tiny_model, caplog):
    out = stage1["processed"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with caplog.at_level("INFO"):
        assert run(stage1["config"], tiny_model) == stage1["summaries"]
    assert "nothing to do" in caplog.text
    other = json.loads(stage1["config"].read_text())
    other["preprocess"]["num_workers"] = 3  # the worker count does not change the outputs
    (out.parent / "workers.json").write_text(json.dumps(other))
    caplog.clear()
    with caplog.at_level("INFO"):
        run(out.parent / "workers.json", tiny_model)
    assert "nothing to do" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_killed_run_keeps_finished_shards(corpora, tiny_model, tmp_path, monkeypatch):
    import preprocessors.parler_pipeline as pipeline

    (tmp_path / "c").mkdir()
    lines = []
    for i in range(4):
        shutil.copy(corpora["clean"], tmp_path / "c" / f"u{i}.wav")
        lines.append(f"u{i}.wav|{SPEECH}|Someone speaks number {i}.")
    (tmp_path / "c" / "list.txt").write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path / "cfg.json", tmp_path / "out", tiny_model,
                       {"custom": tmp_path / "c" / "list.txt"}, shard_size=1)  # fmt: skip
    real, calls = pipeline.run_shard, []

    def killed_after_one(task, codec):
        if calls:
            raise KeyboardInterrupt  # as if the run were killed in its second shard
        calls.append(task.name)
        return real(task, codec)

    monkeypatch.setattr(pipeline, "run_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tiny_model)
    tokens = tmp_path / "out" / "custom" / "dac_tokens"
    first = {p.name: p.stat().st_mtime_ns for p in tokens.glob("*")}
    assert sorted(p for p in first if p.endswith(".done")) == [f"{calls[0]}.done"]
    assert not (tmp_path / "out" / "stage1.done.json").exists()
    redone = []
    monkeypatch.setattr(pipeline, "run_shard", lambda t, c: redone.append(t.name) or real(t, c))
    summaries = run(cfg, tiny_model)
    shards = {p.name[: -len(".done")] for p in tokens.glob("*.done")}
    assert len(shards) >= 2 and set(redone) == shards - {calls[0]}  # the finished one kept
    kept = {n: m for n, m in first.items() if n.startswith(calls[0])}
    assert {n: (tokens / n).stat().st_mtime_ns for n in kept} == kept  # untouched
    assert summaries["custom"]["splits"]["train"]["utterances"] == 4
    # the same manifests as a run that was never interrupted, made by 2 worker processes
    fresh = write_config(tmp_path / "fresh.json", tmp_path / "fresh", tiny_model,
                         {"custom": tmp_path / "c" / "list.txt"}, shard_size=1)  # fmt: skip
    run(fresh, tiny_model, workers=2)
    a = CutSet.from_file(tmp_path / "out" / "custom" / "cuts_train.jsonl.gz")
    b = CutSet.from_file(tmp_path / "fresh" / "custom" / "cuts_train.jsonl.gz")
    assert [c.custom["description_ids"] for c in a] == [c.custom["description_ids"] for c in b]
    assert all((x.load_codes() == y.load_codes()).all() for x, y in zip(a, b, strict=True))


def test_tiny_random_folder_loads_and_says_it_is_random(tiny_model, tmp_path):
    from make_tiny_random_model import make_tiny_random_model
    from safetensors.torch import load_file

    from models.codec.dac import DacCodec
    from models.tts.parler.pretrained import load_pretrained, load_tokenizer

    hf = json.loads((tiny_model / "config.json").read_text())
    assert hf["codectts_random_init"] is True and hf["model_type"] == "parler_tts"
    assert "RANDOM-INIT" in (tiny_model / "README.txt").read_text()
    model = load_pretrained(tiny_model)  # strict keys: every parameter under the package names
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    codec = DacCodec.from_parler_checkpoint(tiny_model)
    assert codec.is_random_init and codec.num_codebooks == model.cfg.num_codebooks == 4
    tok = load_tokenizer(tiny_model)
    ids = tok("Hi, Bo!").input_ids
    assert ids[-1] == 1 and tok.pad_token_id == 0 and max(ids) < hf["vocab_size"]
    assert tok.decode(ids, skip_special_tokens=True) == "Hi, Bo!"
    again = make_tiny_random_model(tmp_path / "again", seed=1)  # deterministic for a seed
    a, b = (
        load_file(str(tiny_model / "model.safetensors")),
        load_file(str(again / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("audio_encoder.model.quantizer.") for k in a)


def test_expresso_styles_and_held_out_split(corpora, tmp_path):
    from preprocessors.parler_corpora import read_expresso
    from utils.config_parler import ParlerPreprocessConfig

    root = expresso_corpus(tmp_path / "e", corpora["clean"])
    happy = read_expresso(root, ParlerPreprocessConfig(expresso_styles=["happy"]))
    assert {s: sorted(c.ids) for s, c in happy.splits.items()} == {
        "train": ["ex04_happy_00001"], "valid": ["ex04_happy_00002"]}  # fmt: skip
    assert happy.rejected == []  # other styles are not asked for: neither kept nor rejected
    shutil.rmtree(root / "splits")  # no official split: valid_fraction is held out
    pcfg = ParlerPreprocessConfig(valid_fraction=0.4, expresso_speaker_names={"ex04": "Ada"})
    corpus = read_expresso(root, pcfg)
    assert sorted(len(c) for c in corpus.splits.values()) == [1, 2]
    speakers = {c.supervisions[0].speaker for cs in corpus.splits.values() for c in cs}
    assert speakers == {"Ada", "ex01"}  # unnamed ids keep the corpus id
