"""utils/launch.sh: --gpu read once (CUDA_VISIBLE_DEVICES); one process, or `accelerate launch`;
the node options checked; a process an outer launcher started (torchrun / accelerate launch /
srun: utils/distributed.py) runs as the rank it was given, with no second launcher. Training on
two nodes: tests/test_multinode.py.

(Moved from test_train_recipe.py's launch_command/free_port test when the trainer stopped
re-launching itself: the recipe calls `accelerate launch` now.)
"""

from __future__ import annotations

import socket
import subprocess

import pytest
import torch

from utils.config import REPO_ROOT
from utils.distributed import World, adopt_launcher_env, detect_world, first_host

# what a training process sees of its launch: rank, world size, rendezvous port, arguments
PROBE = (
    "import os, sys; print('PROBE', os.environ.get('RANK'), os.environ.get('WORLD_SIZE'),"
    " os.environ.get('MASTER_PORT'), os.environ.get('CUDA_VISIBLE_DEVICES'), *sys.argv[1:])"
)


def bash(script: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    """Run `script` after sourcing env.sh and the two recipe libraries, like run.sh does."""
    prelude = (
        f'set -euo pipefail; . "{REPO_ROOT}/env.sh"; . "{REPO_ROOT}/utils/parse_options.sh"; '
        f'. "{REPO_ROOT}/utils/launch.sh"; '
    )
    (tmp_path / "probe.py").write_text(PROBE)
    return subprocess.run(
        ["bash", "-c", prelude + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path), **env},
    )


def probes(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return sorted(line.split()[1:] for line in result.stdout.splitlines() if "PROBE" in line)


def test_two_processes_go_through_accelerate_launch(tmp_path):
    result = bash("launch_python 2 1 0 '' '' probe.py --config c --exp_name e", tmp_path)
    got = probes(result)
    assert [p[:2] for p in got] == [["0", "2"], ["1", "2"]]  # two ranks of one world of 2
    assert got[0][2] == got[1][2] and got[0][2] != "29500"  # one free port, not the default
    assert all(p[4:] == ["--config", "c", "--exp_name", "e"] for p in got)  # argv untouched
    assert "launching 2 training processes: accelerate launch --multi_gpu" in result.stdout


def test_one_gpu_or_the_cpu_is_one_plain_process(tmp_path):
    for n in (0, 1):
        got = probes(bash(f"launch_python '{n or ''}' 1 0 '' '' probe.py --x 1", tmp_path))
        assert got == [["None", "None", "None", "None", "--x", "1"]]  # no launcher in between
    # the one-node form of recipes without node options (launch_python N SCRIPT ...)
    assert probes(bash("launch_python 0 probe.py --x 1", tmp_path)) == got
    broken = bash("launch_python '' probe.py", tmp_path)  # e.g. torch failed to count the GPUs
    assert broken.returncode != 0 and "process count '' is not a number" in broken.stderr


def test_gpu_ids_become_the_visible_devices_once(tmp_path):
    result = bash("use_gpus ' 0, 1'; python probe.py", tmp_path)
    assert probes(result)[0][3] == "0,1"  # the child processes see exactly --gpu's devices
    if not torch.cuda.is_available():  # no CUDA: the CPU, not a failing launch
        assert "WARNING: --gpu 0,1 given but no CUDA GPU is visible" in result.stdout
    empty = bash("use_gpus ''; python probe.py", tmp_path)
    assert probes(empty)[0][3] == "None"  # no --gpu: every GPU stays visible


def test_free_port_is_free(tmp_path):
    port = int(bash("free_port", tmp_path).stdout.split()[-1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # it really is free


@pytest.mark.parametrize(
    "options, error",
    [
        ("0 1 0 '' ''", "--nproc_per_node must be a whole number >= 1 (got '0'"),
        ("x 1 0 '' ''", "--nproc_per_node must be a whole number >= 1 (got 'x'"),
        ("1 0 0 '' ''", "--num_nodes must be a whole number >= 1 (got '0')"),
        ("1 2 -1 h ''", "--node_rank must be a whole number (got '-1')"),
        ("1 2 2 h ''", "--node_rank 2 is not below --num_nodes 2 (node ranks are 0 .. 1)"),
        ("1 2 1 '' ''", "--num_nodes 2 needs --master_addr: the host name or IP of node 0"),
        ("1 2 1 h 70000", "--master_port must be a TCP port number 1-65535 (got '70000')"),
        ("1 2 1 h 29x", "--master_port must be a TCP port number 1-65535 (got '29x')"),
    ],
)
def test_node_options_are_checked(tmp_path, options, error):
    result = bash(f"launch_python {options} probe.py", tmp_path)
    assert result.returncode != 0 and error in result.stderr, result.stderr
    assert "PROBE" not in result.stdout  # nothing started


TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "29555"}
SRUN = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "777"}  # fmt: skip


def test_a_process_torchrun_started_is_not_launched_again(tmp_path):
    result = bash("launch_python '' 1 0 '' '' probe.py --x 1", tmp_path, **TORCHRUN)
    assert probes(result) == [["1", "2", "29555", "None", "--x", "1"]]  # one process: rank 1 of 2
    assert "torchrun started this process as rank 1 of 2: no second launcher" in result.stdout
    clash = bash("launch_python 8 2 1 h 29500 probe.py", tmp_path, **TORCHRUN)
    assert clash.returncode != 0 and "PROBE" not in clash.stdout
    assert "already rank 1 of 2 started by torchrun, which owns the processes" in clash.stderr


def test_srun_tasks_run_as_the_ranks_and_a_batch_shell_launches(tmp_path):
    result = bash("launch_python '' 1 0 node0 29600 probe.py", tmp_path, **SRUN)
    assert probes(result) == [["None", "None", "29600", "None"]]  # the trainer maps SLURM_*
    assert "srun started this process as rank 3 of 4: no second launcher" in result.stdout
    # srun with one task per node: run.sh's node options start this node's processes
    per_node = bash("launch_python 1 1 0 '' '' probe.py", tmp_path, **SRUN)
    assert "srun started one task per node: --num_nodes 1 --node_rank 0" in per_node.stdout
    assert probes(per_node) == [["None", "None", "None", "None"]]  # its own one process
    # the batch script's own shell (no job step) is no rank: one process per GPU as usual
    batch = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"}
    assert probes(bash("launch_python '' 1 0 '' '' probe.py", tmp_path, **batch)) == [
        ["None", "None", "None", "None"]
    ]


def test_launcher_environments_map_to_torch_distributed():
    torchrun = detect_world(dict(TORCHRUN, GROUP_RANK="1"))
    assert torchrun == World("torchrun", 2, 1, 1, 1)
    accelerate = detect_world(dict(TORCHRUN, ACCELERATE_MIXED_PRECISION="no"))
    assert accelerate.launcher == "accelerate launch" and accelerate.rank == 1
    env = dict(SRUN)
    assert adopt_launcher_env(env) == World("srun", 4, 3, 1, 1)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("gpu07", str(15000 + 777))
    given = dict(SRUN, MASTER_ADDR="head", MASTER_PORT="29400", RANK="5", WORLD_SIZE="8")
    assert adopt_launcher_env(given).launcher == "torchrun"  # torch's names win over Slurm's
    assert given["MASTER_ADDR"] == "head"
    assert first_host("cn-a12,cn-b[3-4]") == "cn-a12" and first_host("n[0010,0012]") == "n0010"
    single = {k: v for k, v in SRUN.items()} | {"SLURM_NTASKS": "1"}
    assert adopt_launcher_env(single).launcher == "none" and "RANK" not in single
    with pytest.raises(ValueError, match="SLURM_PROCID='x' is not a whole number"):
        detect_world(dict(SRUN, SLURM_PROCID="x"))
