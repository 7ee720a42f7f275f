"""Stage 3 split over worker processes (models/base/inference_split.py) on the tiny VALL-E world:
two CPU workers write the same folder as one, line for line, in list order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from inference_world import (
    TEXTS,
    build_world,
    check_result,
    main,
    run_sh,
    single,
)
from split_check import assert_same_run, run_records

from models.base.inference import InferenceError
from models.base.inference_split import split_requests, worker_devices


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("stage3_split"))
    lines = [
        f"{TEXTS[0]}|prompt {TEXTS[1]}|prompts/a.wav",  # 1
        f"{TEXTS[4]}|prompt {TEXTS[5]}|prompts/missing.wav",  # 2: fails reading the list
        f"prompt {TEXTS[2]}|prompts/b.flac|{TEXTS[3]}",  # 3
        f"{TEXTS[6]}|prompt {TEXTS[7]}|prompts/a.wav",  # 4
        f"{TEXTS[6]}|prompt {TEXTS[7]}|prompts/corrupt.wav",  # 5: fails in a worker's prepare
        f"{TEXTS[7]}|prompt {TEXTS[0]}|prompts/b.flac",  # 6
        f"{TEXTS[2]}|prompt {TEXTS[6]}|prompts/a.wav",  # 7
    ]
    world["list"] = world["root"] / "lists" / "split.txt"
    world["list"].write_text("\n".join(lines) + "\n")
    return world


def _same_run(one: Path, two: Path) -> None:
    """Two run folders hold the same results, line for line, and the same audio."""
    records = assert_same_run(one, two)
    assert [r.get("line") for r in records] == [1, 3, 4, 6, 7, 2, 5]  # list order, then failures


def _one_device(world, out: Path, *extra: str) -> Path:
    """The reference: the list decoded in this process (one device)."""
    assert main(world, out, "--mode", "batch", "--test_list_file", str(world["list"]),
                "--num_workers", "1", *extra) == 1  # fmt: skip
    return out / "batch"


def test_two_workers_equal_one_device_through_run_sh(world, tmp_path):
    batch = ("--infer_mode", "batch", "--infer_test_list_file", str(world["list"]))
    proc = run_sh(world, tmp_path / "n2", *batch, "--infer_num_workers", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]  # lines 2 and 5 fail, the rest run
    _same_run(_one_device(world, tmp_path / "n1"), tmp_path / "n2" / "batch")
    logs = proc.stdout + proc.stderr
    assert "2 workers: worker 0 on cpu: 3 lines; worker 1 on cpu: 3 lines" in logs
    assert "worker 0 (cpu): " in logs and "worker 1 (cpu): " in logs  # per-worker totals
    assert "(2 workers, their times summed)" in logs
    assert "worker 1 models.base.inference_split: ready on cpu" in logs  # its start-up time
    assert "line 5: audio prompt" in logs and "corrupt.wav" in logs  # a worker's failure
    records = [r for r in run_records(tmp_path / "n2" / "batch") if "error" not in r]
    assert len({r["frames"] for r in records}) > 1  # really decoded, different lengths
    for record in records:
        check_result(record, tmp_path / "n2" / "batch")


def test_two_workers_equal_one_device_when_sampling(world, tmp_path):
    # (that top_k 5 really samples, unlike greedy: tests/test_inference_sampling.py)
    sampling = ("--top_k", "5", "--seed", "7", "--batch_size", "3")
    rc = main(world, tmp_path / "n2", "--mode", "batch", "--test_list_file", str(world["list"]),
              *sampling, "--num_workers", "2")  # fmt: skip
    assert rc == 1
    _same_run(_one_device(world, tmp_path / "n1", *sampling), tmp_path / "n2" / "batch")


def test_split_deals_sorted_lengths_round_robin():
    class Req:
        def __init__(self, n: int, text: str):
            self.name, self.line, self.text = str(n), n, text

        def fields(self) -> dict:
            return {"text": self.text}

    reqs = [Req(i, "x" * n) for i, n in enumerate([3, 9, 1, 7, 5, 9, 2], 1)]
    parts = split_requests(reqs, 3)
    # by length, longest first (ties in list order): 2, 6, 4, 5, 1, 7, 3; dealt to 0, 1, 2, 0, ...
    assert [[r.line for r in part] for part in parts] == [[2, 3, 5], [1, 6], [4, 7]]
    assert split_requests(reqs, 1) == [reqs]  # one worker: the list as it is


def test_worker_devices(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert worker_devices(None) == [cpu] and worker_devices(3) == [cpu] * 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(None) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert [d.index for d in worker_devices(3)] == [0, 1, 0]  # the GPUs in turn
    assert worker_devices(2, "cpu") == [cpu, cpu]  # --device: every worker on it
    with pytest.raises(InferenceError, match="--infer_num_workers 0"):
        worker_devices(0)


def test_single_mode_is_one_worker(world, tmp_path, caplog):
    caplog.set_level("INFO")
    assert single(world, tmp_path, "--num_workers", "2") == 0
    assert "workers:" not in caplog.text  # decoded in this process
    (record,) = run_records(tmp_path / "single")
    check_result(record, tmp_path / "single")
