"""egs/tts/TokTTS/run.sh stages 1-3 on a tiny LJSpeech-layout espeak-ng corpus with bad files,
run as users do (`sh run.sh` from another directory), and the outputs each stage promises."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lhotse import CutSet
from lhotse.qa import validate
from split_check import assert_same_run
from test_preprocess import _tuple_shapes

from utils.config import REPO_ROOT

RUN_SH = REPO_ROOT / "egs" / "tts" / "TokTTS" / "run.sh"
sys.path.insert(0, str(REPO_ROOT / "egs" / "tts" / "TokTTS" / "local"))


def run(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})}
    return subprocess.run(["sh", str(RUN_SH), *args], cwd="/", capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def lj(corpora, tmp_path_factory) -> Path:
    """The session's mini LibriTTS train subset (+ its bad files) in LJSpeech layout, plus a
    metadata line whose wav is missing."""
    from make_ljspeech_layout import transcripts

    root = tmp_path_factory.mktemp("lj") / "LJ"
    (root / "wavs").mkdir(parents=True)
    rows = []
    for utt, text, wav in transcripts(corpora["libritts"] / "train-clean-100"):
        shutil.copyfile(wav, root / "wavs" / f"{utt}.wav")
        rows.append(f"{utt}|{text}|{text}\n")
    rows.append("LJ_missing|No audio for this line.|No audio for this line.\n")
    (root / "metadata.csv").write_text("".join(rows), encoding="utf-8")
    return root


def write_config(path: Path, corpus: Path, work: Path, **train) -> Path:
    cfg = {
        "base_config": str(REPO_ROOT / "egs" / "tts" / "TokTTS" / "exp_config_demo.json"),
        "dataset_path": {"ljspeech": str(corpus)},
        "log_dir": str(work / "exp"),
        "preprocess": {"processed_dir": str(work / "data"), "codec_init_seconds": 4,
                       "valid_fraction": 0.2, "augmentation_factor": 2, "shard_size": 4},
        "model": {"dim": 32, "encoder_layers": 1, "decoder_layers": 1, "max_audio_seconds": 0.2},
        "train": {"batch_size": 4, "max_steps": 4, "valid_interval": 0, "save_interval": 0,
                  "warmup_steps": 1, "total_training_steps": 10, **train},
        "inference": {"batch_size": 2},
    }  # fmt: skip
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


def test_stages_1_to_3_report_bad_inputs_and_write_every_output(lj, tmp_path):
    cfg = write_config(tmp_path / "c.json", lj, tmp_path)
    tests = tmp_path / "list.txt"
    texts = [row.split("|")[1] for row in (lj / "metadata.csv").read_text().splitlines()]
    said = texts[0]
    tests.write_text(f"# text|name\n{said}|fox\ntoo|many|fields\n\n{texts[1]}\n\u00fc ber\n")
    exp = tmp_path / "exp" / "t"
    result = run("--config", str(cfg), "--stage", "1", "--stop_stage", "3", "--name", "t",
                 "--infer_expt_dir", str(exp), "--infer_test_list_file", str(tests),
                 "--infer_num_workers", "2", "--infer_top_k", "1")  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]  # the bad list line: everything else ran
    assert "line 3: expected text[|name], found 3" in out
    assert "line 6: text 'ü ber' has characters not in the model's character table: 'ü'" in out

    data = tmp_path / "data"
    rejected = {r["id"]: r["reason"] for r in map(json.loads, (data / "ljspeech" /
                "rejected.jsonl").read_text().splitlines())}  # fmt: skip
    assert rejected["LJ_missing"] == "missing_audio"
    assert "unreadable_audio" in rejected.values() and "zero_length_audio" in rejected.values()
    assert "empty_transcript" in rejected.values()
    train = CutSet.from_file(data / "ljspeech" / "cuts_train.jsonl.gz").to_eager()
    validate(train)  # lhotse's own checker accepts the manifest (+ the codes: lhotse bug bypassed)
    validate(CutSet.from_cuts(_tuple_shapes(c) for c in train), read_data=True)
    originals = [c for c in train if c.custom["augmentation"]["copy"] == 0]
    assert len(train) == 2 * len(originals) > 0  # augmentation_factor 2
    copy = train[f"{originals[0].id}_aug1"]
    assert 0.9 <= copy.custom["augmentation"]["speed"] <= 1.1
    for cut in train:
        codes = cut.load_codes()
        assert codes.shape[1] == 2 and 1 <= codes.shape[0] <= 15  # 0.2 s cap, 2 codebooks
        assert codes.min() >= 0 and codes.max() < 1024
    chars = json.loads((data / "chars.json").read_text())["chars"]
    assert set("".join(c.supervisions[0].text for c in train)) <= set(chars)

    results = [json.loads(x) for x in (exp / "result" / "batch" / "results.jsonl").open()]
    assert {r.get("name") for r in results if "output" in r} == {"fox", "5"}
    assert {"line": 3, "error": "expected text[|name], found 3 '|'-separated fields"} in results
    assert all(Path(r["output"]).is_file() for r in results if "output" in r)
    run_info = json.loads((exp / "result" / "batch" / "run.json").read_text())
    assert run_info["kind"] == "experiment" and run_info["random_init_codec"] is True
    assert "2 workers: worker 0 on cpu: 2 lines; worker 1 on cpu: 1 lines" in out
    one = run("--config", str(cfg), "--stage", "3", "--infer_expt_dir", str(exp),
              "--infer_test_list_file", str(tests), "--infer_top_k", "1",
              "--infer_num_workers", "1", "--infer_output_dir", str(tmp_path / "n1"))  # fmt: skip
    assert one.returncode == 1 and "workers:" not in one.stdout + one.stderr  # one device
    assert_same_run(tmp_path / "n1" / "batch", exp / "result" / "batch")  # = the 2 workers'
    avg = run("--config", str(cfg), "--stage", "3", "--infer_expt_dir", str(exp),
              "--infer_text", "hi", "--infer_avg", "2")  # fmt: skip
    assert avg.returncode == 1 and "--infer_avg 2: " in avg.stderr  # one checkpoint: no mean
    assert "has 1 checkpoint(s)" in avg.stderr

    again = run("--config", str(cfg), "--stage", "1")  # idempotent: nothing redone
    assert again.returncode == 0 and "Stage 1 is already complete" in again.stdout + again.stderr
    assert "Successfully finished" in again.stdout

    from models.tts.toktts import text_to_speech_pipeline

    speech = text_to_speech_pipeline(exp, "cpu")(said, top_k=1)
    assert speech["sampling_rate"] == 24000 and 0 < len(speech["audio"]) <= 15 * 320


def test_options_checked_before_anything_runs():
    assert "unknown option '--model_train_stage'" in run("--model_train_stage", "1").stderr
    assert "needs --name" in run("--stage", "2").stderr
    assert "needs --infer_text or --infer_test_list_file" in run(
        "-s", "3", "--infer_expt_dir", "x").stderr  # fmt: skip
    help_text = run("--help").stdout
    options = ["--infer_text", "--infer_test_list_file", "--test_list_file", "--resume"]
    for option in [*options, "--num_nodes", "--master_port", "--infer_num_workers", "--infer_avg"]:
        assert option in help_text
    bad = run("--stage", "1", "--num_nodes", "2", "--node_rank", "1")  # as VALL-E's run.sh
    assert bad.returncode != 0 and "Stage 1" not in bad.stdout
    assert "--num_nodes 2 needs --master_addr: the host name or IP of node 0" in bad.stderr
    assert "--node_rank 3 is not below --num_nodes 2" in run(
        "--num_nodes", "2", "--node_rank", "3", "--master_addr", "h").stderr  # fmt: skip
    srun = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    bad = run("--stage", "1", env=srun)  # every task would redo stage 1
    assert bad.returncode != 0 and "Stage 1" not in bad.stdout
    assert "srun started this script as rank 1 of 2: run only --stage 2" in bad.stderr
