"""The engine's training loop: epochs, optimizer steps, validation cadence, stop on a signal.

One optimizer step (gradient accumulation over `train.gradient_accumulation_step` batches):

    loss = the recipe's per-frame loss    (VALL-E: Amphion's loss_sum / sum(y_lens))
    accelerator.backward(loss / accum)   (no DDP all-reduce until the last micro-batch)
    clip_grad_norm_ (unscales first)  ->  optimizer.step  ->  scheduler.step  ->  zero_grad

so an update is the mean over its micro-batches of their per-frame losses; the epoch's last group
may hold fewer than `accum` micro-batches and is rescaled to the mean of those it holds. Under
fp16 the loss scaler may skip an update (inf/nan in the scaled grads): it is logged and counted
(`"skipped": true, "reason": "fp16 overflow"` in train_log.jsonl) and advances neither the step
count nor the LR schedule (`step` counts applied updates). A non-finite loss or gradient skips
the step (`train.max_nonfinite_steps` in a row stop training, naming the cuts).

Validation every `train.valid_interval` steps and at each epoch end; a checkpoint every
`train.save_interval` steps, every `save_checkpoint_stride[0]` epochs, at the end and on
SIGINT / SIGTERM to any rank (after the current step, on every rank; then the run exits 0 and
says how to resume).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path

import torch

from models.base.train_log import (
    add_sums,
    log_step,
    log_validation,
    note_nonfinite,
    note_overflow,
    per_frame,
)
from models.base.train_state import Run, is_main, save
from utils.checkpoint import list_checkpoints, read_meta

logger = logging.getLogger("codectts.train")


def batch_loss(run: Run, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The recipe's per-frame loss and metric sums of one batch."""
    return run.recipe.batch_loss(run.model, batch, generator, run.accelerator.device)


def all_ranks_true(run: Run, flag: bool) -> bool:
    if run.accelerator.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=run.accelerator.device)
    return bool(run.accelerator.reduce(t, reduction="sum").item() == run.accelerator.num_processes)


def stop_reason(run: Run) -> str:
    """The signal(s) that stopped training, the same text on every rank: "SIGTERM" when every
    rank got it, else e.g. "SIGTERM to rank 1" (a collective: every rank calls it)."""
    if run.accelerator.num_processes == 1:
        return run.stop_signal
    from accelerate.utils import gather_object

    got = gather_object([(run.stop_signal, run.accelerator.process_index)])
    signalled = [(name, rank) for name, rank in got if name]
    names = "/".join(sorted({name for name, _ in signalled}))
    if len(signalled) == run.accelerator.num_processes:
        return names
    return f"{names} to rank {', '.join(str(rank) for _, rank in signalled)}"


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
    if hasattr(run.train_loader.dataset, "set_epoch"):  # per-epoch draws (VALL-E: mode-4 prompts)
        run.train_loader.dataset.set_epoch(run.epoch)
    group: list[dict] = []  # metrics of the micro-batches of the current optimizer step
    group_finite, group_cuts, t0 = True, [], time.perf_counter()
    for batch, is_last in lookahead(run.train_loader):
        run.batches_done += 1
        sync = len(group) + 1 == accum or is_last
        with contextlib.nullcontext() if sync else acc.no_sync(run.model):
            loss, metrics = batch_loss(run, batch, run.generator)
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
        if not all_ranks_true(run, not run.stop_signal):  # a signal to any rank stops all
            run.stop_signal = stop_reason(run)
            return "stopped"
        if stepped and cfg.valid_interval and run.step % cfg.valid_interval == 0:
            validate(run)
            run.model.train()
        if stepped and cfg.save_interval and run.step % cfg.save_interval == 0:
            save(run, name_epoch=run.epoch)
    return "epoch_end"


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Loss and metrics over the valid cuts (all ranks); fixed random draws, training RNGs
    untouched. The recipe's `on_validation` hook runs last."""
    acc = run.accelerator
    run.model.eval()
    generator = torch.Generator().manual_seed(run.cfg.train.random_seed)
    sums: dict[str, float] = {}
    devices = [acc.device] if acc.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for batch in run.valid_loader:
            loss, metrics = batch_loss(run, batch, generator)
            frames = float(batch["y_lens"].sum())
            add_sums(sums, {"loss": float(loss.double() * frames), "frames": frames})
            add_sums(sums, {k: v for k, v in metrics.items() if k != "nar_stage"})
    keys = sorted(sums)
    if acc.num_processes > 1:
        t = acc.reduce(
            torch.tensor([sums[k] for k in keys], device=acc.device, dtype=torch.float64), "sum"
        )
        sums = dict(zip(keys, t.tolist(), strict=True))
    result = {"loss": sums["loss"] / max(sums["frames"], 1.0)}
    result.update(per_frame(sums, run.recipe.metric_parts))
    run.last_valid = {"step": run.step, **result}
    if is_main(run):
        log_validation(run, result)
    run.recipe.on_validation(run, result)
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
            else:  # each node's own output says that its ranks stopped cleanly
                logger.info("rank %d stopped with the others at step %d (%s)",
                            run.accelerator.process_index, run.step, run.stop_signal)  # fmt: skip
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
        f"Resume with: {run.recipe.run_command} --config {Path(run.args.config).resolve()} "
        f"--stage 2 --name {run.args.exp_name}{run.recipe.resume_options(run.train_stage)} "
        "--resume true" + (f" --gpu {run.args.gpu}" if run.args.gpu else "")
    )


# A stop sent to a whole Slurm job (scancel, --signal: every process of the job step) reaches a
# rank twice: directly, and forwarded by its launcher (torchrun / accelerate launch send SIGTERM
# to their workers, which run in sessions of their own, when they get a signal). Repeats this
# soon after the first are that same request.
REPEAT_GRACE_S = 5.0


@contextlib.contextmanager
def stop_on_signals(run: Run):
    """SIGINT / SIGTERM: finish the current optimizer step, save, exit 0 (every rank: the ranks
    agree on stopping after each step, train_one_epoch). A second one, REPEAT_GRACE_S or more
    after the first, aborts."""
    first = [0.0]  # monotonic time of the first signal

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if run.stop_signal and time.monotonic() - first[0] >= REPEAT_GRACE_S:
            raise KeyboardInterrupt
        if run.stop_signal:
            logger.info("%s again (forwarded by the launcher?): already stopping", name)
            return
        run.stop_signal, first[0] = name, time.monotonic()
        logger.warning("%s received: finishing the current step, then saving a checkpoint "
                       "(send it again after %g s to abort without saving)", name,
                       REPEAT_GRACE_S)  # fmt: skip

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
