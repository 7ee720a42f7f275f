"""Which launcher started this process, and the torch.distributed world it was given.

Training runs one process per GPU. Either run.sh starts them (utils/launch.sh: `accelerate
launch`, one node or several), or an outer launcher already did and the process is one rank:

- torchrun / `accelerate launch` / `python -m torch.distributed.run`: RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR and MASTER_PORT are set (torch.distributed's env:// names);
- Slurm's `srun` with one task per GPU: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID
  (in a job step, SLURM_STEP_ID). `adopt_launcher_env` maps them onto torch.distributed's names
  (accelerate reads only those); the rendezvous host is MASTER_ADDR if set, else the first host
  of the step's node list, and the port MASTER_PORT if set, else one derived from the job id
  (the same on every node, different for two jobs sharing a node).

A batch script's own shell (sbatch, no srun) has no SLURM_STEP_ID, and a step of a single task
has nothing to share: both count as "not launched", so run.sh starts the processes itself.

`python -m utils.distributed` prints "WORLD_SIZE RANK LAUNCHER" (LAUNCHER "none" when the process
was not launched as a rank) for utils/launch.sh, so that bash and Python apply the same rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    launcher: str  # "torchrun", "accelerate launch", "srun" or "none"
    world_size: int
    rank: int  # global rank: 0 writes checkpoints and logs
    local_rank: int  # rank on this node: its GPU
    node_rank: int

    def describe(self) -> str:
        if self.launcher == "none":
            return "no launcher (one process)"
        return (
            f"launched by {self.launcher}: world of {self.world_size} processes, this is rank "
            f"{self.rank} (node {self.node_rank}, local rank {self.local_rank})"
        )


def _int(env: MutableMapping[str, str], *names: str, default: int = 0) -> int:
    for name in names:
        if env.get(name, "").strip():
            value = env[name].strip()
            if not value.isdigit():
                raise ValueError(f"environment variable {name}={value!r} is not a whole number")
            return int(value)
    return default


def _srun_step(env: MutableMapping[str, str]) -> bool:
    """A task of an `srun` job step with several tasks (each task = one training process)."""
    needed = ("SLURM_STEP_ID", "SLURM_PROCID", "SLURM_NTASKS")
    return all(env.get(n, "").strip() for n in needed) and _int(env, "SLURM_NTASKS") > 1


def detect_world(env: MutableMapping[str, str] | None = None) -> World:
    """The world this process belongs to, from its environment (torch's names win over Slurm's)."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE", "").strip() and env.get("RANK", "").strip():
        if env.get("ACCELERATE_MIXED_PRECISION") or env.get("ACCELERATE_DYNAMO_BACKEND"):
            launcher = "accelerate launch"
        else:
            launcher = "torchrun"
        return World(launcher, _int(env, "WORLD_SIZE"), _int(env, "RANK"),
                     _int(env, "LOCAL_RANK"), _int(env, "GROUP_RANK", "NODE_RANK"))  # fmt: skip
    if _srun_step(env):
        return World("srun", _int(env, "SLURM_NTASKS"), _int(env, "SLURM_PROCID"),
                     _int(env, "SLURM_LOCALID"), _int(env, "SLURM_NODEID"))  # fmt: skip
    return World("none", 1, 0, 0, 0)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: "gpu[07-08,11],cpu1" -> "gpu07"."""
    match = re.match(r"([^,\[]+)(?:\[([^\]\-,]+))?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the Slurm node list {nodelist!r}: set MASTER_ADDR")
    return match[1] + (match[2] or "")


def adopt_launcher_env(env: MutableMapping[str, str] | None = None) -> World:
    """Detect the world; under srun, also set RANK, WORLD_SIZE, LOCAL_RANK (+ LOCAL_WORLD_SIZE
    when Slurm gives it), MASTER_ADDR and MASTER_PORT, so that accelerate starts that world."""
    env = os.environ if env is None else env
    world = detect_world(env)
    if world.launcher != "srun":
        return world
    env["RANK"], env["WORLD_SIZE"] = str(world.rank), str(world.world_size)
    env["LOCAL_RANK"] = str(world.local_rank)
    if env.get("SLURM_NTASKS_PER_NODE", "").isdigit():
        env["LOCAL_WORLD_SIZE"] = env["SLURM_NTASKS_PER_NODE"]
    if not env.get("MASTER_ADDR"):
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        env["MASTER_ADDR"] = first_host(nodes)
    if not env.get("MASTER_PORT"):
        env["MASTER_PORT"] = str(15000 + _int(env, "SLURM_JOB_ID") % 20000)
    return world


if __name__ == "__main__":
    w = detect_world()
    print(w.world_size, w.rank, w.launcher)
