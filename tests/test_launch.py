"""utils/launch.sh: --gpu read once (CUDA_VISIBLE_DEVICES); one process, or `accelerate launch`.

(Moved from test_train_recipe.py's launch_command/free_port test when the trainer stopped
re-launching itself: the recipe calls `accelerate launch` now.)
"""

from __future__ import annotations

import socket
import subprocess

import torch

from utils.config import REPO_ROOT

# what a training process sees of its launch: rank, world size, rendezvous port, arguments
PROBE = (
    "import os, sys; print('PROBE', os.environ.get('RANK'), os.environ.get('WORLD_SIZE'),"
    " os.environ.get('MASTER_PORT'), os.environ.get('CUDA_VISIBLE_DEVICES'), *sys.argv[1:])"
)


def bash(script: str, tmp_path) -> subprocess.CompletedProcess:
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
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
    )


def probes(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return sorted(line.split()[1:] for line in result.stdout.splitlines() if "PROBE" in line)


def test_two_processes_go_through_accelerate_launch(tmp_path):
    result = bash("launch_python 2 probe.py --config c --exp_name e", tmp_path)
    got = probes(result)
    assert [p[:2] for p in got] == [["0", "2"], ["1", "2"]]  # two ranks of one world of 2
    assert got[0][2] == got[1][2] and got[0][2] != "29500"  # one free port, not the default
    assert all(p[4:] == ["--config", "c", "--exp_name", "e"] for p in got)  # argv untouched
    assert "launching 2 training processes: accelerate launch --multi_gpu" in result.stdout


def test_one_gpu_or_the_cpu_is_one_plain_process(tmp_path):
    for n in (0, 1):
        got = probes(bash(f"launch_python {n} probe.py --x 1", tmp_path))
        assert got == [["None", "None", "None", "None", "--x", "1"]]  # no launcher in between
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
