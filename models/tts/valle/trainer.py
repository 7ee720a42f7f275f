"""Recipe stage 2: train VALL-E's AR decoder (train_stage 1), then the NAR decoders (2), or both.

Flat, top to bottom: `train(args)` sets up one run (config, stage-1 data, model, optimizer,
resume) and loops over epochs; `train_one_epoch` runs optimizer steps; `validate` computes the
validation loss; `save` writes a checkpoint. All mutable state of a run lives in one `Run`
record so that a checkpoint can capture it and a resume can restore it exactly.

One optimizer step (gradient accumulation over `train.gradient_accumulation_step` batches):

    loss = loss_sum / sum(y_lens)        Amphion's per-frame normalisation
    accelerator.backward(loss / accum)   (no DDP all-reduce until the last micro-batch)
    clip_grad_norm_ (unscales first)  ->  optimizer.step  ->  scheduler.step  ->  zero_grad

so an update is the mean over its micro-batches of their per-frame losses; the epoch's last group
may hold fewer than `accum` micro-batches and is rescaled to the mean of those it holds. Under
fp16 the loss scaler may skip an update (inf/nan in the scaled grads): it is logged and counted
(`"skipped": true, "reason": "fp16 overflow"` in train_log.jsonl) and advances neither the step
count nor the LR schedule (`step` counts applied updates); the scaler state is checkpointed.

Randomness and exact resume: initial weights come from `random_seed` on every rank (identical);
then each rank reseeds with `random_seed + 1 + rank` (accelerate's `set_seed(device_specific)`)
so that its dropout masks are its own, and the NAR stage / NAR prompt length draws come from a
per-rank `torch.Generator` seeded from that rank's python RNG (Amphion used one
`random.Random(0)` that was identical on every GPU). The checkpoint stores the states of python /
numpy / torch (+ CUDA) RNGs and that generator for every rank, the sampler position (epoch +
batches consumed), the fp16 scaler and the counters, so a resumed run continues bit for bit.

Outputs in `<log_dir>/<exp_name>/` (docs/ARCHITECTURE.md): config.json, symbols.dict,
checkpoint/<epoch-..._step-..._loss-...>/, best, tensorboard/, and train_log.jsonl with one line
per optimizer step (step, loss, lr, grad norm, AR/NAR losses and top-10 accuracy; a line for a
skipped non-finite step has "skipped": true). A resumed run appends; later lines win.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed

from models.tts.valle.dataset import (
    DataError,
    ResumableBatches,
    auto_num_workers,
    check_phones,
    filter_cuts,
    load_cuts,
    make_dataloader,
    num_frames,
)
from models.tts.valle.listening import write_listening_samples
from models.tts.valle.valle import VALLE
from text.symbol_table import TextTokenizer
from utils.checkpoint import (
    CheckpointError,
    checkpoint_name,
    config_differences,
    list_checkpoints,
    load_training_state,
    load_weights,
    prune_checkpoints,
    read_best,
    read_meta,
    remove_incomplete,
    resolve_checkpoint,
    save_checkpoint,
    write_best,
)
from utils.config import Config, config_to_dict, load_config, resolve_path, save_config

logger = logging.getLogger("codectts.train")

METRIC_PARTS = ("ar", "nar")
# fp16 scaler skips in a row before giving up: 2**-32 of the start scale, far below any real one
MAX_OVERFLOWS_IN_A_ROW = 32


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def boolean(text: str) -> bool:
        if text.lower() not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() == "true"

    p = argparse.ArgumentParser(description="Recipe stage 2: train VALL-E (AR, NAR or both).")
    p.add_argument("--config", required=True, help="json5 recipe config")
    p.add_argument("--exp_name", required=True, help="experiment name: <log_dir>/<exp_name>")
    p.add_argument("--resume", type=boolean, default=False, help="continue the experiment")
    p.add_argument("--resume_type", choices=("resume", "finetune"), default="resume")
    p.add_argument("--resume_from_ckpt_path", default="", help="checkpoint to resume from")
    p.add_argument("--train_stage", type=int, choices=(0, 1, 2), default=None)
    p.add_argument("--model_train_stage", type=int, choices=(0, 1, 2), default=None)
    p.add_argument("--ar_model_ckpt_dir", default="", help="NAR stage: AR run to start from")
    args = p.parse_args(argv)
    if args.model_train_stage is not None:  # the recipe's name for the same thing
        args.train_stage = args.model_train_stage
    # not an option: run.sh's --gpu arrives as CUDA_VISIBLE_DEVICES (for the resume hint)
    args.gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return args


def main(argv: list[str] | None = None) -> int:
    """One training process. run.sh starts one per visible GPU with `accelerate launch` (DDP)
    when there are several, one plain process otherwise (a GPU or the CPU)."""
    return train(parse_args(argv))


# --------------------------------------------------------------------------------------------
# Run state
# --------------------------------------------------------------------------------------------


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
    train_stage: int
    data_fingerprint: dict
    nar_generator: torch.Generator  # NAR stage + prompt length draws of this rank
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


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def stage1_fingerprint(cfg: Config) -> tuple[Path, dict]:
    """Check the stage-1 output exists; return its folder and the hashes of codec + symbols."""
    processed_dir = resolve_path(cfg.preprocess.processed_dir)
    codec_json = processed_dir / "codec" / "codec.json"
    symbols = processed_dir / cfg.preprocess.symbols_dict
    for path in (codec_json, symbols):
        if not path.is_file():
            raise DataError(
                f"stage-1 output missing: {path} does not exist. Run the data stage first "
                "(sh egs/tts/VALLE/run.sh --stage 1 with the same --config) or point "
                "preprocess.processed_dir at its output."
            )
    try:  # the codec's description, not its formatting
        codec = json.dumps(json.loads(codec_json.read_text(encoding="utf-8")), sort_keys=True)
    except ValueError as e:
        raise DataError(f"{codec_json}: not valid JSON ({e}); rerun stage 1") from None
    fingerprint = {
        "processed_dir": str(processed_dir),
        "codec": hashlib.sha256(codec.encode()).hexdigest(),
        "symbols": hashlib.sha256(symbols.read_bytes()).hexdigest(),
    }
    return processed_dir, fingerprint


def check_same_data(recorded: dict | None, current: dict, where: Path, *, strict: bool) -> None:
    """Refuse (strict) or warn when the stage-1 data were made with another codec / phone table."""
    if not recorded:
        return
    changed = [k for k in ("codec", "symbols") if recorded.get(k) != current.get(k)]
    if not changed:
        return
    what = {"codec": "codec (codec/codec.json)", "symbols": "symbol table (symbols.dict)"}
    message = (
        f"the stage-1 data in {current['processed_dir']} were made with another "
        f"{' and '.join(what[k] for k in changed)} than {where} was trained with "
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


def pick_checkpoints(args: argparse.Namespace, exp_dir: Path, train_stage: int):
    """(checkpoint to resume exactly, checkpoint whose weights to start from) - either None."""
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
    if args.ar_model_ckpt_dir:
        if train_stage != 2:
            logger.warning("--ar_model_ckpt_dir is used by train_stage 2 only; ignoring it")
            return None, None
        return None, resolve_checkpoint(args.ar_model_ckpt_dir).folder
    if train_stage == 2:
        logger.warning(
            "train_stage 2 (NAR) without --ar_model_ckpt_dir: the AR decoder stays random; "
            "pass the AR experiment to get a model that can synthesise"
        )
    return None, None


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
    resume_from: Path | None, init_from: Path | None, fingerprint: dict, train_stage: int
) -> dict | None:
    """Refuse a start from other stage-1 data or another train_stage; the training state to
    restore when resuming."""
    if init_from is not None and (init_from / "meta.json").is_file():
        recorded = read_meta(init_from).get("data_fingerprint")
        check_same_data(recorded, fingerprint, init_from, strict=resume_from is not None)
    if resume_from is None:
        return None
    state = load_training_state(resume_from)
    recorded_stage = read_meta(resume_from).get("train_stage")
    if recorded_stage != train_stage:
        raise TrainingError(
            f"{resume_from} was trained with train_stage {recorded_stage}, this run asks for "
            f"{train_stage}: resume with --model_train_stage {recorded_stage}, or start a new "
            "experiment (NAR from an AR run: --ar_model_ckpt_dir)"
        )
    return state


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


def build_model(cfg: Config, train_stage: int, init_from: Path | None) -> tuple[VALLE, list]:
    model = VALLE(cfg.model)
    if init_from is not None:
        check_model_config(init_from, cfg)
        model.load_amphion_state_dict(load_weights(init_from))
        logger.info("weights loaded from %s", init_from)
    if train_stage == 2 and cfg.model.num_quantizers < 2:
        raise TrainingError("train_stage 2 trains the NAR decoders: needs model.num_quantizers > 1")
    trainable = model.set_train_stage(train_stage)  # the NAR positional alphas stay at 1
    model.set_gradient_checkpointing(cfg.train.gradient_checkpointing)
    return model, trainable


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


def prepare_experiment_dir(run: Run, processed_dir: Path) -> None:
    if not is_main(run):
        return
    run.exp_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_incomplete(run.exp_dir):
        logger.info("removed an incomplete checkpoint write: %s", stale.name)
    save_config(run.cfg, run.exp_dir / "config.json")
    shutil.copyfile(processed_dir / run.cfg.preprocess.symbols_dict, run.exp_dir / "symbols.dict")


def train(args: argparse.Namespace) -> int:
    overrides = {"train": {"train_stage": args.train_stage}} if args.train_stage is not None else {}
    cfg = load_config(args.config, overrides)
    train_stage = cfg.train.train_stage
    accelerator = make_accelerator(cfg)
    exp_dir = resolve_path(cfg.log_dir) / args.exp_name
    processed_dir, fingerprint = stage1_fingerprint(cfg)
    tokenizer = TextTokenizer.from_file(processed_dir / cfg.preprocess.symbols_dict)
    if cfg.model.text_token_num < tokenizer.vocab_size:
        raise TrainingError(
            f"model.text_token_num = {cfg.model.text_token_num} is smaller than the phone "
            f"vocabulary of {tokenizer.source} ({tokenizer.vocab_size} ids incl. pad/bos/eos): "
            "raise model.text_token_num"
        )
    if not args.resume and (done := completed_checkpoint(exp_dir, cfg)) is not None:
        if accelerator.is_main_process:
            logger.info(
                "%s already finished training (%s, train_stage %d): nothing to do. Train it "
                "further with --resume true and a larger train.max_steps / max_epoch, or use "
                "another --name.", exp_dir, done.name, train_stage,
            )  # fmt: skip
        return 0
    resume_from, init_from = pick_checkpoints(args, exp_dir, train_stage)
    training_state = check_start(resume_from, init_from, fingerprint, train_stage)
    # the data, their filters and the samplers are checked before any model is built
    world, rank = accelerator.num_processes, accelerator.process_index
    train_cuts, valid_cuts = (
        load_data(cfg, processed_dir, s, tokenizer) for s in ("train", "valid")
    )
    workers = auto_num_workers(cfg.train.num_workers, world)
    loaders = {
        split: make_dataloader(cuts, cfg, tokenizer, shuffle=split == "train", world_size=world,
                               rank=rank, num_workers=workers, name=split)
        for split, cuts in (("train", train_cuts), ("valid", valid_cuts))
    }  # fmt: skip

    set_seed(cfg.train.random_seed)  # the same on every rank: identical initial weights
    model, trainable = build_model(cfg, train_stage, init_from)
    optimizer = torch.optim.AdamW(
        trainable,
        lr=cfg.train.base_lr,
        betas=tuple(cfg.train.adam_betas),
        weight_decay=cfg.train.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    # From here on each rank has its own streams: seed + 1 + rank for dropout (torch's global
    # RNG; + 1 so that rank 0 does not replay the init's numbers), and a NAR generator seeded
    # from this rank's python RNG (a stream apart from the dropout one).
    set_seed(cfg.train.random_seed + 1, device_specific=True)
    nar_generator = torch.Generator().manual_seed(random.getrandbits(63))
    run = Run(
        cfg=cfg,
        args=args,
        exp_dir=exp_dir,
        accelerator=accelerator,
        model=model,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=loaders["train"][0],
        train_batches=loaders["train"][1],
        valid_loader=loaders["valid"][0],
        train_stage=train_stage,
        data_fingerprint=fingerprint,
        nar_generator=nar_generator,
        steps_per_epoch_estimate=estimate_steps_per_epoch(train_cuts, cfg, world),
    )
    prepare_experiment_dir(run, processed_dir)
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
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(exp_dir / "tensorboard"))
        logger.info(
            "training train_stage %d (%s) on %d %s process(es): %d trainable parameters, "
            "%d train cuts, %d valid cuts, experiment %s",
            train_stage, {0: "AR + NAR", 1: "AR", 2: "NAR"}[train_stage], world,
            accelerator.device.type, sum(p.numel() for p in trainable), len(train_cuts),
            len(valid_cuts), exp_dir,
        )  # fmt: skip
    with stop_on_signals(run):
        try:
            return train_loop(run)
        finally:
            if run.writer is not None:
                run.writer.close()
            if run.progress is not None:
                run.progress.close()


def load_data(cfg: Config, processed_dir: Path, split: str, tokenizer: TextTokenizer):
    cuts = load_cuts(cfg, processed_dir, split)
    cuts, rejected = filter_cuts(
        cuts,
        cfg,
        min_duration=cfg.preprocess.min_duration,
        max_duration=cfg.preprocess.max_duration,
    )
    if rejected:
        shown = "; ".join(f"{cut_id}: {why}" for cut_id, why in rejected[:5])
        logger.warning("%s: left out %d cuts (%s%s)", split, len(rejected), shown,
                       " ..." if len(rejected) > 5 else "")  # fmt: skip
    if len(cuts) == 0:
        raise DataError(empty_split_message(cfg, processed_dir, split, rejected))
    check_phones(cuts, tokenizer)
    return cuts


def empty_split_message(cfg: Config, processed_dir: Path, split: str, rejected: list) -> str:
    """Which filters left no usable cut in a split, and what to change."""
    if not rejected:
        return f"the {split} split in {processed_dir} holds no cuts: rerun stage 1"
    filters = {  # filter_cuts' reasons -> the config keys behind them
        "duration": f"preprocess.min_duration / max_duration = [{cfg.preprocess.min_duration}, "
        f"{cfg.preprocess.max_duration}] s",
        "no custom": "stage-1 fields (custom['phones'], codes): rerun stage 1",
        "longer than": f"train.max_tokens = {cfg.train.max_tokens} codec frames",
    }
    counts = {}
    for _, why in rejected:
        key = next((f for k, f in filters.items() if why.startswith(k)), why)
        counts[key] = counts.get(key, 0) + 1
    return (
        f"no usable {split} cuts in {processed_dir}: all {len(rejected)} were left out by "
        + "; ".join(f"{key} ({n} cuts)" for key, n in counts.items())
        + ". Widen these limits in the config or give the split other utterances."
    )


def estimate_steps_per_epoch(cuts, cfg: Config, world: int) -> int:
    """For the progress bar's ETA (dynamic batches: a lower bound)."""
    if cfg.train.use_dynamic_batchsize:
        hop = cfg.preprocess.codec_hop_size / cfg.preprocess.sample_rate
        frames = sum(num_frames(c, hop) for c in cuts)
        batches = max(
            math.ceil(frames / cfg.train.max_tokens), math.ceil(len(cuts) / cfg.train.max_sentences)
        )
    else:
        batches = math.ceil(len(cuts) / cfg.train.batch_size)
    return max(1, math.ceil(batches / world / cfg.train.gradient_accumulation_step))


# --------------------------------------------------------------------------------------------
# RNG, checkpoint state
# --------------------------------------------------------------------------------------------


def rng_state(run: Run) -> dict:
    """This rank's RNG states as tensors / plain types (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "nar_generator": run.nar_generator.get_state(),
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
    run.nar_generator.set_state(state["nar_generator"])
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
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    if state["world_size"] != world:
        logger.warning(
            "checkpoint written by %d processes, resuming on %d: the data order per rank and "
            "the RNG streams change (training continues, but not bit for bit)",
            state["world_size"], world,
        )  # fmt: skip
    set_rng_state(run, state["rng"][rank if rank < len(state["rng"]) else 0])


def save(run: Run, *, name_epoch: int) -> Path | None:
    """Write a checkpoint (main process), update `best`, prune old ones; all ranks wait."""
    state = training_state(run)  # a collective on several processes: every rank calls it
    path = None
    if is_main(run):
        loss = run.epoch_loss_sum / max(run.epoch_loss_steps, 1)
        valid_loss = run.last_valid.get("loss") if run.last_valid.get("step") == run.step else None
        name = checkpoint_name(name_epoch, run.step, loss if math.isfinite(loss) else 0.0)
        meta = {
            "model": config_to_dict(run.cfg.model),
            "train_stage": run.train_stage,
            "epoch": name_epoch,
            "step": run.step,
            "loss": loss,
            "valid_loss": valid_loss,
            "data_fingerprint": run.data_fingerprint,
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


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def batch_loss(run: Run, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Per-frame loss (Amphion: loss_sum / sum(y_lens)) and the metrics of one batch."""
    device = run.accelerator.device
    x, x_lens, y, y_lens = (batch[k].to(device) for k in ("x", "x_lens", "y", "y_lens"))
    prompts = batch["nar_prompts"].to(device) if "nar_prompts" in batch else None  # prefix_mode 4
    loss_sum, metrics = run.model(
        x, x_lens, y, y_lens, train_stage=run.train_stage, generator=generator,
        nar_prompt_codes=prompts,
    )  # fmt: skip
    return loss_sum / y_lens.sum(), metrics


def all_ranks_true(run: Run, flag: bool) -> bool:
    if run.accelerator.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=run.accelerator.device)
    return bool(run.accelerator.reduce(t, reduction="sum").item() == run.accelerator.num_processes)


def lookahead(iterable):
    """Yield (item, is_last)."""
    it = iter(iterable)
    try:
        current = next(it)
    except StopIteration:
        return
    for following in it:
        yield current, False
        current = following
    yield current, True


def optimizer_step(run: Run, grads_finite: bool) -> tuple[str, torch.Tensor | None]:
    """unscale -> clip -> step -> scheduler -> zero_grad. Returns (outcome, grad norm): "stepped";
    "nonfinite" (a loss or the grad norm is not finite: no update); "overflow" (fp16: the loss
    scaler found inf/nan in the scaled grads, skipped the update and lowered the scale).

    Only an applied update advances the LR schedule (and, in train_one_epoch, the step count):
    `step` counts updates, so max_steps, the schedule and a resume mean the same with or without
    fp16 overflows."""
    acc, grad_norm = run.accelerator, None
    if grads_finite:
        max_norm = run.cfg.train.grad_clip if run.cfg.train.grad_clip > 0 else math.inf
        grad_norm = acc.clip_grad_norm_(run.trainable, max_norm)  # unscales fp16 grads first
        # fp16: inf grads are the loss scaler's business (it skips the step and rescales)
        grads_finite = bool(torch.isfinite(grad_norm)) or acc.scaler is not None
    outcome = "nonfinite"
    if grads_finite:
        run.optimizer.step()
        outcome = "overflow" if acc.optimizer_step_was_skipped else "stepped"
        if outcome == "stepped":
            run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return outcome, grad_norm


def rescale_partial_group(run: Run, accumulated: int) -> None:
    """The epoch's last group can hold fewer than gradient_accumulation_step micro-batches, each
    backpropagated as loss / accum: rescale so the update is the mean of the per-frame losses of
    the micro-batches really accumulated, like every full group's."""
    accum = run.cfg.train.gradient_accumulation_step
    if accumulated < accum:
        for p in run.trainable:
            if p.grad is not None:
                p.grad.mul_(accum / accumulated)


def train_one_epoch(run: Run) -> str:
    """Train until the epoch ends ("epoch_end"), max_steps ("max_steps") or a signal ("stopped")."""
    acc, cfg = run.accelerator, run.cfg.train
    accum = cfg.gradient_accumulation_step
    run.model.train()
    run.train_batches.set_position(run.epoch, run.batches_done)
    run.train_loader.dataset.set_epoch(run.epoch)  # prefix_mode 4 prompt draws
    group: list[dict] = []  # metrics of the micro-batches of the current optimizer step
    group_finite, group_cuts, t0 = True, [], time.perf_counter()
    for batch, is_last in lookahead(run.train_loader):
        run.batches_done += 1
        sync = len(group) + 1 == accum or is_last
        with contextlib.nullcontext() if sync else acc.no_sync(run.model):
            loss, metrics = batch_loss(run, batch, run.nar_generator)
            finite = all_ranks_true(run, bool(torch.isfinite(loss)))
            if finite and group_finite:
                acc.backward(loss / accum)
        group_finite &= finite
        group_cuts.extend(batch["cut_ids"])
        group.append({"loss": loss.detach(), "frames": batch["y_lens"].sum(), **metrics})
        if not sync:
            continue

        lr = run.scheduler.get_last_lr()[0]  # the lr this step uses
        if group_finite:
            rescale_partial_group(run, len(group))
        outcome, grad_norm = optimizer_step(run, group_finite)
        stepped = outcome == "stepped"
        if stepped:
            run.step += 1
            run.nonfinite_in_a_row = run.overflow_in_a_row = 0
            log_step(run, group, grad_norm, lr, time.perf_counter() - t0)
        elif outcome == "overflow":
            note_overflow(run, group_cuts)
        else:
            note_nonfinite(run, group, group_cuts)
        group, group_finite, group_cuts, t0 = [], True, [], time.perf_counter()

        if cfg.max_steps and run.step >= cfg.max_steps:
            return "max_steps"
        if not all_ranks_true(run, not run.stop_signal):
            return "stopped"
        if stepped and cfg.valid_interval and run.step % cfg.valid_interval == 0:
            validate(run)
            run.model.train()
        if stepped and cfg.save_interval and run.step % cfg.save_interval == 0:
            save(run, name_epoch=run.epoch)
    return "epoch_end"


def note_nonfinite(run: Run, group: list[dict], cut_ids: list[str]) -> None:
    run.nonfinite_in_a_row += 1
    run.nonfinite_total += 1
    limit = run.cfg.train.max_nonfinite_steps
    logger.warning(
        "non-finite loss or gradient at step %d (%d in a row, %d in total): step skipped; cuts %s",
        run.step + 1, run.nonfinite_in_a_row, run.nonfinite_total, cut_ids,
    )  # fmt: skip
    if is_main(run):
        append_jsonl(run, {"step": run.step + 1, "skipped": True, "cut_ids": cut_ids,
                           "loss": [float(g["loss"]) for g in group]})  # fmt: skip
        if run.writer is not None:
            run.writer.add_scalar("train/nonfinite_steps", run.nonfinite_total, run.step)
    if run.nonfinite_in_a_row >= limit:
        raise TrainingError(
            f"{run.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or "
            f"gradient (train.max_nonfinite_steps = {limit}); stopping. Last batch: cuts "
            f"{', '.join(cut_ids)}. Check these utterances, lower train.base_lr, or use bf16 "
            "instead of fp16."
        )


def note_overflow(run: Run, cut_ids: list[str]) -> None:
    """fp16: the scaler skipped an update (normal while it finds its scale); counted and logged,
    the step count and LR schedule do not advance. Endless overflows mean the gradients are
    not finite at any scale: stop rather than loop without training."""
    run.overflow_in_a_row += 1
    run.overflow_total += 1
    scale = run.accelerator.scaler.get_scale()
    logger.info("fp16 loss-scale overflow before step %d: update skipped, loss scale now %g "
                "(%d skipped in total)", run.step + 1, scale, run.overflow_total)  # fmt: skip
    if is_main(run):
        append_jsonl(run, {"step": run.step + 1, "skipped": True, "reason": "fp16 overflow",
                           "loss_scale": scale, "cut_ids": cut_ids})  # fmt: skip
        if run.writer is not None:
            run.writer.add_scalar("train/fp16_skipped_steps", run.overflow_total, run.step)
    if run.overflow_in_a_row >= MAX_OVERFLOWS_IN_A_ROW:
        raise TrainingError(
            f"{run.overflow_in_a_row} fp16 updates in a row overflowed (loss scale now {scale:g}):"
            f" the gradients are not finite. Last batch: cuts {', '.join(cut_ids)}. Lower "
            "train.base_lr or use bf16 instead of fp16."
        )


def summarise(group: list[dict]) -> dict[str, float]:
    """Mean per-frame loss of a step and per-part (AR/NAR) losses and top-10 accuracies."""
    out = {"loss": float(torch.stack([g["loss"].float() for g in group]).mean())}
    for part in METRIC_PARTS:
        frames = sum(float(g[f"{part}_frames"]) for g in group if f"{part}_frames" in g)
        if frames:
            out[f"{part}_loss"] = (
                sum(float(g[f"{part}_loss"]) for g in group if f"{part}_loss" in g) / frames
            )
            out[f"{part}_top10_acc"] = (
                sum(float(g[f"{part}_top10_correct"]) for g in group if f"{part}_frames" in g)
                / frames
            )
    stages = [int(g["nar_stage"]) for g in group if "nar_stage" in g]
    if stages:
        out["nar_stage"] = stages[-1]
    return out


def append_jsonl(run: Run, record: dict) -> None:
    with open(run.exp_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def log_step(
    run: Run, group: list[dict], grad_norm: torch.Tensor | None, lr: float, seconds: float
) -> None:
    stats = summarise(group)
    frames = sum(int(g["frames"]) for g in group)
    run.epoch_loss_sum += stats["loss"]
    run.epoch_loss_steps += 1
    if not is_main(run):
        return
    record = {"step": run.step, "epoch": run.epoch, **stats, "lr": lr,
              "grad_norm": float(grad_norm) if grad_norm is not None else None,
              "frames": frames}  # fmt: skip
    append_jsonl(run, record)
    if run.progress is not None:
        run.progress.update(1)
        run.progress.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
    if run.writer is not None and run.step % max(run.cfg.train.log_interval, 1) == 0:
        w = run.writer
        for key, value in stats.items():
            if key != "nar_stage":
                w.add_scalar(f"train/{key}", value, run.step)
        w.add_scalar("train/lr", lr, run.step)
        if grad_norm is not None:
            w.add_scalar("train/grad_norm", float(grad_norm), run.step)
        w.add_scalar(
            "train/frames_per_s",
            frames * run.accelerator.num_processes / max(seconds, 1e-9),
            run.step,
        )
        if torch.cuda.is_available():
            w.add_scalar(
                "train/gpu_memory_gib", torch.cuda.max_memory_allocated() / 2**30, run.step
            )


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Loss and top-10 accuracy over the valid cuts; fixed NAR draws, training RNGs untouched."""
    acc = run.accelerator
    run.model.eval()
    generator = torch.Generator().manual_seed(run.cfg.train.random_seed)
    sums: dict[str, float] = {}
    devices = [acc.device] if acc.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for batch in run.valid_loader:
            loss, metrics = batch_loss(run, batch, generator)
            frames = float(batch["y_lens"].sum())
            values = {"loss": float(loss.double() * frames), "frames": frames}
            values.update({k: float(v) for k, v in metrics.items() if k != "nar_stage"})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
    keys = sorted(sums)
    if acc.num_processes > 1:
        t = acc.reduce(
            torch.tensor([sums[k] for k in keys], device=acc.device, dtype=torch.float64), "sum"
        )
        sums = dict(zip(keys, t.tolist(), strict=True))
    result = {"loss": sums["loss"] / max(sums["frames"], 1.0)}
    for part in METRIC_PARTS:
        if sums.get(f"{part}_frames"):
            result[f"{part}_loss"] = sums[f"{part}_loss"] / sums[f"{part}_frames"]
            result[f"{part}_top10_acc"] = sums[f"{part}_top10_correct"] / sums[f"{part}_frames"]
    run.last_valid = {"step": run.step, **result}
    if is_main(run):
        parts = " | ".join(
            f"{p.upper()} loss {result[f'{p}_loss']:.4f} top-10 acc {result[f'{p}_top10_acc']:.3f}"
            for p in METRIC_PARTS if f"{p}_loss" in result
        )  # fmt: skip
        best = min(run.best_valid_loss, result["loss"])
        logger.info("validation @ epoch %d step %d: loss %.4f | %s | best %.4f",
                    run.epoch, run.step, result["loss"], parts, best)  # fmt: skip
        if run.writer is not None:
            for key, value in result.items():
                run.writer.add_scalar(f"valid/{key}", value, run.step)
            if run.cfg.evaluation.listen_utterances:  # a few samples to tensorboard, to listen
                model, batch = acc.unwrap_model(run.model), next(iter(run.valid_loader))
                write_listening_samples(model, batch, run.cfg, run.writer, run.step, acc.device)
    return result


def finished(run: Run) -> bool:
    cfg = run.cfg.train
    return bool(cfg.max_steps and run.step >= cfg.max_steps) or bool(
        cfg.max_epoch and run.epoch >= cfg.max_epoch
    )


def train_loop(run: Run) -> int:
    from tqdm import tqdm

    cfg = run.cfg.train
    epochs_total = cfg.max_epoch * run.steps_per_epoch_estimate if cfg.max_epoch else math.inf
    total = min(cfg.max_steps or math.inf, epochs_total)
    if is_main(run):
        run.progress = tqdm(
            total=None if math.isinf(total) else int(total), initial=run.step,
            desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
        )  # fmt: skip
    while not finished(run):
        status = train_one_epoch(run)
        if status == "stopped":
            path = save(run, name_epoch=run.epoch)
            if is_main(run):
                print(how_to_resume(run, path), flush=True)
            return 0
        if status == "epoch_end":
            validate(run)
            finished_epoch = run.epoch
            run.epoch, run.batches_done = run.epoch + 1, 0
            # Amphion's save_checkpoint_stride[0]: save every N epochs
            stride = max(cfg.save_checkpoint_stride[0], 1) if cfg.save_checkpoint_stride else 1
            if run.epoch % stride == 0:
                save(run, name_epoch=finished_epoch)
            run.epoch_loss_sum, run.epoch_loss_steps = 0.0, 0
        # "max_steps": the loop condition ends training
    if run.last_valid.get("step") != run.step:
        validate(run)
    last = list_checkpoints(run.exp_dir)
    if not last or read_meta(last[-1])["step"] != run.step:
        save(run, name_epoch=run.epoch)
    if is_main(run):
        logger.info("training finished at epoch %d, step %d: %s", run.epoch, run.step, run.exp_dir)
    return 0


def how_to_resume(run: Run, path: Path | None) -> str:
    return (
        f"Training stopped by {run.stop_signal} at step {run.step}; checkpoint saved to {path}.\n"
        f"Resume with: sh egs/tts/VALLE/run.sh --config {Path(run.args.config).resolve()} "
        f"--stage 2 --name {run.args.exp_name} --model_train_stage {run.train_stage} --resume true"
        + (f" --gpu {run.args.gpu}" if run.args.gpu else "")
    )


@contextlib.contextmanager
def stop_on_signals(run: Run):
    """SIGINT / SIGTERM: finish the current optimizer step, save, exit 0. A second one aborts."""

    def handler(signum, frame):
        if run.stop_signal:
            raise KeyboardInterrupt
        run.stop_signal = signal.Signals(signum).name
        logger.warning("%s received: finishing the current step, then saving a checkpoint "
                       "(send it again to abort without saving)", run.stop_signal)  # fmt: skip

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def largest_batch(cuts, cfg: Config) -> list:
    """The cuts of the biggest batch the sampler can form: the longest ones, as many as fit."""
    train, hop = cfg.train, cfg.preprocess.codec_hop_size / cfg.preprocess.sample_rate
    longest = sorted(cuts, key=lambda c: -num_frames(c, hop))
    if not train.use_dynamic_batchsize:
        return longest[: train.batch_size]
    chosen, frames = [], 0
    for cut in longest:
        n = num_frames(cut, hop)
        if len(chosen) >= train.max_sentences or (chosen and frames + n > train.max_tokens):
            break
        chosen.append(cut)
        frames += n
    return chosen


def check_largest_batch_fits(run: Run, cuts) -> None:
    """CUDA (opt out: train.check_largest_batch false): run forward + backward on the largest
    batch the sampler can form, next to a stand-in for AdamW's state (2 tensors per trainable
    parameter) unless the optimizer already holds it (resume), so an out-of-memory happens now
    with advice instead of hours into training. Leaves no trace: RNGs forked, grads dropped,
    buffers (BatchNorm running statistics of add_prenet) restored."""
    from lhotse import CutSet

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
