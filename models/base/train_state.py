"""The state of one training run, what a checkpoint captures of it, and the start checks.

`Run` holds everything a run reads and mutates. A checkpoint (utils/checkpoint.py layout) is
the model's weights, `meta.json` (the recipe's `meta()` + epoch, step, losses, data
fingerprint) and `training_state.pt`: optimizer, scheduler, sampler state (epoch + batches
consumed, what the batches depend on, lhotse's own state: `ResumableBatches`), the fp16 loss
scaler, the counters, and the python / numpy / torch (+ CUDA) RNG states and the recipe's
generator of every rank, so that a resumed run continues bit for bit; so a resume needs the
same number of processes (`world_size`, in both files; `check_start` refuses another and names
the ways on).
The keys are those of the first VALL-E trainer (the recipe's generator is stored as
"nar_generator"), so older checkpoints resume unchanged.

Which checkpoint a run starts from (`pick_checkpoints`) and whether it may (`check_start`,
`completed_checkpoint`) are decided here, before any model is built.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from models.base.train_data import DataError, ResumableBatches
from models.base.train_recipe import TrainRecipe
from utils.checkpoint import (
    CheckpointError,
    checkpoint_name,
    config_differences,
    list_checkpoints,
    load_training_state,
    prune_checkpoints,
    read_best,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
    write_best,
)
from utils.config import Config, config_to_dict

logger = logging.getLogger("codectts.train")


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


@dataclass
class Run:
    """Everything one training run reads and mutates (what a checkpoint captures)."""

    cfg: Config
    args: argparse.Namespace
    exp_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP-wrapped on several GPUs)
    trainable: list[torch.nn.Parameter]
    optimizer: Any
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_loader: torch.utils.data.DataLoader
    train_batches: ResumableBatches
    valid_loader: torch.utils.data.DataLoader
    recipe: TrainRecipe
    train_stage: int
    data_fingerprint: dict
    generator: torch.Generator  # the recipe's random draws on this rank (VALL-E: NAR stages)
    steps_per_epoch_estimate: int
    writer: Any = None  # tensorboard SummaryWriter (main process only)
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epoch in progress
    batches_done: int = 0  # batches of this epoch consumed (mid-epoch resume position)
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    overflow_in_a_row: int = 0  # fp16 updates the loss scaler skipped (inf/nan scaled grads)
    overflow_total: int = 0
    best_valid_loss: float = math.inf
    last_valid: dict = field(default_factory=dict)  # {"step": .., "loss": ..} of the last one
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    stop_signal: str = ""  # name of the signal that asked us to stop
    progress: Any = None


def is_main(run: Run) -> bool:
    return run.accelerator.is_main_process


def check_same_data(
    recorded: dict | None, current: dict, where: Path, names: dict[str, str], *, strict: bool
) -> None:
    """Refuse (strict) or warn when the prepared data were made otherwise than those `where`
    was trained on (`names`: fingerprint key -> what it is, e.g. the codec, the phone table)."""
    if not recorded:
        return
    changed = [k for k in names if recorded.get(k) != current.get(k)]
    if not changed:
        return
    message = (
        f"the stage-1 data in {current['processed_dir']} were made with another "
        f"{' and '.join(names[k] for k in changed)} than {where} was trained with "
        f"(data of {recorded.get('processed_dir')}). The codes / phone ids would mean something "
        "else: point preprocess.processed_dir at the original stage-1 output, or rerun stage 1 "
        "with the experiment's symbols.dict (preprocess.existing_symbols_dict) and codec."
    )
    if strict:
        raise DataError(message)
    logger.warning("%s", message)


def check_model_config(ckpt_dir: Path, cfg: Config) -> None:
    """Refuse weights made for another architecture, listing every difference."""
    found = resolve_checkpoint(ckpt_dir)  # the same rules as stage 3
    recorded, source = found.model, found.model_file
    current = config_to_dict(cfg.model)
    # dropout changes no tensor shape; fine-tuning with another dropout is legitimate
    diffs = [d for d in config_differences(recorded, current) if not d.startswith("model.dropout")]
    if diffs:
        raise TrainingError(
            f"the model config differs from the one of {ckpt_dir} (recorded in {source}):\n  "
            + "\n  ".join(diffs)
            + "\nUse the same model section as that experiment, or start a new one without "
            "--resume."
        )


def pick_checkpoints(args: argparse.Namespace, exp_dir: Path, recipe: TrainRecipe):
    """(checkpoint to resume exactly, checkpoint whose weights to start from) - either None.
    The one place the engine resolves a checkpoint named on the command line."""
    if args.resume and args.resume_type == "finetune":
        if list_checkpoints(exp_dir) or not args.resume_from_ckpt_path:
            raise TrainingError(
                "--resume_type finetune starts a new experiment (fresh optimizer and step count):"
                f" pass the source with --resume_from_ckpt_path and a --name whose folder "
                f"holds no checkpoints yet ({exp_dir})"
            )
        return None, resolve_checkpoint(args.resume_from_ckpt_path).folder
    if args.resume:
        if not args.resume_from_ckpt_path and not list_checkpoints(exp_dir):
            raise CheckpointError(
                f"--resume true but {exp_dir} has no complete checkpoint to resume from; "
                "train without --resume, or name one with --resume_from_ckpt_path"
            )
        ckpt = resolve_checkpoint(args.resume_from_ckpt_path or exp_dir).folder
        return ckpt, ckpt
    if list_checkpoints(exp_dir):
        raise TrainingError(
            f"{exp_dir} already holds checkpoints: continue it with --resume true, or choose "
            "another --name (nothing was overwritten)"
        )
    return None, recipe.init_source()


def completed_checkpoint(exp_dir: Path, cfg: Config) -> Path | None:
    """The newest checkpoint if it ends the training this config asks for (same train_stage and
    model, max_steps / max_epoch reached), so that rerunning a finished stage is a no-op."""
    found = list_checkpoints(exp_dir)
    if not found:
        return None
    meta, state = read_meta(found[-1]), load_training_state(found[-1])
    same = meta.get("train_stage") == cfg.train.train_stage and not config_differences(
        meta.get("model", {}), config_to_dict(cfg.model)
    )
    train = cfg.train
    reached = (train.max_steps and state["step"] >= train.max_steps) or (
        train.max_epoch and state["epoch"] >= train.max_epoch
    )
    return found[-1] if same and reached else None


def check_start(
    resume_from: Path | None,
    init_from: Path | None,
    fingerprint: dict,
    recipe: TrainRecipe,
    world_size: int,
) -> dict | None:
    """Refuse a start from other prepared data, another train_stage or (resuming) another
    number of processes; the training state to restore when resuming."""
    if init_from is not None and (init_from / "meta.json").is_file():
        recorded = read_meta(init_from).get("data_fingerprint")
        check_same_data(recorded, fingerprint, init_from, recipe.fingerprint_names,
                        strict=resume_from is not None)  # fmt: skip
    if resume_from is None:
        return None
    state = load_training_state(resume_from)
    recorded_stage, train_stage = (
        read_meta(resume_from).get("train_stage"),
        recipe.cfg.train.train_stage,
    )
    if recorded_stage != train_stage:
        raise TrainingError(
            f"{resume_from} was trained with train_stage {recorded_stage}, this run asks for "
            f"{train_stage}: resume with --model_train_stage {recorded_stage}, or start a new "
            f"experiment{recipe.stage_hint}"
        )
    check_same_world(resume_from, state.get("world_size", len(state["rng"])), world_size)
    return state


def check_same_world(resume_from: Path, recorded: int, world_size: int) -> None:
    """An exact resume needs the world that wrote the checkpoint: each rank's position in its
    data shard and its RNG streams are saved per rank, and another world shards the data
    otherwise. Refuse, naming both sizes and the ways on."""
    if recorded == world_size:
        return
    raise TrainingError(
        f"{resume_from} was written by {recorded} training process(es), this run has "
        f"{world_size}: a resume continues each rank's data shard and RNG streams, which exist "
        f"for a world of {recorded} only. Resume with {recorded} process(es) (run.sh "
        f"--num_nodes N --nproc_per_node K with N x K = {recorded}), or keep only its weights "
        "in a new experiment (fresh optimizer, LR schedule, step count and data order): "
        f"--resume true --resume_type finetune --resume_from_ckpt_path {resume_from} "
        "--name NEW_NAME"
    )


def rng_state(run: Run) -> dict:
    """This rank's RNG states as tensors / plain types (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "nar_generator": run.generator.get_state(),  # its first name: old checkpoints load
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(run: Run, state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    run.generator.set_state(state["nar_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def training_state(run: Run) -> dict:
    rng = [rng_state(run)]
    if run.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rng = gather_object(rng)  # one entry per rank, in rank order
    return {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "sampler": run.train_batches.state_dict(run.epoch, run.batches_done),
        "rng": rng,
        "step": run.step,
        "epoch": run.epoch,
        "batches_done": run.batches_done,
        "world_size": run.accelerator.num_processes,
        # fp16: the loss scale and its growth tracker (the same on every rank)
        "scaler": run.accelerator.scaler.state_dict() if run.accelerator.scaler else None,
        "counters": {
            "nonfinite_in_a_row": run.nonfinite_in_a_row,
            "nonfinite_total": run.nonfinite_total,
            "overflow_in_a_row": run.overflow_in_a_row,
            "overflow_total": run.overflow_total,
            "best_valid_loss": run.best_valid_loss,
            "epoch_loss_sum": run.epoch_loss_sum,
            "epoch_loss_steps": run.epoch_loss_steps,
        },
        "last_valid": dict(run.last_valid),
    }


def restore_training_state(run: Run, state: dict) -> None:
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.epoch, run.batches_done = state["step"], state["epoch"], state["batches_done"]
    scaler = run.accelerator.scaler
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    elif scaler is not None:
        logger.warning("the checkpoint has no fp16 loss-scaler state (not trained in fp16): "
                       "the loss scale starts afresh")  # fmt: skip
    for key, value in state["counters"].items():
        setattr(run, key, value)
    run.last_valid = dict(state.get("last_valid", {}))
    if changed := run.train_batches.check_state(state.get("sampler", {})):
        logger.warning(
            "the training batches are drawn otherwise than when the checkpoint was written "
            "(%s): the resumed epoch gets other batches (training continues, not bit for bit)",
            "; ".join(changed),
        )
    set_rng_state(run, state["rng"][run.accelerator.process_index])  # same world: check_start


def save(run: Run, *, name_epoch: int) -> Path | None:
    """Write a checkpoint (main process), update `best`, prune old ones; all ranks wait."""
    state = training_state(run)  # a collective on several processes: every rank calls it
    path = None
    if is_main(run):
        loss = run.epoch_loss_sum / max(run.epoch_loss_steps, 1)
        valid_loss = run.last_valid.get("loss") if run.last_valid.get("step") == run.step else None
        name = checkpoint_name(name_epoch, run.step, loss if math.isfinite(loss) else 0.0)
        meta = {  # model + train_stage: compared on resume and by completed_checkpoint
            "model": config_to_dict(run.cfg.model),
            "train_stage": run.train_stage,
            **run.recipe.meta(),
            "epoch": name_epoch,
            "step": run.step,
            "loss": loss,
            "valid_loss": valid_loss,
            "data_fingerprint": run.data_fingerprint,
            "world_size": run.accelerator.num_processes,  # a resume needs as many processes
        }
        model = run.accelerator.unwrap_model(run.model)
        path = save_checkpoint(run.exp_dir, name, model, meta, state)
        if valid_loss is not None and (
            valid_loss < run.best_valid_loss or read_best(run.exp_dir) is None
        ):
            run.best_valid_loss = min(valid_loss, run.best_valid_loss)
            write_best(run.exp_dir, name)
        prune_checkpoints(run.exp_dir, run.cfg.train.keep_last)
        logger.info("saved checkpoint %s", path)
    run.accelerator.wait_for_everyone()
    return path
