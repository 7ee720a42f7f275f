"""Training on several "nodes" of this machine (issue 12): two node launchers on 127.0.0.1 (gloo,
CPU, one process each) train bit for bit like one node with two processes, stop together on a
SIGTERM to every process of both nodes (as Slurm's scancel does) and resume exactly;
srun-style tasks are the ranks; a signal to one rank stops all; a resume on another number of
processes is refused.

Every run is the tiny model of tests/train_fixtures.py (train_stage 0 with dropout: dropout,
NAR stages and prompt lengths draw per-rank random numbers), 6 steps."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from train_fixtures import REPO, last_weights, make_stage1, write_config
from train_fixtures import train_args as args

from models.base.train_state import TrainingError
from models.tts.valle import trainer
from utils.checkpoint import list_checkpoints, load_training_state, read_meta

PRELUDE = (
    f'set -euo pipefail; . "{REPO}/env.sh"; . "{REPO}/utils/parse_options.sh"; '
    f'. "{REPO}/utils/launch.sh"; launch_python "$@"'
)
RUN_SH = str(REPO / "egs" / "tts" / "VALLE" / "run.sh")
TRAIN = ("--train_stage", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(log: Path, cmd: list[str], **env: str) -> subprocess.Popen:
    """A node (or a task): its own process group, like a machine or a Slurm task."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(log.parent), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", **env}  # fmt: skip
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)  # fmt: skip


def node(log: Path, nproc: int, nodes: int, rank: int, port: int, *fixture_args: str):
    """utils/launch.sh's launch_python on one node, training with tests/train_fixtures.py."""
    addr = "127.0.0.1" if nodes > 1 else ""
    cmd = ["bash", "-c", PRELUDE, "launch", str(nproc), str(nodes), str(rank), addr, str(port),
           "tests/train_fixtures.py", *fixture_args]  # fmt: skip
    return start(log, cmd)


def run_sh(log: Path, cfg: Path, name: str, *options: str, **env: str) -> subprocess.Popen:
    """egs/tts/VALLE/run.sh stage 2 (train_stage 0) as a user runs it on a node."""
    cmd = ["bash", RUN_SH, "--config", str(cfg), "--stage", "2", "--name", name,
           "--model_train_stage", "0", *options]  # fmt: skip
    return start(log, cmd, **env)


def finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> list[str]:
    """Wait for every node; their outputs (killing all of them if one hangs)."""
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(max(1.0, deadline - time.time()))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    return [log.read_text() for log in logs]


def check_ok(procs, outputs) -> None:
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]


def wait_for(logs: list[Path], marker: str, procs, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not all(marker in log.read_text() for log in logs):
        assert time.time() < deadline, [log.read_text()[-2000:] for log in logs]
        assert all(p.poll() is None for p in procs), [log.read_text()[-3000:] for log in logs]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(root, config, the experiment of one node with two processes trained to step 6)."""
    root = tmp_path_factory.mktemp("multinode")
    data = make_stage1(root / "data", n_train=8, n_valid=2)
    cfg = write_config(root / "c.json", data, root / "exp", train={"max_steps": 6})
    log = root / "one_node.log"
    proc = node(log, 2, 1, 0, free_port(), *args(cfg, "one_node", *TRAIN))
    check_ok([proc], finish([proc], [log]))
    assert "launching 2 training processes: accelerate launch" in log.read_text()
    return root, cfg, root / "exp" / "one_node"


def assert_same_training(a: Path, b: Path) -> None:
    """Every train_log.jsonl line (one per step: only rank 0 writes) and every weight."""
    assert (a / "train_log.jsonl").read_text() == (b / "train_log.jsonl").read_text()
    wa, wb = last_weights(a), last_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] == wb[name]).all(), name


def test_two_nodes_train_like_one_and_resume_exactly_after_sigterm_to_both(world):
    root, cfg, one_node = world
    lines = (one_node / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len(list((one_node / "tensorboard").glob("events.*"))) == 1
    port = free_port()
    logs = [root / f"part_node{r}.log" for r in (0, 1)]
    hooks = ("--wait_for_signal_at_step", "3")
    procs = [node(logs[r], 1, 2, r, port, *hooks, *args(cfg, "part", *TRAIN)) for r in (0, 1)]
    wait_for(logs, "WAITING FOR A SIGNAL AT STEP 3", procs)
    # Slurm's scancel signals every process of the job (its cgroup): each training process
    # directly, and each node's launcher, which forwards it to its processes once more
    for log in logs:
        os.kill(int(re.search(r"WAITING .* PID (\d+)", log.read_text())[1]), signal.SIGTERM)
    time.sleep(0.5)
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    outputs = finish(procs, logs)
    assert "launching 1 training processes on node 1 of 2 (2 in all)" in outputs[1]
    assert "processes: launched by accelerate launch: world of 2 processes" in outputs[0]
    assert "KeyboardInterrupt" not in outputs[0] + outputs[1]  # the launcher's repeat is no abort
    assert "Training stopped by SIGTERM at step 3" in outputs[0], outputs[0][-4000:]
    assert "rank 1 stopped with the others at step 3 (SIGTERM)" in outputs[1]
    for out in outputs:  # each node's shell waited for its processes, then stopped
        assert "SIGTERM received: training ended (status" in out
    part = root / "exp" / "part"
    ckpt = list_checkpoints(part)[-1]
    assert read_meta(ckpt)["step"] == 3 and read_meta(ckpt)["world_size"] == 2
    assert len(load_training_state(ckpt)["rng"]) == 2

    port = free_port()  # resume through run.sh, one per node
    logs = [root / f"resume_node{r}.log" for r in (0, 1)]
    nodes = ("--num_nodes", "2", "--master_addr", "127.0.0.1", "--master_port", str(port))
    procs = [
        run_sh(logs[r], cfg, "part", "--resume", "true", *nodes, "--node_rank", str(r))
        for r in (0, 1)
    ]
    check_ok(procs, finish(procs, logs))
    assert_same_training(one_node, part)


def test_srun_tasks_are_the_ranks(world):
    root, cfg, one_node = world
    port = free_port()
    logs = [root / f"srun_task{r}.log" for r in (0, 1)]
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2",
             "SLURM_JOB_NODELIST": "localhost"}  # fmt: skip
    procs = [
        run_sh(logs[r], cfg, "srun", "--stop_stage", "2", "--master_port", str(port),
               SLURM_PROCID=str(r), SLURM_LOCALID=str(r), SLURM_NODEID=str(r), **slurm)
        for r in (0, 1)
    ]  # fmt: skip
    outputs = finish(procs, logs)
    check_ok(procs, outputs)
    for r in (0, 1):
        assert f"srun started this process as rank {r} of 2: no second launcher" in outputs[r]
    assert "processes: launched by srun: world of 2 processes, this is rank 0" in outputs[0]
    assert_same_training(one_node, root / "exp" / "srun")


def test_signal_to_one_rank_stops_all_and_another_world_size_is_refused(world):
    root, cfg, _ = world
    log = root / "one_rank.log"
    hooks = ("--sigterm_at_step", "2", "--sigterm_rank", "1")
    proc = node(log, 2, 1, 0, free_port(), *hooks, *args(cfg, "one_rank", *TRAIN))
    out = finish([proc], [log])[0]
    check_ok([proc], [out])
    assert "Training stopped by SIGTERM to rank 1 at step 2" in out
    exp = root / "exp" / "one_rank"
    ckpt = list_checkpoints(exp)[-1]
    assert read_meta(ckpt)["step"] == 2 and load_training_state(ckpt)["world_size"] == 2
    assert len((exp / "train_log.jsonl").read_text().splitlines()) == 2

    with pytest.raises(TrainingError) as err:  # this process alone: a world of 1
        trainer.main(args(cfg, "one_rank", *TRAIN, "--resume", "true"))
    message = str(err.value)
    assert "written by 2 training process(es), this run has 1" in message
    assert "--num_nodes N --nproc_per_node K with N x K = 2" in message
    assert f"--resume_type finetune --resume_from_ckpt_path {ckpt}" in message
    assert read_meta(list_checkpoints(exp)[-1])["step"] == 2  # nothing trained or written
    # the way on it names: its weights in a new experiment of another world size
    assert trainer.main(args(cfg, "one_rank_ft", *TRAIN, "--resume", "true", "--resume_type",
                             "finetune", "--resume_from_ckpt_path", str(ckpt))) == 0  # fmt: skip
    assert read_meta(list_checkpoints(root / "exp" / "one_rank_ft")[-1])["world_size"] == 1


def test_a_forwarded_repeat_is_the_same_stop_and_a_late_one_aborts(monkeypatch):
    from types import SimpleNamespace

    from models.base import train_loop

    run = SimpleNamespace(stop_signal="")
    with train_loop.stop_on_signals(run):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C to the process group ...
        os.kill(os.getpid(), signal.SIGTERM)  # ... and torchrun's forward of it, at once
        assert run.stop_signal == "SIGINT"
        monkeypatch.setattr(train_loop, "REPEAT_GRACE_S", 0.0)  # as if 5 s had passed
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
