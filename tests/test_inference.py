"""Stage 3 (zero-shot inference) on a tiny random VALL-E saved in our experiment format.

The experiment is built here the way stages 1-2 leave it: a processed dir with a random-init
codec (`codec/codec.json` + weights), and `<exp>/config.json`, `symbols.dict`,
`checkpoint/<epoch-..._step-..._loss-...>/{model.safetensors, meta.json}`, `best`.
Its audio is meaningless; what is checked is the plumbing: discovery, test lists, batching,
caps, outputs and error reporting. End-to-end runs go through `egs/tts/VALLE/run.sh --stage 3`.
"""

from __future__ import annotations

import logging
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from inference_world import (
    CKPT_NEW,
    CKPT_OLD,
    RUN_ENV,
    SR,
    TEXTS,
    build_world,
    check_result,
    read_records,
    run_sh,
    run_sh_argv,
    single,
)
from inference_world import main as run_main

from models.base.inference import batches, claim_run_dir
from models.tts.valle.inference import (
    InferenceError,
    Prepared,
    TextFrontend,
    Utterance,
    find_model_source,
    frame_caps,
    load_prompt,
    parse_test_list,
)
from text.g2p import phonemize
from utils.config import REPO_ROOT, InferenceConfig, load_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("stage3"))


def test_run_shsingle(world, tmp_path):
    out = tmp_path / "out"
    proc = run_sh(
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
    (record,) = read_records(out / "single" / "results.jsonl")
    assert record["output"] == str(out / "single" / "the_quick_brown_fox_jumps_over_the_lazy.wav")
    assert record["text"] == TEXTS[0] and record["text_prompt"] == "prompt " + TEXTS[1]
    assert record["audio_prompt"] == str(world["prompts"] / "b.flac")
    check_result(record, out / "single")
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
        f"{TEXTS[5]}|prompt {TEXTS[6]}|prompts/long.wav",  # 9: prompt over max_prompt_seconds
    ]
    test_list = world["root"] / "lists" / "mixed.txt"
    test_list.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = run_sh(
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
    # A long prompt is refused, not silently cut (its transcript would no longer match).
    assert "line 9: audio prompt" in logs and "long.wav is 3.00 s" in logs
    assert "give the transcript of the part you keep" in logs
    assert "--infer_trim_long_prompts true" in logs
    records = read_records(out / "batch" / "results.jsonl")
    good = {r["name"]: r for r in records if "error" not in r}
    assert set(good) == {"2", "named_out"}
    for record in good.values():
        check_result(record, out / "batch")
    assert good["2"]["text"] == TEXTS[0] and good["2"]["text_prompt"] == "prompt " + TEXTS[1]
    assert good["named_out"]["text"] == TEXTS[3]
    assert good["named_out"]["text_prompt"] == "prompt " + TEXTS[2]
    assert good["2"]["audio_prompt"] == str(prompts / "a.wav")  # relative to the list file
    assert sorted(r["line"] for r in records if "error" in r) == [5, 6, 7, 8, 9]
    assert sorted(p.name for p in (out / "batch").glob("*.wav")) == ["2.wav", "named_out.wav"]


# --------------------------------------------------------------------------- in process


def test_outputs_are_never_overwritten_silently(world, tmp_path):
    out = tmp_path / "out"
    assert single(world, out) == 0
    first = out / "single" / "please_bring_the_letters_to_the_office.wav"
    original = first.read_bytes()
    assert single(world, out, "--seed", "3", "--top_k", "20") == 0  # different audio
    (second,) = (out / "single-2").glob("*.wav")
    assert first.read_bytes() == original  # the first run is untouched
    assert second.read_bytes() != original
    assert single(world, out, "--seed", "3", "--top_k", "20", "--overwrite", "true") == 0
    assert first.read_bytes() == second.read_bytes()  # reused (and replaced) only when asked
    assert len(read_records(out / "single" / "results.jsonl")) == 1
    assert not (out / "single-3").exists()


def test_batches_give_the_same_codes_as_batch_size_1(world, tmp_path):
    audio = ["a.wav", "b.flac"]
    lines = [f"{t}|prompt {TEXTS[(i + 1) % 8]}|prompts/{audio[i % 2]}" for i, t in enumerate(TEXTS)]
    lines[3] = f"prompt {TEXTS[0]}|prompts/long.wav|{TEXTS[3]}"  # code order, long prompt
    test_list = world["root"] / "lists" / "eight.txt"
    test_list.write_text("\n".join(lines) + "\n")
    runs = {}
    for bs in ("1", "4"):
        rc = run_main(
            world,
            tmp_path / bs,
            "--mode",
            "batch",
            "--test_list_file",
            str(test_list),
            "--batch_size",
            bs,
            "--trim_long_prompts",  # line 4's 3 s prompt is cut to 1.5 s, as asked
            "true",
        )
        assert rc == 0
        runs[bs] = {r["name"]: r for r in read_records(tmp_path / bs / "batch" / "results.jsonl")}
    assert set(runs["1"]) == {str(i) for i in range(1, 9)}
    assert {r["batch_size"] for r in runs["4"].values()} == {4}  # really decoded 4 at a time
    reasons = {r["stop_reason"] for r in runs["4"].values()}
    assert reasons == {"eos", "cap"}  # items leave the batch at different times
    for name, one in runs["1"].items():
        four = runs["4"][name]
        assert (one["frames"], one["stop_reason"]) == (four["frames"], four["stop_reason"])
        check_result(four, tmp_path / "4" / "batch")
        assert Path(one["output"]).read_bytes() == Path(four["output"]).read_bytes(), name
    assert runs["1"]["4"]["prompt_frames"] == math.ceil(1.5 * SR / 320)  # trimmed to 1.5 s


def test_continual_mode(world, tmp_path):
    test_list = world["root"] / "lists" / "continual.txt"
    test_list.write_text(f"prompt {TEXTS[0]}|prompts/a.wav\n{TEXTS[1]}|prompts/b.flac|cont\n")
    rc = run_main(
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
    records = {r["name"]: r for r in read_records(tmp_path / "batch" / "results.jsonl")}
    assert set(records) == {"1", "cont"}
    for r in records.values():
        # Amphion's continual: the first min(P/2, 225) frames are the prompt, the rest is redone.
        p = r["prompt_frames"]
        assert r["frames"] == p - min(p // 2, 225)
        assert r["stop_reason"] == "continual" and r["text"] == ""


def test_single_mode_errors_name_the_problem(world, tmp_path, capsys):
    rc = single(world, tmp_path, audio=tmp_path / "nope.wav")
    assert rc == 1
    assert f"audio prompt not found: {tmp_path / 'nope.wav'}" in capsys.readouterr().err
    rc = single(world, tmp_path, text="Zebra quartz xylophone?")  # phones the table lacks
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
    wav = load_prompt(prompts / "b.flac", SR, 10.0, trim=False)  # 16 kHz stereo, 1 s
    assert wav.dim() == 1 and wav.numel() == SR
    with caplog.at_level(logging.WARNING):
        wav = load_prompt(prompts / "long.wav", SR, 1.5, trim=True)  # 3 s at 22.05 kHz
    assert wav.numel() == int(1.5 * SR) and "long.wav" in caplog.text
    with pytest.raises(InferenceError, match="corrupt.wav"):
        load_prompt(prompts / "corrupt.wav", SR, 10.0, trim=False)
    with pytest.raises(InferenceError, match="missing.wav: file not found"):
        load_prompt(prompts / "missing.wav", SR, 10.0, trim=False)
    with pytest.raises(InferenceError, match="long.wav is 3.00 s.*trim_long_prompts"):
        load_prompt(prompts / "long.wav", SR, 1.5, trim=False)  # never cut silently


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


def test_claim_run_dir_never_hands_out_a_folder_twice(tmp_path):
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch"
    assert (tmp_path / "batch" / "results.jsonl").is_file()  # the claim
    # Claimed, even before it holds any output: a run started at the same time goes elsewhere.
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch-2"
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch-3"
    (tmp_path / "batch-4").mkdir()  # empty: a run that stopped before claiming it
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch-4"
    (tmp_path / "batch-5").mkdir()
    (tmp_path / "batch-5" / "notes.txt").write_text("x")  # not ours: left alone
    assert claim_run_dir(tmp_path, "batch", False) == tmp_path / "batch-6"
    assert claim_run_dir(tmp_path, "batch", True) == tmp_path / "batch"  # asked for


def test_concurrent_runs_into_one_output_dir_never_mix(world, tmp_path):
    """Two stage-3 processes started together with the same --infer_output_dir."""
    out = tmp_path / "out"
    (out / "batch").mkdir(parents=True)  # an empty folder both see as free
    lists = {}
    for run, texts in (("a", TEXTS[:2]), ("b", TEXTS[2:4])):
        lists[run] = world["root"] / "lists" / f"concurrent_{run}.txt"
        lines = [f"{t}|prompt {TEXTS[7]}|prompts/a.wav|{run}{i}" for i, t in enumerate(texts)]
        lists[run].write_text("\n".join(lines) + "\n")
    procs = [
        subprocess.Popen(
            run_sh_argv(world, out, "--infer_mode", "batch", "--infer_test_list_file", str(lst)),
            cwd=REPO_ROOT,
            env=RUN_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for lst in lists.values()
    ]
    for proc in procs:
        logs = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, logs[-3000:]
    runs = {}
    for run_dir in sorted(out.iterdir()):
        records = read_records(run_dir / "results.jsonl")
        names = {r["name"] for r in records}
        assert all(Path(r["output"]).parent == run_dir for r in records)
        assert {p.stem for p in run_dir.glob("*.wav")} == names, run_dir
        runs[run_dir.name] = names
    assert sorted(runs.values(), key=sorted) == [{"a0", "a1"}, {"b0", "b1"}]
    assert set(runs) == {"batch", "batch-2"}
