"""The recipe-agnostic training engine: one run, set up from a config and a recipe.

`train(args, Recipe)` is recipe stage 2 for any recipe that implements the small interface of
models/base/train_recipe.py (VALL-E: models/tts/valle/trainer.py). It loads the config, checks
the data and the checkpoints it would start from (before building anything), builds the loaders,
the model, AdamW and the LR schedule, prepares them with accelerate (DDP on several GPUs: run
under `accelerate launch`, utils/launch.sh), restores a resumed run's state, checks that the
largest batch fits in GPU memory, and hands over to the loop (models/base/train_loop.py).

Randomness: initial weights come from `random_seed` on every rank (identical); then each rank
reseeds with `random_seed + 1 + rank` (accelerate's `set_seed(device_specific)`) so that its
dropout masks are its own, and the recipe's own draws (VALL-E: NAR stage and prompt lengths)
come from a per-rank `torch.Generator` seeded from that rank's python RNG. All of them are in
every checkpoint (models/base/train_state.py).

Outputs in `<log_dir>/<exp_name>/` (docs/ARCHITECTURE.md): config.json (+ the recipe's files),
checkpoint/<epoch-..._step-..._loss-...>/, best, tensorboard/, and train_log.jsonl with one line
per optimizer step. A resumed run appends; later lines win.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from lhotse import CutSet

from models.base.train_data import auto_num_workers, estimate_steps_per_epoch, largest_batch
from models.base.train_loop import batch_loss, stop_on_signals, train_loop
from models.base.train_recipe import TrainRecipe
from models.base.train_state import (
    Run,
    TrainingError,
    check_start,
    completed_checkpoint,
    is_main,
    pick_checkpoints,
    restore_training_state,
)
from utils.checkpoint import remove_incomplete
from utils.config import Config, resolve_path, save_config

logger = logging.getLogger("codectts.train")


def parse_args(
    argv: list[str] | None,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The options every recipe's training takes, plus the recipe's own (`add_arguments`)."""

    def boolean(text: str) -> bool:
        if text.lower() not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() == "true"

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="json5 recipe config")
    p.add_argument("--exp_name", required=True, help="experiment name: <log_dir>/<exp_name>")
    p.add_argument("--resume", type=boolean, default=False, help="continue the experiment")
    p.add_argument("--resume_type", choices=("resume", "finetune"), default="resume")
    p.add_argument("--resume_from_ckpt_path", default="", help="checkpoint to resume from")
    p.add_argument("--train_stage", type=int, choices=(0, 1, 2), default=None)
    p.add_argument("--model_train_stage", type=int, choices=(0, 1, 2), default=None)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    if args.model_train_stage is not None:  # the recipe's name for the same thing
        args.train_stage = args.model_train_stage
    # not an option: run.sh's --gpu arrives as CUDA_VISIBLE_DEVICES (for the resume hint)
    args.gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return args


def lr_lambda(cfg: Config):
    """Linear warmup to base_lr over warmup_steps, then cosine decay to 0 at total steps."""
    warmup, total, kind = (
        cfg.train.warmup_steps,
        cfg.train.total_training_steps,
        cfg.train.scheduler,
    )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_accelerator(cfg: Config) -> Accelerator:
    mixed = cfg.train.mixed_precision
    cuda = torch.cuda.is_available()
    if mixed == "fp16" and not cuda:
        logger.warning("train.mixed_precision fp16 needs a GPU; training in fp32 on CPU")
        mixed = "no"
    return Accelerator(
        cpu=not cuda,
        mixed_precision=mixed,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def train(args: argparse.Namespace, recipe_class: type[TrainRecipe]) -> int:
    """One training process (rank) of recipe stage 2; 0 when done or stopped by a signal."""
    overrides = {"train": {"train_stage": args.train_stage}} if args.train_stage is not None else {}
    cfg = recipe_class.load_config(args.config, overrides)
    accelerator = make_accelerator(cfg)
    exp_dir = resolve_path(cfg.log_dir) / args.exp_name
    recipe = recipe_class(cfg, args)
    fingerprint = recipe.check_data()
    if not args.resume and (done := completed_checkpoint(exp_dir, cfg)) is not None:
        if accelerator.is_main_process:
            logger.info(
                "%s already finished training (%s, train_stage %d): nothing to do. Train it "
                "further with --resume true and a larger train.max_steps / max_epoch, or use "
                "another --name.", exp_dir, done.name, cfg.train.train_stage,
            )  # fmt: skip
        return 0
    resume_from, init_from = pick_checkpoints(args, exp_dir, recipe)
    training_state = check_start(resume_from, init_from, fingerprint, recipe)
    run, train_cuts, num_valid = start_run(recipe, accelerator, exp_dir, fingerprint, init_from)
    prepare_experiment_dir(run)
    if training_state is not None:
        restore_training_state(run, training_state)
    if training_state is not None and is_main(run):
        logger.info(
            "resumed %s: epoch %d, step %d (%d batches into the epoch)",
            resume_from, run.epoch, run.step, run.batches_done,
        )  # fmt: skip
    if accelerator.device.type == "cuda" and cfg.train.check_largest_batch:
        check_largest_batch_fits(run, train_cuts)
    if is_main(run):
        open_logs(run, len(train_cuts), num_valid)
    with stop_on_signals(run):
        try:
            return train_loop(run)
        finally:
            if run.writer is not None:
                run.writer.close()
            if run.progress is not None:
                run.progress.close()


def start_run(
    recipe: TrainRecipe,
    accelerator: Accelerator,
    exp_dir: Path,
    fingerprint: dict,
    init_from: Path | None,
) -> tuple[Run, CutSet, int]:
    """Data first (checked before any model is built), then model, optimizer, schedule."""
    cfg, world, rank = recipe.cfg, accelerator.num_processes, accelerator.process_index
    train_cuts, valid_cuts = (recipe.load_data(s) for s in ("train", "valid"))
    workers = auto_num_workers(cfg.train.num_workers, world)
    loaders = {
        split: recipe.make_loader(cuts, split, world_size=world, rank=rank, num_workers=workers)
        for split, cuts in (("train", train_cuts), ("valid", valid_cuts))
    }
    set_seed(cfg.train.random_seed)  # the same on every rank: identical initial weights
    model, trainable = recipe.build_model(init_from)
    optimizer = torch.optim.AdamW(
        trainable,
        lr=cfg.train.base_lr,
        betas=tuple(cfg.train.adam_betas),
        weight_decay=cfg.train.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    # From here on each rank has its own streams: seed + 1 + rank for dropout (torch's global
    # RNG; + 1 so that rank 0 does not replay the init's numbers), and the recipe's generator
    # seeded from this rank's python RNG (a stream apart from the dropout one).
    set_seed(cfg.train.random_seed + 1, device_specific=True)
    generator = torch.Generator().manual_seed(random.getrandbits(63))
    run = Run(
        cfg=cfg,
        args=recipe.args,
        exp_dir=exp_dir,
        accelerator=accelerator,
        model=model,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=loaders["train"][0],
        train_batches=loaders["train"][1],
        valid_loader=loaders["valid"][0],
        recipe=recipe,
        train_stage=cfg.train.train_stage,
        data_fingerprint=fingerprint,
        generator=generator,
        steps_per_epoch_estimate=estimate_steps_per_epoch(train_cuts, cfg, world),
    )
    return run, train_cuts, len(valid_cuts)


def prepare_experiment_dir(run: Run) -> None:
    if not is_main(run):
        return
    run.exp_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_incomplete(run.exp_dir):
        logger.info("removed an incomplete checkpoint write: %s", stale.name)
    save_config(run.cfg, run.exp_dir / "config.json")
    run.recipe.prepare_exp_dir(run.exp_dir)


def open_logs(run: Run, num_train: int, num_valid: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run.writer = SummaryWriter(str(run.exp_dir / "tensorboard"))
    logger.info(
        "training %s on %d %s process(es): %d trainable parameters, %d train cuts, %d valid "
        "cuts, experiment %s", run.recipe.describe(), run.accelerator.num_processes,
        run.accelerator.device.type, sum(p.numel() for p in run.trainable), num_train,
        num_valid, run.exp_dir,
    )  # fmt: skip


def check_largest_batch_fits(run: Run, cuts: CutSet) -> None:
    """CUDA (opt out: train.check_largest_batch false): run forward + backward on the largest
    batch the sampler can form, next to a stand-in for AdamW's state (2 tensors per trainable
    parameter) unless the optimizer already holds it (resume), so an out-of-memory happens now
    with advice instead of hours into training. Leaves no trace: RNGs forked, grads dropped,
    buffers (BatchNorm running statistics of add_prenet) restored."""
    cfg, device = run.cfg.train, run.accelerator.device
    chosen = largest_batch(cuts, run.cfg)
    batch = run.train_loader.dataset[CutSet.from_cuts(chosen)]
    cuda = device.type == "cuda"
    buffers = {name: b.detach().clone() for name, b in run.model.named_buffers()}
    adam_state = []
    try:
        if not run.optimizer.state:  # exp_avg + exp_avg_sq, allocated at the first step
            adam_state = [torch.zeros_like(p) for p in run.trainable for _ in range(2)]
        with torch.random.fork_rng(devices=[device] if cuda else []):
            loss, _ = batch_loss(run, batch, torch.Generator().manual_seed(0))
            run.accelerator.backward(loss)
    except torch.cuda.OutOfMemoryError:
        if cfg.use_dynamic_batchsize:
            advice = f"lower train.max_tokens (now {cfg.max_tokens}) or train.max_sentences"
        else:
            advice = f"lower train.batch_size (now {cfg.batch_size})"
        raise TrainingError(
            f"CUDA out of memory on the largest batch ({len(chosen)} utterances, "
            f"{int(batch['y_lens'].sum())} frames, longest {int(batch['y_lens'].max())}) before "
            f"training started: {advice}, set train.mixed_precision bf16, or "
            "train.gradient_checkpointing true."
        ) from None
    finally:
        del adam_state
        run.model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in run.model.named_buffers():
                b.copy_(buffers[name])
        if cuda:
            torch.cuda.empty_cache()
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        logger.info("largest batch (%d utterances, %d frames) fits: peak %.2f GiB",
                    len(chosen), int(batch["y_lens"].sum()), peak)  # fmt: skip
