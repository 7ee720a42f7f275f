"""Checkpoint averaging for decoding (icefall's `--avg`): the mean of several checkpoints' weights.

    found = resolve_checkpoint(expt_dir, which)           # the one resolver (utils/checkpoint.py)
    folders = checkpoints_to_average(found, "3")          # or "NAME,NAME" / "DIR,DIR"
    state = average_weights(folders)                      # one folder: its weights as stored

`checkpoints_to_average(found, avg)`: `avg` = N takes the N checkpoints of found's experiment
that end at found's (by step: with `latest`, the last N); a comma-separated list takes those
checkpoint folders (paths, or folder names in `<experiment>/checkpoint/`). Every one must
describe the same model as `found` (its meta.json `model` section): the model is built from
found's config. A released folder holds one checkpoint: only N = 1. `average_weights` is the
element-wise mean, accumulated in float32, over identical key sets and shapes; a tensor that is
not floating point (an index, a counter) must be equal in all of them. Any mismatch is a
CheckpointError naming the checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.checkpoint import (
    CheckpointError,
    CheckpointSource,
    config_differences,
    list_checkpoints,
    load_weights,
    resolve_checkpoint,
)

log = logging.getLogger(__name__)


def checkpoints_to_average(found: CheckpointSource, avg: str | int) -> list[Path]:
    """The checkpoint folders `--infer_avg avg` averages (see the module docstring)."""
    spec = str(avg).strip()
    if spec.isdigit() and int(spec) == 1:
        return [found.folder]
    if found.kind == "release":
        only_one_checkpoint(spec, found.root)
    if spec.isdigit():
        folders = _last(found, int(spec))
    else:
        folders = [_named(found, part.strip()) for part in spec.split(",") if part.strip()]
        twice = sorted({f.name for f in folders if folders.count(f) > 1})
        if not folders:
            raise CheckpointError(f"--infer_avg {spec!r}: give a count or checkpoint names")
        if twice:
            raise CheckpointError(f"--infer_avg {spec}: listed twice: {', '.join(twice)}")
    for folder in folders:
        _check_same_model(found, resolve_checkpoint(folder))
    return folders


def only_one_checkpoint(avg: str | int, root: Path) -> None:
    """A released / exported model folder holds one checkpoint: `--infer_avg` must be 1."""
    spec = str(avg).strip()
    if spec.isdigit() and int(spec) == 1:
        return
    raise CheckpointError(
        f"--infer_avg {spec}: {root} is a released model with one checkpoint; averaging needs "
        "several checkpoints of one of our experiments: use --infer_avg 1 (the default) with it"
    )


def _last(found: CheckpointSource, n: int) -> list[Path]:
    """The n checkpoints of found's experiment up to found's, by step."""
    ckpts = [p.resolve() for p in list_checkpoints(found.root)]
    here = found.folder.resolve()
    upto = ckpts[: ckpts.index(here) + 1] if here in ckpts else [here]
    if n < 1:
        raise CheckpointError(f"--infer_avg {n}: give a count of at least 1 or checkpoint names")
    if n > len(upto):
        names = ", ".join(p.name for p in upto)
        raise CheckpointError(
            f"--infer_avg {n}: {found.root} has {len(upto)} checkpoint(s) up to "
            f"{found.folder.name} ({names}); give at most {len(upto)}"
        )
    return upto[-n:]


def _named(found: CheckpointSource, part: str) -> Path:
    """A listed checkpoint: a folder path, or a folder name in <experiment>/checkpoint/."""
    path = Path(part).expanduser()
    if not path.is_dir() and not path.is_absolute():
        path = found.root / "checkpoint" / part
    if not path.is_dir():
        raise CheckpointError(
            f"--infer_avg: {part!r} is neither a folder nor a checkpoint of {found.root} "
            f"(those: {', '.join(p.name for p in list_checkpoints(found.root)) or 'none'})"
        )
    source = resolve_checkpoint(path)
    if source.kind != "checkpoint":
        what = "a released model" if source.kind == "release" else "an experiment"
        raise CheckpointError(
            f"--infer_avg: {path} is {what}, not one of our checkpoint folders "
            "(epoch-..._step-..._loss-.../)"
        )
    return source.folder.resolve()


def _check_same_model(found: CheckpointSource, other: CheckpointSource) -> None:
    a, b = found.model, other.model
    diffs = config_differences(a, b) + [f"model.{k}: only in one" for k in sorted(set(a) ^ set(b))]
    if diffs:
        raise CheckpointError(
            f"--infer_avg: {other.folder} describes another model than {found.folder} "
            f"({other.model_file} vs {found.model_file}): {'; '.join(diffs)}"
        )


def average_weights(folders: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the folders' weights (floating tensors in float32); one folder:
    its weights as stored."""
    if len(folders) == 1:
        return load_weights(folders[0])
    total: dict[str, torch.Tensor] = {}
    first = Path(folders[0])
    for folder in folders:
        state = load_weights(folder)
        if not total:
            total = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v
                     for k, v in state.items()}  # fmt: skip
            continue
        if set(state) != set(total):
            only = sorted(set(state) ^ set(total))
            raise CheckpointError(
                f"cannot average {first} and {folder}: different tensor names ({len(only)} in "
                f"only one, e.g. {', '.join(only[:5])})"
            )
        for key, value in state.items():
            _check_tensor(total[key], value, key, first, Path(folder))
            if value.is_floating_point():
                total[key] += value.to(torch.float32)
    log.info("averaged %d checkpoints: %s", len(folders), ", ".join(Path(f).name for f in folders))
    return {k: v / len(folders) if v.is_floating_point() else v for k, v in total.items()}


def _check_tensor(ref: torch.Tensor, value: torch.Tensor, key: str, first: Path, folder: Path):
    where = f"cannot average {first} and {folder}: tensor {key!r}"
    if ref.shape != value.shape:
        raise CheckpointError(f"{where} has shape {tuple(ref.shape)} vs {tuple(value.shape)}")
    if ref.is_floating_point() != value.is_floating_point():
        raise CheckpointError(f"{where} is {ref.dtype} in one and {value.dtype} in the other")
    if not value.is_floating_point() and not torch.equal(ref, value):
        raise CheckpointError(f"{where} is not floating point and differs (cannot be averaged)")
