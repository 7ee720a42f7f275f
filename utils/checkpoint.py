"""Checkpoint files: safe tensor loading, atomic directory writes, checkpoint discovery.

Layout of one of our checkpoints (the folder name is the one released Amphion checkpoints use):

    <exp>/checkpoint/epoch-0003_step-0001200_loss-3.141593/
        model.safetensors      full VALL-E state dict (Amphion parameter names; tied pairs once)
        meta.json              {"format": "codectts-valle-1", "model": {...ModelConfig...},
                                "epoch", "step", "loss", "valid_loss", "train_stage",
                                "data_fingerprint": {"codec": sha256, "symbols": sha256}}
        training_state.pt      optimizer / scheduler / sampler / RNG / counters (weights_only-safe):
                               {"optimizer", "scheduler", "step", "epoch", "batches_done",
                                "sampler", "rng": {"python", "numpy", "torch", "cuda",
                                "nar_stage", "nar_prefix"}, "counters": {...}}
    <exp>/best                 text file: the folder name of the best checkpoint by valid_loss

A folder is written under a temporary name (`.tmp-...`), fsynced, and renamed when complete, so a
kill at any moment leaves only complete checkpoints under their final names (`atomic_directory`
says how an existing folder is replaced without a moment where no complete copy exists).
`remove_incomplete` repairs what a kill left. `save_checkpoint` writes one, `prune_checkpoints`
keeps the newest `keep_last` plus the one `best` names.

`resolve_checkpoint` is the one place that turns a user's path into a checkpoint, for training
(resume, finetune, the AR run of a NAR training) and inference alike: our experiment folders
(newest or best checkpoint), one of our checkpoint folders, and released Amphion folders
(`<release>/args.json` + `<release>/checkpoint/<name>/pytorch_model.bin` or `model.safetensors`),
with the model section that describes the weights.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import pickle
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.config import read_json5
from utils.fileio import atomic_write_text, fsync_dir, fsync_file

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "codectts-valle-1"
CHECKPOINT_RE = re.compile(r"^epoch-(\d+)_step-(\d+)_loss-([0-9.]+|nan|inf)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unsafe; the message says which file and what to do."""


def checkpoint_name(epoch: int, step: int, loss: float) -> str:
    return f"epoch-{epoch:04d}_step-{step:07d}_loss-{loss:.6f}"


def _corrupt(path: Path, error: Exception) -> CheckpointError:
    first_line = (str(error).splitlines() or [""])[0][:200]
    return CheckpointError(
        f"{path} is incomplete or corrupt ({type(error).__name__}: {first_line}); it was "
        "probably cut short by an interrupted download, copy or save. Download or copy it "
        "again, or pick another checkpoint (run.sh --infer_checkpoint, or --infer_expt_dir / "
        "--resume_from_ckpt_path naming another checkpoint folder)."
    )


def _torch_load(path: Path) -> object:
    """torch.load(weights_only=True); CheckpointError telling an unsafe file from a broken one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if not (isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e)):
            raise _corrupt(path, e) from None  # truncated zip / pickle, bad bytes, ...
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor file and loading it would need "
            f"to execute pickled code ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Only load weights from sources you trust; convert them to .safetensors first."
        ) from None


def load_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a torch file, never executing pickled code.

    torch files are read with `weights_only=True`: a file that needs arbitrary objects (a pickle
    that could run code) is refused with a message instead of being unpickled. A truncated or
    damaged file is a CheckpointError naming it and saying what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise _corrupt(path, e) from None
    obj = _torch_load(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return obj


_OLD_RE = re.compile(r"^\.old-(.+)-[0-9a-f]{8}$")  # the previous copy during a replace


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no such libc symbol (glibc < 2.28, musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    path, fd = ctypes.c_char_p, ctypes.c_int
    renameat2.argtypes = [fd, path, fd, path, ctypes.c_uint]
    # Non-zero, e.g. EINVAL where the file system cannot exchange: the caller renames instead.
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _commit(tmp: Path, final: Path) -> None:
    """Make the complete folder `tmp` the folder `final`.

    A complete copy is findable at every instant. New `final`: one rename. Replacing `final`:
    an atomic exchange where the OS has one (the old copy then sits under the `.tmp-` name and is
    deleted); otherwise `final` -> `.old-<name>-<id>`, `tmp` -> `final`, delete the `.old-`
    folder, and a kill between the two renames leaves the complete old copy as `.old-<name>-*`
    with no `<name>`, which `remove_incomplete` renames back. No cleanup runs here on a failure:
    whatever a failure or a kill leaves, `remove_incomplete` repairs.
    """
    for child in tmp.rglob("*"):  # contents on disk before a rename makes them visible
        if child.is_file():
            fsync_file(child)
    fsync_dir(tmp)
    if not final.exists():
        os.replace(tmp, final)
    elif _exchange(tmp, final):
        fsync_dir(final.parent)
        shutil.rmtree(tmp)  # now holds the old copy
    else:
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        fsync_dir(final.parent)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old)
    fsync_dir(final.parent)


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; it becomes `final` only if the block completes.

    An exception in the block deletes the temporary folder; a kill leaves it, and
    `remove_incomplete` deletes it. Either way `final` is untouched. An existing `final` is
    replaced only after the new folder is complete and on disk, such that a complete copy
    (new or old) can always be found (see `_commit`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit(tmp, final)


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


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TRAINING_STATE = "training_state.pt"


def save_checkpoint(
    exp_dir: str | os.PathLike,
    name: str,
    weights: torch.nn.Module | dict[str, torch.Tensor],
    meta: dict,
    training_state: dict | None,
) -> Path:
    """Write `<exp_dir>/checkpoint/<name>/` atomically; return its final path.

    A model is written by `safetensors.torch.save_model`: each tied tensor once (safetensors
    cannot store one tensor under two names; the file's metadata names the dropped one), on the
    CPU. Loading goes through the model's own loader (`VALLE.load_amphion_state_dict`), not
    `safetensors.torch.load_model`, because the same loader must also take released `.bin` files
    (both names of a pair, `module.` prefixes) and name what does not fit.
    """
    from safetensors.torch import save_file, save_model

    final = Path(exp_dir) / "checkpoint" / name
    with atomic_directory(final) as tmp:
        path, metadata = str(tmp / "model.safetensors"), {"format": "pt"}
        if isinstance(weights, torch.nn.Module):
            save_model(weights, path, metadata=metadata, force_contiguous=True)
        else:
            save_file(weights, path, metadata=metadata)
        meta = {"format": CHECKPOINT_FORMAT, **meta}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE)
    return final


def remove_incomplete(exp_dir: str | os.PathLike) -> list[Path]:
    """Repair what interrupted writes left in `<exp>/checkpoint`; return the deleted folders.

    A `.old-<name>-*` folder whose `<name>` is missing is the complete previous copy of a replace
    killed between its two renames (`_commit`): it is renamed back to `<name>`. Every other
    `.tmp-*` (unfinished write), `.old-*` (replaced copy) and `.del-*` (pruning) folder is deleted.
    Call it only when no other process writes checkpoints into this experiment.
    """
    root = Path(exp_dir) / "checkpoint"
    if not root.is_dir():
        return []
    removed = []
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        old = _OLD_RE.match(child.name)
        if old and not (root / old.group(1)).exists():
            os.replace(child, root / old.group(1))
            fsync_dir(root)
            logger.warning("restored checkpoint %s (a replace was interrupted)", old.group(1))
        elif child.name.startswith((".tmp-", ".old-", ".del-")):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def read_best(exp_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder the experiment's `best` file names (None when absent or gone)."""
    best = Path(exp_dir) / "best"
    if not best.is_file():
        return None
    path = Path(exp_dir) / "checkpoint" / best.read_text(encoding="utf-8").strip()
    return path if path.is_dir() else None


def write_best(exp_dir: str | os.PathLike, ckpt_name: str) -> None:
    atomic_write_text(Path(exp_dir) / "best", ckpt_name + "\n")


def prune_checkpoints(exp_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and the best one; return the deleted."""
    best = read_best(exp_dir)
    ckpts = list_checkpoints(exp_dir)
    doomed = [p for p in ckpts[: max(len(ckpts) - keep_last, 0)] if p != best]
    for path in doomed:
        # rename first so a kill mid-delete never leaves a half-deleted folder under a valid name
        tmp = path.parent / f".del-{path.name}-{uuid.uuid4().hex[:8]}"
        os.replace(path, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return doomed


def checkpoint_order(folder: Path) -> tuple[int, str]:
    """Sort key of checkpoint folders: the step of an `epoch-..._step-..._loss-...` name (ours and
    Amphion's releases), then the name. Not mtime: downloads and copies do not keep it."""
    m = CHECKPOINT_RE.match(folder.name)
    return (int(m.group(2)) if m else -1, folder.name)


def find_weights_file(ckpt_dir: str | os.PathLike) -> Path | None:
    for name in WEIGHT_FILES:
        if (Path(ckpt_dir) / name).is_file():
            return Path(ckpt_dir) / name
    return None


def load_weights(ckpt_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    weights = find_weights_file(ckpt_dir)
    if weights is None:
        raise CheckpointError(f"{ckpt_dir}: no {' or '.join(WEIGHT_FILES)}")
    return load_tensor_file(weights)


def load_training_state(ckpt_dir: str | os.PathLike) -> dict:
    """Optimizer / scheduler / sampler / RNG state of one of our checkpoints (no pickled code)."""
    path = Path(ckpt_dir) / TRAINING_STATE
    if not path.is_file():
        raise CheckpointError(
            f"{ckpt_dir}: no {TRAINING_STATE}, so it cannot be resumed exactly "
            "(a released or weights-only checkpoint): use --resume_type finetune"
        )
    return _torch_load(path)


def config_differences(recorded: dict, current: dict, prefix: str = "model") -> list[str]:
    """Human-readable differences `key: recorded -> current` over the keys of `current`."""
    diffs = []
    for key in sorted(current):
        if key not in recorded:
            continue  # keys the recorded side never had (e.g. Amphion args.json) keep defaults
        a, b = recorded[key], current[key]
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
            same = float(a) == float(b)
        else:
            same = a == b
        if not same:
            diffs.append(f"{prefix}.{key}: {a!r} (checkpoint) -> {b!r} (config)")
    return diffs


# --------------------------------------------------------------------------------------------
# From a user's path to a checkpoint: the rules shared by training and inference
# --------------------------------------------------------------------------------------------

LAYOUTS = (
    "an experiment (config.json + checkpoint/epoch-XXXX_step-XXXXXXX_loss-X.XXXXXX/)",
    "one of its checkpoint folders (meta.json + model.safetensors)",
    "a released Amphion model (args.json + symbols.dict + checkpoint/<name>/pytorch_model.bin "
    "or model.safetensors)",
)


@dataclass(frozen=True)
class CheckpointSource:
    """One checkpoint a path resolves to, and the files that describe its weights."""

    # "experiment" (ours, a checkpoint picked), "checkpoint" (one of our checkpoint folders) or
    # "release" (an Amphion folder, or one of its checkpoint folders)
    kind: str
    root: Path  # the experiment or release folder
    folder: Path  # the checkpoint folder
    weights: Path  # its model.safetensors or pytorch_model.bin
    config: Path  # the experiment's config.json or the release's args.json (may be absent: ours)
    model: dict  # the model section that describes the weights
    model_file: Path  # where `model` comes from: meta.json, config.json or args.json


def resolve_checkpoint(path: str | os.PathLike, which: str = "latest") -> CheckpointSource:
    """The checkpoint `path` names: one of our experiments (its `which` checkpoint, "latest" or
    "best"), a `checkpoint/` folder, one checkpoint folder, or a released Amphion folder (its
    newest checkpoint) or one of its checkpoint folders. CheckpointError says what was looked for.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder (expected {', '.join(LAYOUTS)})")
    if path.name == "checkpoint" and not (path / "meta.json").is_file():
        path = path.parent  # the experiment's or the release's checkpoint/ folder
    if (path / "args.json").is_file():
        return _release(path, which)
    if (path / "meta.json").is_file():
        exp_dir = path.parent.parent if path.parent.name == "checkpoint" else path.parent
        return _ours(path, exp_dir, "checkpoint")
    if find_weights_file(path):  # a release's checkpoint folder: args.json above it
        for root in (path.parent.parent, path.parent):
            if (root / "args.json").is_file():
                return _release(root, which, folder=path)
    if (path / "config.json").is_file() or (path / "checkpoint").is_dir():
        return _ours(_pick(path, which), path, "experiment")
    raise CheckpointError(
        f"no checkpoint in {path}: it is neither {LAYOUTS[0]}, {LAYOUTS[1]} nor {LAYOUTS[2]}"
    )


def _pick(exp_dir: Path, which: str) -> Path:
    """The latest or the best checkpoint folder of one of our experiments."""
    if which == "best":
        best = read_best(exp_dir)
        if best is None:
            raise CheckpointError(
                f"{exp_dir}: no 'best' file naming an existing checkpoint folder (training writes "
                "it after a validation); use the latest checkpoint (--infer_checkpoint latest)"
            )
        return best
    found = list_checkpoints(exp_dir)
    if not found:
        raise CheckpointError(f"{exp_dir}: no checkpoint folders in {exp_dir / 'checkpoint'} yet")
    return found[-1]


def _ours(folder: Path, exp_dir: Path, kind: str) -> CheckpointSource:
    """One of our checkpoint folders: meta.json describes it (else the experiment's config)."""
    weights = find_weights_file(folder)
    if weights is None:
        raise CheckpointError(f"{folder}: no model.safetensors in this checkpoint folder")
    config = exp_dir / "config.json"
    for file in (folder / "meta.json", config):
        data = read_json5(file) if file.is_file() else {}
        if isinstance(data.get("model"), dict):
            return CheckpointSource(kind, exp_dir, folder, weights, config, data["model"], file)
    raise CheckpointError(
        f"{folder}: cannot tell which model the weights are for (no 'model' section in its "
        f"meta.json nor in {config})"
    )


def _release(root: Path, which: str, folder: Path | None = None) -> CheckpointSource:
    """A released Amphion folder; `folder` = one of its checkpoint folders (default: newest)."""
    args_path = root / "args.json"
    args = read_json5(args_path)
    if not isinstance(args.get("model"), dict):
        raise CheckpointError(
            f"{args_path}: no 'model' section; is this an Amphion VALL-E release?"
        )
    candidates = [[folder]] if folder else [(root / "checkpoint").glob("*"), [root]]
    folders = [p for group in candidates for p in group if p.is_dir() and find_weights_file(p)]
    if not folders:
        raise CheckpointError(
            f"{root}: no checkpoint/<name>/pytorch_model.bin or model.safetensors "
            "(see bins/tts/download.py for the release layout)"
        )
    folders.sort(key=checkpoint_order)  # newest (by step in the name) last
    if which == "best" and folder is None and len(folders) > 1:
        logger.info("%s: a release has no 'best' marker; using the newest checkpoint", root)
    weights = find_weights_file(folders[-1])
    return CheckpointSource(
        "release", root, folders[-1], weights, args_path, args["model"], args_path
    )
