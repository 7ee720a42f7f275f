"""Recipe stage 2 (bins/tts/train.py, models/tts/valle/trainer.py) on a tiny model and fake
stage-1 data: exact resume after SIGTERM, kill -9 during a checkpoint write, finetune, NAR from
the AR run, NaN guard and the documented error messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import (
    REPO,
    check_ok,
    last_weights,
    make_stage1,
    read_log,
    run_training,
    write_config,
)
from train_fixtures import exp_config as config
from train_fixtures import train_args as args

from models.base import train_state
from models.tts.valle import trainer
from models.tts.valle.dataset import DataError
from models.tts.valle.valle import VALLE
from utils.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_training_state,
    read_meta,
    save_checkpoint,
)
from utils.config import load_config


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    return make_stage1(tmp_path_factory.mktemp("stage1") / "data", n_train=8, n_valid=2)


def test_exact_resume_after_sigterm(tmp_path, processed):
    # train_stage 0 with dropout and prefix_mode 1: dropout, NAR stage and NAR prompt length all
    # draw random numbers; 8 cuts / batch 3 = 3 batches per epoch, so step 4 is mid-epoch 1.
    cfg = config(tmp_path, processed, max_steps=8)
    check_ok(run_training(args(cfg, "full", "--train_stage", "0")))
    stopped = run_training(args(cfg, "part", "--train_stage", "0"), ["--sigterm_at_step", "4"])
    check_ok(stopped)
    assert "Training stopped by SIGTERM at step 4" in stopped.stdout
    assert "--name part --model_train_stage 0 --resume true" in stopped.stdout
    part = tmp_path / "exp" / "part"
    assert read_meta(list_checkpoints(part)[-1])["step"] == 4
    state = load_training_state(list_checkpoints(part)[-1])
    assert (state["epoch"], state["batches_done"]) == (1, 1)
    check_ok(run_training(args(cfg, "part", "--train_stage", "0", "--resume", "true")))

    full_log, part_log = read_log(tmp_path / "exp" / "full"), read_log(part)
    assert sorted(full_log) == sorted(part_log) == list(range(1, 9))
    for step in range(5, 9):
        for key in ("loss", "ar_loss", "nar_loss", "nar_stage", "lr", "grad_norm"):
            assert full_log[step][key] == part_log[step][key], (step, key)
    assert len({full_log[s]["nar_stage"] for s in range(1, 9)}) > 1  # the draws do vary
    a, b = last_weights(tmp_path / "exp" / "full"), last_weights(part)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, processed):
    cfg = config(tmp_path, processed, max_steps=6, save_interval=2)
    proc = run_training(args(cfg, "k"), ["--hang_in_save_at_step", "4"], wait=False)
    exp = tmp_path / "exp" / "k"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((exp / "checkpoint").glob(".tmp-*/model*")):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert list((exp / "checkpoint").glob(".tmp-*"))  # the interrupted write is left behind
    previous = list_checkpoints(exp)  # step 2 (save_interval) and 3 (end of epoch 0)
    assert [read_meta(p)["step"] for p in previous] == [2, 3]
    VALLE(load_config(cfg).model).load_amphion_state_dict(last_weights(exp))
    assert load_training_state(previous[-1])["step"] == 3

    check_ok(run_training(args(cfg, "k", "--resume", "true")))
    assert read_meta(list_checkpoints(exp)[-1])["step"] == 6
    assert not list((exp / "checkpoint").glob(".tmp-*"))  # cleaned on the next start


def test_finetune_loads_only_weights(tmp_path, processed):
    cfg = config(tmp_path, processed, max_steps=4)
    check_ok(run_training(args(cfg, "src")))
    src_ckpt = list_checkpoints(tmp_path / "exp" / "src")[-1]
    src_weights = load_file(str(src_ckpt / "model.safetensors"))

    # the weights the finetune run starts from are the source's, bit for bit
    ft_args = trainer.parse_args(
        args(cfg, "ft", "--resume", "true", "--resume_type", "finetune",
             "--resume_from_ckpt_path", str(src_ckpt))
    )  # fmt: skip
    recipe = trainer.VALLETrainRecipe(load_config(cfg), ft_args)
    resume_from, init_from = train_state.pick_checkpoints(ft_args, tmp_path / "exp" / "ft", recipe)
    assert resume_from is None and init_from == src_ckpt
    model, _ = trainer.build_model(load_config(cfg), 1, init_from)
    for name, tensor in src_weights.items():
        assert torch.equal(model.state_dict()[name], tensor), name

    check_ok(run_training(args(cfg, "ft", "--resume", "true", "--resume_type", "finetune",
                               "--resume_from_ckpt_path", str(src_ckpt))))  # fmt: skip
    log = read_log(tmp_path / "exp" / "ft")
    assert sorted(log) == [1, 2, 3, 4]  # a fresh step count
    assert log[1]["lr"] == pytest.approx(1e-3 / 3)  # a fresh warmup (step 0 of 2 warmup steps)
    state = load_training_state(list_checkpoints(tmp_path / "exp" / "ft")[-1])
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {4}  # fresh AdamW
    # the source experiment is untouched
    assert list_checkpoints(tmp_path / "exp" / "src")[-1] == src_ckpt


def write_weights_the_old_way(ckpt: Path, model: torch.nn.Module) -> None:
    """model.safetensors as checkpoints were written before safetensors.torch.save_model was
    used (the former utils.checkpoint.unique_state_dict + save_file): each tied tensor under its
    first state-dict name, no metadata naming the dropped one."""
    from safetensors.torch import save_file

    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            state[name] = tensor.detach().contiguous().clone()
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})


def test_checkpoint_written_the_old_way_loads_and_resumes(tmp_path, processed):
    cfg = config(tmp_path, processed, max_steps=2)
    check_ok(run_training(args(cfg, "old")))
    ckpt = list_checkpoints(tmp_path / "exp" / "old")[-1]
    model = VALLE(load_config(cfg).model)
    model.load_amphion_state_dict(last_weights(tmp_path / "exp" / "old"))
    write_weights_the_old_way(ckpt, model)
    loaded, _ = trainer.build_model(load_config(cfg), 1, ckpt)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    longer = config(tmp_path, processed, max_steps=3)
    check_ok(run_training(args(longer, "old", "--resume", "true")))
    assert read_meta(list_checkpoints(tmp_path / "exp" / "old")[-1])["step"] == 3
    assert sorted(read_log(tmp_path / "exp" / "old")) == [1, 2, 3]


def test_finetune_from_amphion_release_and_changed_config_refused(tmp_path, processed):
    cfg = config(tmp_path, processed)
    model_cfg = load_config(cfg).model
    torch.manual_seed(3)
    release_model = VALLE(model_cfg)
    release = tmp_path / "valle_libritts"
    ckpt = release / "checkpoint" / "epoch-0001_step-0000100_loss-3.000000"
    ckpt.mkdir(parents=True)
    torch.save(release_model.state_dict(), ckpt / "pytorch_model.bin")  # both tied names
    amphion_model = {k: v for k, v in vars(model_cfg).items() if k not in ("dropout",)}
    (release / "args.json").write_text(json.dumps({"model": amphion_model}))
    model, _ = trainer.build_model(load_config(cfg), 1, ckpt)
    for name, tensor in release_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name

    wider = config(tmp_path, processed, model={"decoder_dim": 64, "num_decoder_layers": 2})
    with pytest.raises(trainer.TrainingError) as err:
        trainer.build_model(load_config(wider), 1, ckpt)
    assert "model.decoder_dim: 32 (checkpoint) -> 64 (config)" in str(err.value)
    assert "model.num_decoder_layers: 1 (checkpoint) -> 2 (config)" in str(err.value)


def test_nar_stage_starts_from_ar_run_and_keeps_ar_weights(tmp_path, processed):
    cfg = config(tmp_path, processed, max_steps=3)
    check_ok(run_training(args(cfg, "ar", "--train_stage", "1")))
    ar = last_weights(tmp_path / "exp" / "ar")
    torch.manual_seed(load_config(cfg).train.random_seed)  # the initial weights of both runs
    init = VALLE(load_config(cfg).model).state_dict()
    assert any(not torch.equal(ar[k], init[k]) for k in ar if k.startswith("ar_"))
    assert all(torch.equal(ar[k], init[k]) for k in ar if k.startswith("nar_"))

    check_ok(run_training(args(cfg, "nar", "--model_train_stage", "2", "--ar_model_ckpt_dir",
                               str(tmp_path / "exp" / "ar"))))  # fmt: skip
    nar_exp = tmp_path / "exp" / "nar"
    nar = last_weights(nar_exp)
    assert nar.keys() == ar.keys()
    assert all(torch.equal(nar[k], ar[k]) for k in ar if k.startswith("ar_"))
    assert any(not torch.equal(nar[k], ar[k]) for k in ar if k.startswith("nar_"))
    assert read_meta(list_checkpoints(nar_exp)[-1])["train_stage"] == 2
    assert "nar_loss" in read_log(nar_exp)[1] and "ar_loss" not in read_log(nar_exp)[1]
    assert list((nar_exp / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((nar_exp / "config.json").read_text())["train"]["train_stage"] == 2
    assert (nar_exp / "symbols.dict").read_text() == (processed / "symbols.dict").read_text()

    # resuming the NAR run as an AR run is refused
    with pytest.raises(trainer.TrainingError, match="trained with train_stage 2"):
        trainer.main(args(cfg, "nar", "--train_stage", "1", "--resume", "true"))


def test_nonfinite_loss_skipped_then_stops_naming_cuts(tmp_path, processed, monkeypatch, caplog):
    forward = VALLE.forward
    calls = {"n": 0}

    def nan_on_second_batch(self, *a, **k):
        loss, metrics = forward(self, *a, **k)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), metrics

    monkeypatch.setattr(VALLE, "forward", nan_on_second_batch)
    cfg = config(tmp_path, processed, max_steps=3, max_nonfinite_steps=2)
    assert trainer.main(args(cfg, "nan1")) == 0
    log = [json.loads(x) for x in (tmp_path / "exp/nan1/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 2, 3]  # step 2 was skipped once, then taken
    assert log[1]["skipped"] is True and len(log[1]["cut_ids"]) == 3
    assert "non-finite loss or gradient at step 2" in caplog.text

    monkeypatch.setattr(VALLE, "forward", lambda self, *a, **k: (torch.tensor(float("inf")), {}))
    with pytest.raises(trainer.TrainingError) as err:
        trainer.main(args(cfg, "nan2"))
    assert "2 optimizer steps in a row had a non-finite loss" in str(err.value)
    assert "train_" in str(err.value)  # names the batch's cut ids


def test_error_messages(tmp_path, processed):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = write_config(tmp_path / "missing.json", empty, tmp_path / "exp")
    # through the real command line: exit status 1 and the message, no traceback
    proc = subprocess.run(
        [sys.executable, "bins/tts/train.py", *args(cfg, "m")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "stage-1 output missing" in proc.stderr and "--stage 1" in proc.stderr
    assert "Traceback" not in proc.stderr

    cfg = config(tmp_path, processed, max_steps=2)
    assert trainer.main(args(cfg, "e")) == 0
    log = (tmp_path / "exp" / "e" / "train_log.jsonl").read_text()
    assert trainer.main(args(cfg, "e")) == 0  # finished: rerunning the stage is a no-op
    assert (tmp_path / "exp" / "e" / "train_log.jsonl").read_text() == log
    longer = config(tmp_path, processed, max_steps=4)
    with pytest.raises(trainer.TrainingError, match="already holds checkpoints"):
        trainer.main(args(longer, "e"))  # unfinished: never overwritten without --resume
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        trainer.main(args(cfg, "never", "--resume", "true"))
    changed = config(tmp_path, processed, model={"nhead": 4, "decoder_dim": 64}, max_steps=4)
    with pytest.raises(trainer.TrainingError) as err:
        trainer.main(args(changed, "e", "--resume", "true"))
    assert "model.decoder_dim: 32 (checkpoint) -> 64 (config)" in str(err.value)
    assert "model.nhead: 2 (checkpoint) -> 4 (config)" in str(err.value)

    other = make_stage1(tmp_path / "other", codec_name="another_codec")
    moved = write_config(tmp_path / "other.json", other, tmp_path / "exp", train={"max_steps": 4})
    with pytest.raises(DataError, match=r"another codec \(codec/codec.json\)"):
        trainer.main(args(moved, "e", "--resume", "true"))


def test_partial_write_never_listed(tmp_path):
    # the layout the trainer relies on: only complete folders count as checkpoints
    save_checkpoint(tmp_path, "epoch-0000_step-0000001_loss-1.000000", {"w": torch.ones(1)}, {}, {})
    (tmp_path / "checkpoint" / ".tmp-epoch-0000_step-0000002_loss-1.000000-0").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-0000_step-0000001_loss-1.000000"]


def run_ddp(train_args: list[str], *hooks: str) -> subprocess.CompletedProcess:
    """Two CPU processes (gloo) under torch.distributed.run, as accelerate launch would start."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "tests/train_fixtures.py", *hooks, *train_args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_exact_resume_with_two_processes(tmp_path, processed):
    # DDP on CPU: per-rank data shards, dropout streams and NAR generators, RNG states gathered
    # from both ranks, a stop asked of one rank taken by both at the same step
    cfg = config(tmp_path, processed, max_steps=6)
    masks = tmp_path / "dropout"
    check_ok(run_ddp(args(cfg, "full", "--train_stage", "0"), "--record_dropout", str(masks)))
    rank0, rank1 = (torch.load(masks / f"rank{r}.pt") for r in (0, 1))
    assert rank0.any() and not torch.equal(rank0, rank1)  # each rank draws its own masks
    stopped = run_ddp(args(cfg, "part", "--train_stage", "0"), "--sigterm_at_step", "3")
    check_ok(stopped)
    assert "Training stopped by SIGTERM at step 3" in stopped.stdout
    assert len(load_training_state(list_checkpoints(tmp_path / "exp" / "part")[-1])["rng"]) == 2
    check_ok(run_ddp(args(cfg, "part", "--train_stage", "0", "--resume", "true")))
    full, part = read_log(tmp_path / "exp" / "full"), read_log(tmp_path / "exp" / "part")
    assert [full[s]["loss"] for s in range(4, 7)] == [part[s]["loss"] for s in range(4, 7)]
    a, b = last_weights(tmp_path / "exp" / "full"), last_weights(tmp_path / "exp" / "part")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sigterm_to_the_process_group_with_dataloader_workers(tmp_path, processed):
    # a batch scheduler's SIGTERM (or a terminal's Ctrl-C) reaches the dataloader workers too:
    # they must leave it to the trainer instead of dying (torch then aborts the main process)
    cfg = config(tmp_path, processed, max_steps=100000, num_workers=1)
    proc = subprocess.Popen(
        [sys.executable, "bins/tts/train.py", *args(cfg, "int")], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    log = tmp_path / "exp" / "int" / "train_log.jsonl"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (not log.exists() or len(log.read_text().split()) < 3):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "Training stopped by SIGTERM" in out
    last = max(read_log(tmp_path / "exp" / "int"))
    assert read_meta(list_checkpoints(tmp_path / "exp" / "int")[-1])["step"] == last
