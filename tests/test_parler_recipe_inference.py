"""Parler-TTS recipe stage 3 (bins/tts/parler_inference.py over the shared shell): a batch gives
each line its single-line output (sampled, per-utterance seeds), bad lines are reported with
their numbers while the others are synthesised, weights from an experiment or a released folder,
a clear message when a hub id cannot be fetched."""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile
import torch
from parler_world import make_model_folder, make_stage1, write_config
from safetensors.torch import load_file, save_file
from split_check import assert_same_run

from bins.tts import parler_inference
from models.tts.parler import trainer as parler_trainer

LINES = [
    "a calm voice speaks slowly|hello there, how are you?|first",
    "a sad voice with low pitch|quickly now",
    "this line has no text field",
    "clear happy voice|speak with high pitch please|third",
    "|no description",
    "calm clear voice|a b c d e f g|first",
    "a calm voice|" + "a very long transcript " * 12,  # + 24 new tokens > 256 positions
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("parler_infer")
    model = make_model_folder(root / "model")
    data = make_stage1(root / "data", model, n_train=4, n_valid=1)
    cfg = write_config(root / "c.json", data, model, root / "exp", max_steps=2)
    assert parler_trainer.main(["--config", str(cfg), "--exp_name", "e"]) == 0
    (root / "list.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return root, model, data, cfg


def infer(cfg, expt, out, *extra: str) -> int:
    return parler_inference.main(["--config", str(cfg), "--expt_dir", str(expt), "--output_dir",
                                  str(out), "--progress", "false", "--max_new_tokens", "24",
                                  *extra])  # fmt: skip


def results(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]


def test_batch_equals_single_and_bad_lines_reported(world, tmp_path):
    root, _, _, cfg = world
    exp = root / "exp" / "e"
    batch_args = ("--mode", "batch", "--test_list_file", str(root / "list.txt"))
    assert infer(cfg, exp, tmp_path / "b3", *batch_args, "--batch_size", "3") == 1
    assert infer(cfg, exp, tmp_path / "b1", *batch_args, "--batch_size", "1") == 1
    three, one = results(tmp_path / "b3" / "batch"), results(tmp_path / "b1" / "batch")
    errors = [r for r in three if "error" in r]
    assert [r["line"] for r in errors] == [3, 5, 6, 7]
    assert "output name 'first' is already used by line 1" in errors[2]["error"]
    assert "max_position_embeddings = 256" in errors[3]["error"]
    good = [r for r in three if "error" not in r]
    assert sorted(r["name"] for r in good) == ["2", "first", "third"]
    assert {r["batch_size"] for r in good} == {3}
    by_name = {r["name"]: r for r in one if "error" not in r}
    for r in good:  # sampled (top_k 50): the same codes whatever the batch
        assert (
            r["frames"] == by_name[r["name"]]["frames"] and r["seed"] == by_name[r["name"]]["seed"]
        )
        a, sr = soundfile.read(r["output"])
        b, _ = soundfile.read(by_name[r["name"]]["output"])
        assert sr == 44100 and (a == b).all()
    # the seed decides: another seed gives other samples for at least one line
    assert infer(cfg, exp, tmp_path / "s", *batch_args, "--seed", "5") == 1
    other = {r["name"]: r["frames"] for r in results(tmp_path / "s" / "batch") if "name" in r}
    assert other != {r["name"]: r["frames"] for r in good} or any(
        (soundfile.read(r["output"])[0] != soundfile.read(by_name[r["name"]]["output"])[0]).any()
        for r in results(tmp_path / "s" / "batch") if "name" in r
    )  # fmt: skip


def test_two_workers_equal_one_device_greedy_and_avg_checked(world, tmp_path, capfd):
    root, model, _, cfg = world
    exp = root / "exp" / "e"
    batch = ("--mode", "batch", "--test_list_file", str(root / "list.txt"), "--do_sample",
             "false", "--batch_size", "2")  # fmt: skip
    assert infer(cfg, exp, tmp_path / "n1", *batch, "--num_workers", "1") == 1
    capfd.readouterr()
    assert infer(cfg, exp, tmp_path / "n2", *batch, "--num_workers", "2") == 1
    assert "2 workers: worker 0 on cpu: 2 lines; worker 1 on cpu: 2 lines" in capfd.readouterr().err
    records = assert_same_run(tmp_path / "n1" / "batch", tmp_path / "n2" / "batch")
    assert [r.get("name", r["line"]) for r in records] == ["first", "2", "third", 3, 5, 6, 7]
    assert records[0]["checkpoints"] == [str(p) for p in (exp / "checkpoint").glob("epoch-*")]
    # a released folder holds one checkpoint: --avg 2 is refused before anything is written
    single = ("--mode", "single", "--description", "a calm voice", "--text", "hi")
    assert infer(cfg, model, tmp_path / "r", *single, "--avg", "2") == 1
    err = capfd.readouterr().err
    assert "--infer_avg 2: " in err and "is a released model with one checkpoint" in err
    assert not (tmp_path / "r").exists()


def test_avg_2_decodes_with_the_mean_of_the_last_two_checkpoints(world, tmp_path):
    root, _, _, cfg = world
    (last,) = (root / "exp" / "e" / "checkpoint").glob("epoch-*")
    weights = load_file(last / "model.safetensors")
    scaled = {k: v * 0.9 if v.is_floating_point() else v for k, v in weights.items()}
    two = tmp_path / "two"  # the experiment + an earlier checkpoint (step 1): the weights x 0.9
    shutil.copytree(root / "exp" / "e", two)
    earlier = two / "checkpoint" / "epoch-0000_step-0000001_loss-9.000000"
    shutil.copytree(last, earlier)
    save_file(scaled, earlier / "model.safetensors")
    mean = tmp_path / "mean"  # the experiment with the mean, computed here, as its weights
    shutil.copytree(root / "exp" / "e", mean)
    save_file({k: (v + scaled[k]) / 2 if v.is_floating_point() else v for k, v in
               weights.items()}, mean / "checkpoint" / last.name / "model.safetensors")  # fmt: skip
    single = ("--mode", "single", "--description", "a sad voice with low pitch", "--text",
              "quickly now", "--do_sample", "false")  # fmt: skip
    assert infer(cfg, two, tmp_path / "avg", *single, "--avg", "2") == 0
    assert infer(cfg, mean, tmp_path / "ref", *single) == 0
    assert infer(cfg, two, tmp_path / "one", *single) == 0  # --avg 1: the last checkpoint only
    (record,) = results(tmp_path / "avg" / "single")
    assert record["checkpoints"] == [str(earlier), str(two / "checkpoint" / last.name)]
    wav = {run: (tmp_path / run / "single" / "quickly_now.wav").read_bytes()
           for run in ("avg", "ref", "one")}  # fmt: skip
    assert record["frames"] > 0 and wav["avg"] == wav["ref"] != wav["one"]


def test_single_from_released_folder_and_run_json(world, tmp_path):
    root, model, data, cfg = world
    args = ("--mode", "single", "--description", "a calm voice", "--text", "hello world",
            "--codec", str(data / "codec"), "--do_sample", "false")  # fmt: skip
    assert infer(cfg, model, tmp_path / "r", *args) == 0
    (record,) = results(tmp_path / "r" / "single")
    assert record["name"] == "hello_world" and record["description"] == "a calm voice"
    info = json.loads((tmp_path / "r" / "single" / "run.json").read_text())
    assert info["kind"] == "release" and info["random_init_codec"] is True
    assert infer(cfg, model, tmp_path / "r", *args) == 0  # a second run: single-2/
    assert (tmp_path / "r" / "single-2" / "hello_world.wav").is_file()


def test_hub_id_offline_says_what_to_place_where(world, tmp_path, monkeypatch, capfd):
    root, _, _, cfg = world
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = infer(cfg, "parler-tts/no-such-model-here", tmp_path / "o", "--mode", "single",
               "--description", "d", "--text", "t")  # fmt: skip
    assert rc == 1
    message = capfd.readouterr().err  # one ERROR line (logging goes to stderr), no traceback
    assert "ERROR" in message and "Traceback" not in message
    assert "huggingface-cli download parler-tts/no-such-model-here --local-dir DIR" in message
    assert "give DIR instead of the hub id" in message and "tokenizer.json" in message
