"""egs/tts/VALLE/run.sh option parsing, run as users do: `sh run.sh ...` from another directory."""

import json
import os
import subprocess

import pytest

from utils.config import REPO_ROOT

RUN_SH = REPO_ROOT / "egs" / "tts" / "VALLE" / "run.sh"


def run(*args: str, cwd="/", timeout: int = 60, env=None) -> subprocess.CompletedProcess:
    # `sh` is dash on Debian: the script must re-execute itself under bash.
    return subprocess.run(
        ["sh", str(RUN_SH), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def test_help_lists_every_option():
    result = run("--help")
    assert result.returncode == 0
    for option in (
        "--config", "--name", "--stage", "--stop_stage", "--gpu", "--model_train_stage",
        "--ar_model_ckpt_dir", "--infer_expt_dir", "--infer_output_dir", "--infer_mode",
        "--infer_test_list_file", "--test_list_file", "--infer_text", "--infer_text_prompt",
        "--infer_audio_prompt", "--resume", "--resume_from_ckpt_path", "--resume_type",
    ):  # fmt: skip
        assert option in result.stdout, option
    assert run("-h").stdout == result.stdout


def test_unknown_option_is_rejected():
    result = run("--stage", "1", "--bogus_option", "3")
    assert result.returncode != 0
    assert "unknown option '--bogus_option'" in result.stderr
    assert "Stage 1" not in result.stdout  # nothing ran


def test_unknown_short_option_is_rejected():
    result = run("-x", "1")
    assert result.returncode != 0 and "unknown option '-x'" in result.stderr


def test_option_without_value_is_an_error_not_a_hang():
    result = run("--stage")
    assert result.returncode != 0 and "needs a value" in result.stderr


@pytest.mark.parametrize(
    "args, missing",
    [
        (["--stage", "2"], "--name"),
        (["-s", "3"], "--infer_expt_dir"),
        (["-s", "3", "--infer_expt_dir", "x"], "--infer_mode"),
        (["-s", "3", "--infer_expt_dir", "x", "--infer_mode", "batch"], "--infer_test_list_file"),
        (["-s", "3", "--infer_expt_dir", "x", "--infer_mode", "single"], "--infer_text"),
        (["--stage", "1", "--stop_stage", "3"], "--name"),  # whole recipe checks up front
    ],
)
def test_missing_required_option_per_stage(args, missing):
    result = run(*args)
    assert result.returncode != 0
    assert f"needs {missing}" in result.stderr
    assert "Stage 1" not in result.stdout  # fails before running any stage


def test_bad_values_are_rejected():
    assert "must be 1, 2, 3 or 4" in run("--stage", "7").stderr
    assert "after --stop_stage" in run("--stage", "3", "--stop_stage", "1").stderr
    assert "--resume must be true or false" in run("--resume", "yes").stderr
    assert (
        "--infer_mode must be single or batch"
        in run("-s", "3", "--infer_expt_dir", "x", "--infer_mode", "both").stderr
    )
    assert "config file not found" in run("-c", "/nonexistent.json").stderr


def test_test_list_file_alias(tmp_path):
    # the alias satisfies the batch-mode requirement (the run then fails later, on the expt dir)
    result = run(
        "-s", "3", "--infer_expt_dir", str(tmp_path / "none"), "--infer_mode", "batch",
        "--test_list_file", str(tmp_path / "list.txt"),
    )  # fmt: skip
    assert "needs --infer_test_list_file" not in result.stderr
    assert "Stage 3" in result.stdout


def test_short_stage_option_runs_stage_one_without_hanging(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps(
            {
                "base_config": "config/valle.json",
                "dataset_path": {"libritts": str(tmp_path / "no_corpus")},
                "preprocess": {"processed_dir": str(tmp_path / "out")},
            }
        )
    )
    result = run("-s", "1", "-c", str(config), timeout=300)
    assert "Stage 1" in result.stdout  # parsed `-s 1 -c FILE` and dispatched to stage 1
    assert result.returncode != 0  # the corpus does not exist: a clear error, not a hang
    assert "no_corpus" in result.stderr + result.stdout


def test_node_options_are_checked_before_any_stage_and_a_launched_copy_runs_only_stage_2():
    assert "--num_nodes" in run("--help").stdout and "--master_port" in run("--help").stdout
    result = run("--stage", "1", "--num_nodes", "2", "--node_rank", "1")
    assert result.returncode != 0 and "Stage 1" not in result.stdout
    assert "--num_nodes 2 needs --master_addr: the host name or IP of node 0" in result.stderr
    srun = {**os.environ, "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    result = run("--stage", "1", env=srun)  # every task would redo stage 1
    assert result.returncode != 0 and "Stage 1" not in result.stdout
    assert "srun started this script as rank 1 of 2: run only --stage 2 --stop_stage 2" in (
        result.stderr
    )
