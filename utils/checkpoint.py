"""Checkpoint files: safe tensor loading, atomic directory writes, checkpoint discovery.

Layout of one of our checkpoints (the folder name is the one released Amphion checkpoints use):

    <exp>/checkpoint/epoch-0003_step-0001200_loss-3.141593/
        model.safetensors      full VALL-E state dict (Amphion parameter names; tied pairs once)
        meta.json              {"format": "codectts-valle-1", "model": {...ModelConfig...},
                                "epoch", "step", "loss", "valid_loss", "train_stage"}
        training_state.pt      optimizer / scheduler / sampler / RNG / counters (weights_only-safe)

A folder is written under a temporary name (`.tmp-...`) and renamed when complete, so a kill at any
moment leaves only complete checkpoints under their final names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

CHECKPOINT_FORMAT = "codectts-valle-1"
CHECKPOINT_RE = re.compile(r"^epoch-(\d+)_step-(\d+)_loss-([0-9.]+|nan|inf)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unsafe; the message says which file and what to do."""


def checkpoint_name(epoch: int, step: int, loss: float) -> str:
    return f"epoch-{epoch:04d}_step-{step:07d}_loss-{loss:.6f}"


def load_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a torch file, never executing pickled code.

    torch files are read with `weights_only=True`: a file that needs arbitrary objects (a pickle
    that could run code) is refused with a message instead of being unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or others) for unsafe content
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor file and loading it would need "
            f"to execute pickled code ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Only load weights from sources you trust; convert them to .safetensors first."
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return obj


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only if the block completes.

    On any exception (or a kill) the final name is untouched: either the complete new folder or
    nothing is there. An existing `final` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():  # flush file contents before the rename makes them visible
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def list_checkpoints(exp_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of an experiment (or of a `checkpoint/` folder), oldest first."""
    root = Path(exp_dir)
    if (root / "checkpoint").is_dir():
        root = root / "checkpoint"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(2)), int(m.group(1)), child))
    return [p for _, _, p in sorted(found)]


def read_meta(ckpt_dir: str | os.PathLike) -> dict:
    path = Path(ckpt_dir) / "meta.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no meta.json (not a codectts checkpoint folder)")
    return json.loads(path.read_text(encoding="utf-8"))
