"""Stage 3 (zero-shot inference) on a tiny random VALL-E saved in our experiment format.

The experiment is built here the way stages 1-2 leave it: a processed dir with a random-init
codec (`codec/codec.json` + weights), and `<exp>/config.json`, `symbols.dict`,
`checkpoint/<epoch-..._step-..._loss-...>/{model.safetensors, meta.json}`, `best`.
Its audio is meaningless; what is checked is the plumbing: discovery, test lists, batching,
caps, outputs and error reporting. End-to-end runs go through `egs/tts/VALLE/run.sh --stage 3`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from bins.tts import inference as cli
from models.codec.encodec import CodecTokenizer
from models.tts.valle.inference import (
    InferenceError,
    Prepared,
    TextFrontend,
    Utterance,
    batches,
    claim_run_dir,
    find_model_source,
    frame_caps,
    load_prompt,
    parse_test_list,
)
from models.tts.valle.valle import VALLE
from text.g2p import phonemize
from text.symbol_table import SymbolTable, TextTokenizer
from utils.config import REPO_ROOT, InferenceConfig, load_config, save_config

SR = 24000
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Please bring the letters to the office before noon.",
    "A small boat waited at the end of the wooden pier.",
    "Music drifted from the house.",
    "Bright stars covered the sky.",
    "Go to her.",
    "One more line.",
]
CKPT_OLD = "epoch-0001_step-0000010_loss-5.000000"
CKPT_NEW = "epoch-0002_step-0000020_loss-4.000000"


def _tone(seconds: float, sr: int, freq: float, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    return np.stack([mono] * channels, axis=1).astype(np.float32)


def _tiny_model(seed: int, model_cfg) -> VALLE:
    torch.manual_seed(seed)
    model = VALLE.from_config(model_cfg).eval()
    with torch.no_grad():  # a random model rarely says EOS; make it stop at varied lengths
        model.ar_predict_layer.weight[model.eos_id] *= 2.0
    return model


def _save_checkpoint(exp: Path, name: str, model: VALLE, model_cfg) -> None:
    """Our checkpoint format, written by hand (utils/checkpoint.py docstring)."""
    folder = exp / "checkpoint" / name
    folder.mkdir(parents=True)
    seen, state = set(), {}
    for key, tensor in model.state_dict().items():  # tied tensors once
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor.contiguous().clone()
    save_file(state, str(folder / "model.safetensors"))
    meta = {"format": "codectts-valle-1", "model": dataclasses.asdict(model_cfg), "step": 1}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny experiment, prompts in several formats, and a recipe config for decoding."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stage3")
    processed = root / "processed"
    codec = CodecTokenizer.build(pretrained=False, seed=0)
    codec.kmeans_init_([torch.from_numpy(_tone(2.0, SR, 220.0, 0)[:, 0])])
    codec.save(processed / "codec")

    exp = root / "exp" / "tiny"
    phones = {p for seq in phonemize(TEXTS + ["prompt " + t for t in TEXTS]) for p in seq}
    table = SymbolTable.from_symbols(phones)
    table.to_file(exp / "symbols.dict")
    vocab = TextTokenizer(table).vocab_size
    overrides = {
        "preprocess": {"processed_dir": str(processed), "codec_pretrained": False},
        "model": {
            "decoder_dim": 16,
            "nhead": 2,
            "num_decoder_layers": 1,
            "text_token_num": vocab,
            "prefix_mode": 1,
            "dropout": 0.0,
        },
        "inference": {"top_k": 50},  # an experiment's own inference section is NOT used
    }
    cfg = load_config(REPO_ROOT / "config" / "valle.json", overrides=overrides)
    save_config(cfg, exp / "config.json")
    _save_checkpoint(exp, CKPT_OLD, _tiny_model(1, cfg.model), cfg.model)
    _save_checkpoint(exp, CKPT_NEW, _tiny_model(0, cfg.model), cfg.model)
    (exp / "best").write_text(CKPT_OLD + "\n")

    prompts = root / "lists" / "prompts"
    prompts.mkdir(parents=True)
    sf.write(prompts / "a.wav", _tone(1.2, SR, 200.0, 1), SR)
    sf.write(prompts / "b.flac", _tone(1.0, 16000, 300.0, 2, channels=2), 16000)
    sf.write(prompts / "long.wav", _tone(3.0, 22050, 250.0, 3), 22050)
    (prompts / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")

    recipe = root / "recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "base_config": str(REPO_ROOT / "config" / "valle.json"),
                "inference": {
                    "top_k": 1,
                    "batch_size": 2,
                    "max_frames_per_phone": 1.0,
                    "max_seconds": 0.6,
                    "max_prompt_seconds": 1.5,
                },
            }
        )
    )
    return {"root": root, "exp": exp, "prompts": prompts, "recipe": recipe, "cfg": cfg}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run_sh(world, out: Path, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """`sh run.sh --stage 3` with the test recipe config, experiment and output folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--config", str(world["recipe"]), "--infer_expt_dir", str(world["exp"])]
    return subprocess.run(
        ["sh", str(REPO_ROOT / "egs" / "tts" / "VALLE" / "run.sh"), "--stage", "3", *common]
        + ["--infer_output_dir", str(out), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _check_result(record: dict, out_dir: Path) -> None:
    """A result line agrees with its wav file and with the configured caps."""
    wav = Path(record["output"])
    assert wav.parent == out_dir and wav.is_file()
    info = sf.info(wav)
    assert info.samplerate == SR and info.channels == 1
    assert info.frames == record["frames"] * 320
    assert record["seconds"] == pytest.approx(record["frames"] * 320 / SR, abs=1e-3)
    cap = min(int(1.0 * record["text_ids"]) + 1, int(0.6 * 75))  # recipe.json caps
    assert 1 <= record["frames"] <= cap
    assert record["stop_reason"] in ("eos", "cap")
    assert (record["stop_reason"] == "cap") == (record["frames"] == cap)
    assert record["wall_time"] > 0 and record["rtf"] > 0


# --------------------------------------------------------------------------- end to end (run.sh)


def test_run_sh_single(world, tmp_path):
    out = tmp_path / "out"
    proc = _run_sh(
        world,
        out,
        "--infer_mode",
        "single",
        "--infer_text",
        TEXTS[0],
        "--infer_text_prompt",
        "prompt " + TEXTS[1],
        "--infer_audio_prompt",
        "prompts/b.flac",  # relative to the caller's directory, not the repository
        cwd=world["prompts"].parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    assert "RANDOM-INIT" in logs and "MEANINGLESS" in logs
    assert CKPT_NEW in logs  # latest checkpoint by default
    (record,) = _records(out / "single" / "results.jsonl")
    assert record["output"] == str(out / "single" / "the_quick_brown_fox_jumps_over_the_lazy.wav")
    assert record["text"] == TEXTS[0] and record["text_prompt"] == "prompt " + TEXTS[1]
    assert record["audio_prompt"] == str(world["prompts"] / "b.flac")
    _check_result(record, out / "single")
    assert "Successfully finished" in logs


def test_run_sh_batch_reports_bad_lines_and_writes_good_ones(world, tmp_path):
    prompts = world["prompts"]
    lines = [
        "# text|text_prompt|audio_prompt or text_prompt|audio_prompt|text",  # 1
        f"{TEXTS[0]}|prompt {TEXTS[1]}|prompts/a.wav",  # 2: README order, relative path
        f"prompt {TEXTS[2]}|{prompts / 'b.flac'}|{TEXTS[3]}|named_out",  # 3: code order + name
        "",  # 4
        f"{TEXTS[4]}|prompt {TEXTS[5]}|prompts/missing.wav",  # 5: missing audio
        f"prompt {TEXTS[4]}|prompts/a.wav|prompts/b.flac",  # 6: ambiguous order
        f"|prompt {TEXTS[5]}|prompts/a.wav",  # 7: empty text
        f"{TEXTS[6]}|prompt {TEXTS[7]}|prompts/corrupt.wav",  # 8: unreadable audio
        f"{TEXTS[5]}|prompt {TEXTS[6]}|prompts/long.wav",  # 9: trimmed prompt
    ]
    test_list = world["root"] / "lists" / "mixed.txt"
    test_list.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = _run_sh(
        world,
        out,
        "--infer_mode",
        "batch",
        "--test_list_file",  # the alias of --infer_test_list_file
        str(test_list),
        "--infer_checkpoint",
        "best",
    )
    assert proc.returncode != 0
    logs = proc.stdout + proc.stderr
    assert CKPT_OLD in logs  # --infer_checkpoint best
    assert "line 5: audio prompt not found" in logs and "missing.wav" in logs
    assert "line 6: ambiguous field order" in logs
    assert "line 7: empty text" in logs
    assert "line 8: audio prompt" in logs and "corrupt.wav" in logs
    assert "longer than inference.max_prompt_seconds" in logs and "long.wav" in logs
    records = _records(out / "batch" / "results.jsonl")
    good = {r["name"]: r for r in records if "error" not in r}
    assert set(good) == {"2", "named_out", "9"}
    for record in good.values():
        _check_result(record, out / "batch")
    assert good["2"]["text"] == TEXTS[0] and good["2"]["text_prompt"] == "prompt " + TEXTS[1]
    assert good["named_out"]["text"] == TEXTS[3]
    assert good["named_out"]["text_prompt"] == "prompt " + TEXTS[2]
    assert good["2"]["audio_prompt"] == str(prompts / "a.wav")  # relative to the list file
    assert good["9"]["prompt_frames"] == math.ceil(1.5 * SR / 320)  # trimmed to 1.5 s
    assert sorted(r["line"] for r in records if "error" in r) == [5, 6, 7, 8]
    assert sorted(p.name for p in (out / "batch").glob("*.wav")) == [
        "2.wav",
        "9.wav",
        "named_out.wav",
    ]


# --------------------------------------------------------------------------- in process


def _main(world, out: Path, *extra: str) -> int:
    return cli.main(
        [
            "--config",
            str(world["recipe"]),
            "--expt_dir",
            str(world["exp"]),
            "--output_dir",
            str(out),
            "--progress",
            "false",
            *extra,
        ]
    )


def _single(world, out: Path, *extra: str, text: str = TEXTS[2], audio: Path | None = None) -> int:
    audio = audio or world["prompts"] / "a.wav"
    args = ["--mode", "single", "--text", text, "--text_prompt", "prompt " + TEXTS[3]]
    return _main(world, out, *args, "--audio_prompt", str(audio), *extra)


def test_outputs_are_never_overwritten_silently(world, tmp_path):
    out = tmp_path / "out"
    assert _single(world, out) == 0
    first = out / "single" / "please_bring_the_letters_to_the_office.wav"
    original = first.read_bytes()
    assert _single(world, out, "--seed", "3", "--top_k", "20") == 0  # different audio
    (second,) = (out / "single-2").glob("*.wav")
    assert first.read_bytes() == original  # the first run is untouched
    assert second.read_bytes() != original
    assert _single(world, out, "--seed", "3", "--top_k", "20", "--overwrite", "true") == 0
    assert first.read_bytes() == second.read_bytes()  # reused (and replaced) only when asked
    assert len(_records(out / "single" / "results.jsonl")) == 1
    assert not (out / "single-3").exists()


def test_batches_give_the_same_codes_as_batch_size_1(world, tmp_path):
    audio = ["a.wav", "b.flac"]
    lines = [f"{t}|prompt {TEXTS[(i + 1) % 8]}|prompts/{audio[i % 2]}" for i, t in enumerate(TEXTS)]
    lines[3] = f"prompt {TEXTS[0]}|prompts/long.wav|{TEXTS[3]}"  # code order, trimmed prompt
    test_list = world["root"] / "lists" / "eight.txt"
    test_list.write_text("\n".join(lines) + "\n")
    runs = {}
    for bs in ("1", "4"):
        rc = _main(
            world,
            tmp_path / bs,
            "--mode",
            "batch",
            "--test_list_file",
            str(test_list),
            "--batch_size",
            bs,
        )
        assert rc == 0
        runs[bs] = {r["name"]: r for r in _records(tmp_path / bs / "batch" / "results.jsonl")}
    assert set(runs["1"]) == {str(i) for i in range(1, 9)}
    assert {r["batch_size"] for r in runs["4"].values()} == {4}  # really decoded 4 at a time
    reasons = {r["stop_reason"] for r in runs["4"].values()}
    assert reasons == {"eos", "cap"}  # items leave the batch at different times
    for name, one in runs["1"].items():
        four = runs["4"][name]
        assert (one["frames"], one["stop_reason"]) == (four["frames"], four["stop_reason"])
        _check_result(four, tmp_path / "4" / "batch")
        assert Path(one["output"]).read_bytes() == Path(four["output"]).read_bytes(), name


def test_continual_mode(world, tmp_path):
    test_list = world["root"] / "lists" / "continual.txt"
    test_list.write_text(f"prompt {TEXTS[0]}|prompts/a.wav\n{TEXTS[1]}|prompts/b.flac|cont\n")
    rc = _main(
        world,
        tmp_path,
        "--mode",
        "batch",
        "--test_list_file",
        str(test_list),
        "--continual",
        "true",
    )
    assert rc == 0
    records = {r["name"]: r for r in _records(tmp_path / "batch" / "results.jsonl")}
    assert set(records) == {"1", "cont"}
    for r in records.values():
        # Amphion's continual: the first min(P/2, 225) frames are the prompt, the rest is redone.
        p = r["prompt_frames"]
        assert r["frames"] == p - min(p // 2, 225)
        assert r["stop_reason"] == "continual" and r["text"] == ""


def test_single_mode_errors_name_the_problem(world, tmp_path, capsys):
    rc = _single(world, tmp_path, audio=tmp_path / "nope.wav")
    assert rc == 1
    assert f"audio prompt not found: {tmp_path / 'nope.wav'}" in capsys.readouterr().err
    rc = _single(world, tmp_path, text="Zebra quartz xylophone?")  # phones the table lacks
    assert rc == 1
    err = capsys.readouterr().err
    assert "is not in the symbol table" in err and "Zebra quartz xylophone?" in err


# --------------------------------------------------------------------------- units


def test_checkpoint_discovery(world, tmp_path):
    exp, recipe = world["exp"], load_config(world["recipe"])
    latest = find_model_source(exp, "latest", recipe)
    assert latest.kind == "experiment"
    assert latest.weights == exp / "checkpoint" / CKPT_NEW / "model.safetensors"
    assert latest.symbols == exp / "symbols.dict"
    assert latest.cfg.model == world["cfg"].model
    assert latest.cfg.preprocess.processed_dir == world["cfg"].preprocess.processed_dir
    assert find_model_source(exp, "best", recipe).weights.parent.name == CKPT_OLD
    one = find_model_source(exp / "checkpoint" / CKPT_OLD, "latest", recipe)
    assert one.kind == "checkpoint" and one.weights.parent.name == CKPT_OLD

    bare = tmp_path / "bare"
    (bare / "checkpoint").mkdir(parents=True)
    (bare / "config.json").write_text((exp / "config.json").read_text())
    with pytest.raises(InferenceError, match="no checkpoint folders"):
        find_model_source(bare, "latest", recipe)
    with pytest.raises(InferenceError, match="no 'best' file"):
        find_model_source(bare, "best", recipe)
    with pytest.raises(InferenceError, match="neither an experiment"):
        find_model_source(tmp_path, "latest", recipe)
    with pytest.raises(InferenceError, match="not a folder"):
        find_model_source(tmp_path / "missing", "latest", recipe)


def test_parse_test_list_orders_names_and_errors(tmp_path):
    (tmp_path / "p").mkdir()
    sf.write(tmp_path / "p" / "x.wav", np.zeros(2400, np.float32), SR)
    sf.write(tmp_path / "y.flac", np.zeros(2400, np.float32), SR)
    (tmp_path / "notes.txt").write_text("x")
    lst = tmp_path / "list.txt"
    lst.write_text(
        "\n".join(
            [
                "  # a comment",
                "target one|prompt one|p/x.wav",  # 2 README order
                "prompt two | y.flac | target two | out2.wav",  # 3 code order, name, spaces
                "   ",
                "target|prompt|p/x.wav|bad/name",  # 5 name with a folder
                "a|b",  # 6 too few fields
                "a|notes.txt|b",  # 7 no audio field
                "target|prompt|p/x.wav|out2",  # 8 duplicate name
                "prompt|p/x.wav|",  # 9 empty text
                "|p/x.wav|target",  # 10 empty prompt
            ]
        )
        + "\n"
    )
    utts, failures = parse_test_list(lst)
    assert utts == [
        Utterance("2", "target one", "prompt one", tmp_path / "p" / "x.wav", 2),
        Utterance("out2", "target two", "prompt two", tmp_path / "y.flac", 3),
    ]
    by_line = {f.line: f.message for f in failures}
    assert sorted(by_line) == [5, 6, 7, 8, 9, 10]
    assert "plain file name" in by_line[5]
    assert "2 '|'-separated fields" in by_line[6]
    assert "no field is an existing audio file" in by_line[7]
    assert "already used by line 3" in by_line[8]
    assert "empty text" in by_line[9]
    assert "empty text_prompt" in by_line[10]
    assert str(failures[0]) == f"line 5: {by_line[5]}"

    cont = tmp_path / "cont.txt"
    cont.write_text("prompt one|p/x.wav\nprompt two|y.flac|named\nprompt three|p/nope.wav\n")
    utts, failures = parse_test_list(cont, continual=True)
    assert [(u.name, u.text, u.text_prompt) for u in utts] == [
        ("1", "", "prompt one"),
        ("named", "", "prompt two"),
    ]
    assert [(f.line, "audio prompt not found" in f.message) for f in failures] == [(3, True)]
    with pytest.raises(InferenceError, match="cannot read"):
        parse_test_list(tmp_path / "absent.txt")


def test_text_frontend_joins_prompt_and_text_like_amphion(world, tmp_path, caplog):
    frontend = TextFrontend(world["exp"] / "symbols.dict", "en-us", drop_unknown=False)
    tok = frontend.tokenizer
    ids, enroll = frontend.encode("prompt " + TEXTS[6], TEXTS[7])
    # Amphion phonemizes f"{text_prompt} {text}" in one go; enroll = prompt alone with BOS/EOS.
    (joined,) = phonemize([f"prompt {TEXTS[6]} {TEXTS[7]}"])
    (prompt_only,) = phonemize(["prompt " + TEXTS[6]])
    assert ids == tok.encode(joined)
    assert enroll == len(prompt_only) + 2
    assert ids[: enroll - 1] == tok.encode(prompt_only)[:-1]

    odd = "Zebra quartz xylophone"
    unknown = tok.unknown_phones(phonemize([f"prompt {odd}"])[0])
    assert unknown  # the tiny table lacks some of these phones
    with pytest.raises(InferenceError, match=f"phone '{unknown[0]}' of text 'prompt {odd}'"):
        frontend.encode("prompt", odd)
    dropping = TextFrontend(world["exp"] / "symbols.dict", "en-us", drop_unknown=True)
    with caplog.at_level(logging.WARNING):
        ids, _ = dropping.encode("prompt", odd)
    assert "dropping phones" in caplog.text and odd in caplog.text
    assert not set(tok.decode(ids)) & set(unknown)


def test_load_prompt_resamples_downmixes_trims_and_names_bad_files(world, caplog):
    prompts = world["prompts"]
    wav = load_prompt(prompts / "b.flac", SR, 10.0)  # 16 kHz stereo, 1 s
    assert wav.dim() == 1 and wav.numel() == SR
    with caplog.at_level(logging.WARNING):
        wav = load_prompt(prompts / "long.wav", SR, 1.5)  # 3 s at 22.05 kHz
    assert wav.numel() == int(1.5 * SR) and "long.wav" in caplog.text
    with pytest.raises(InferenceError, match="corrupt.wav"):
        load_prompt(prompts / "corrupt.wav", SR, 10.0)
    with pytest.raises(InferenceError, match="missing.wav: file not found"):
        load_prompt(prompts / "missing.wav", SR, 10.0)


def test_frame_caps_smallest_wins():
    assert frame_caps([10, 3], InferenceConfig(), 75.0) == [161, 49]  # Amphion: 16 * S + 1
    assert frame_caps([10], InferenceConfig(max_frames=100), 75.0) == [100]
    assert frame_caps([10], InferenceConfig(max_frames=100, max_seconds=1.0), 75.0) == [75]
    assert frame_caps([10], InferenceConfig(max_frames_per_phone=2.5), 75.0) == [26]


def test_batches_are_sorted_by_expected_length():
    def item(name: str, text_len: int, enroll: int, prompt: int) -> Prepared:
        utt = Utterance(name, "t", "p", Path("a.wav"))
        return Prepared(utt, [0] * text_len, enroll, torch.zeros(prompt, 8, dtype=torch.long))

    items = [item("a", 10, 5, 50), item("b", 30, 5, 50), item("c", 20, 5, 90), item("d", 20, 5, 10)]
    got = [[p.utt.name for p in b] for b in batches(items, 3)]
    assert got == [["b", "c", "d"], ["a"]]


def test_claim_run_dir(tmp_path):
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch"
    (tmp_path / "batch" / "1.wav").write_bytes(b"x")
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch-2"
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch-2"  # still empty: reused
    (tmp_path / "batch-2" / "1.wav").write_bytes(b"x")
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch-3"
    assert claim_run_dir(tmp_path, "batch", True) == tmp_path / "batch"
