"""The engine's logs: train_log.jsonl (one line per optimizer step, or per skipped one),
tensorboard scalars, the progress bar, and the warnings and limits of skipped steps.

Metrics arrive as sums per micro-batch (models/base/train_recipe.py); `per_frame` turns the
sums of a step or of a whole validation into per-frame values, the same way for both.
"""

from __future__ import annotations

import json
import logging

import torch

from models.base.train_state import Run, TrainingError, is_main

logger = logging.getLogger("codectts.train")

# fp16 scaler skips in a row before giving up: 2**-32 of the start scale, far below any real one
MAX_OVERFLOWS_IN_A_ROW = 32


def add_sums(sums: dict[str, float], metrics: dict) -> None:
    """Add a batch's metric sums (numbers or 0-d tensors) into `sums`."""
    for key, value in metrics.items():
        sums[key] = sums.get(key, 0.0) + float(value)


def per_frame(sums: dict[str, float], parts: tuple[str, ...]) -> dict[str, float]:
    """{p}_loss and {p}_top10_acc per frame of each part p that has frames in `sums`."""
    out = {}
    for part in parts:
        if frames := sums.get(f"{part}_frames"):
            out[f"{part}_loss"] = sums[f"{part}_loss"] / frames
            out[f"{part}_top10_acc"] = sums[f"{part}_top10_correct"] / frames
    return out


def summarise(group: list[dict], parts: tuple[str, ...]) -> dict[str, float]:
    """Mean per-frame loss of a step and the per-part losses and top-10 accuracies of its
    micro-batches (VALL-E: the NAR stage of the last one)."""
    sums: dict[str, float] = {}
    for g in group:
        add_sums(sums, {k: v for k, v in g.items() if k not in ("loss", "frames", "nar_stage")})
    out = {"loss": float(torch.stack([g["loss"].float() for g in group]).mean())}
    out.update(per_frame(sums, parts))
    stages = [int(g["nar_stage"]) for g in group if "nar_stage" in g]
    if stages:
        out["nar_stage"] = stages[-1]
    return out


def log_skipped(run: Run, record: dict, counter: str, total: int) -> None:
    """A skipped step's train_log.jsonl line and its tensorboard count (main process)."""
    if is_main(run):
        append_jsonl(run, {"step": run.step + 1, "skipped": True, **record})
        if run.writer is not None:
            run.writer.add_scalar(f"train/{counter}", total, run.step)


def note_nonfinite(run: Run, group: list[dict], cut_ids: list[str]) -> None:
    run.nonfinite_in_a_row += 1
    run.nonfinite_total += 1
    limit = run.cfg.train.max_nonfinite_steps
    logger.warning(
        "non-finite loss or gradient at step %d (%d in a row, %d in total): step skipped; cuts %s",
        run.step + 1, run.nonfinite_in_a_row, run.nonfinite_total, cut_ids,
    )  # fmt: skip
    losses = [float(g["loss"]) for g in group]
    log_skipped(run, {"cut_ids": cut_ids, "loss": losses}, "nonfinite_steps", run.nonfinite_total)
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
    record = {"reason": "fp16 overflow", "loss_scale": scale, "cut_ids": cut_ids}
    log_skipped(run, record, "fp16_skipped_steps", run.overflow_total)
    if run.overflow_in_a_row >= MAX_OVERFLOWS_IN_A_ROW:
        raise TrainingError(
            f"{run.overflow_in_a_row} fp16 updates in a row overflowed (loss scale now {scale:g}):"
            f" the gradients are not finite. Last batch: cuts {', '.join(cut_ids)}. Lower "
            "train.base_lr or use bf16 instead of fp16."
        )


def append_jsonl(run: Run, record: dict) -> None:
    with open(run.exp_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def log_step(
    run: Run, group: list[dict], grad_norm: torch.Tensor | None, lr: float, seconds: float
) -> None:
    stats = summarise(group, run.recipe.metric_parts)
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


def log_validation(run: Run, result: dict[str, float]) -> None:
    parts = " | ".join(
        f"{p.upper()} loss {result[f'{p}_loss']:.4f} top-10 acc {result[f'{p}_top10_acc']:.3f}"
        for p in run.recipe.metric_parts if f"{p}_loss" in result
    )  # fmt: skip
    best = min(run.best_valid_loss, result["loss"])
    logger.info("validation @ epoch %d step %d: loss %.4f | %s | best %.4f",
                run.epoch, run.step, result["loss"], parts, best)  # fmt: skip
    if run.writer is not None:
        for key, value in result.items():
            run.writer.add_scalar(f"valid/{key}", value, run.step)
