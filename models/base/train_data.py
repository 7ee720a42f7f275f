"""The engine's data side: lhotse samplers over CutSets, exact mid-epoch resume, signal-safe
data loaders (any recipe whose cuts carry codec codes; the recipe's dataset makes the batches).

Batches come from lhotse samplers: `DynamicBucketingSampler` when `train.use_dynamic_batchsize`
(at most `max_tokens` codec frames and `max_sentences` utterances per batch, `num_buckets` duration
buckets), else `SimpleCutSampler` with `batch_size` utterances. Both shuffle with
`train.random_seed` + epoch and give every rank its own shard (`world_size`, `rank`). A split too
small for `num_buckets` buckets gets fewer (each bucket must be able to fill a batch of
`max_sentences`), or with fewer than 2 such buckets `DynamicCutSampler` (same limits, no
buckets); `make_sampler` logs which one and why.

`ResumableBatches` wraps the sampler so a checkpoint can record the exact position in the epoch:
the trainer counts the batches it has *consumed* (dataloader workers prefetch ahead of that, so
the sampler's own counters would be too far) and a resumed run re-draws the same epoch order and
skips that many batches without loading any audio or codes.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import warnings
from collections.abc import Iterator

import torch
from lhotse import CutSet
from lhotse.array import TemporalArray, seconds_to_frames
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler

from utils.config import Config

logger = logging.getLogger(__name__)


class DataError(RuntimeError):
    """Stage-1 output is missing or unusable; the message names the file and what to do."""


def codes_of(cut: Cut) -> TemporalArray | None:
    """The cut's codec codes (`cut.custom["codes"]`), None when it has none."""
    codes = cut.custom.get("codes") if cut.custom else None
    return codes if isinstance(codes, TemporalArray) else None


def hop_seconds(cfg: Config) -> float:
    """Seconds per codec frame."""
    return cfg.preprocess.codec_hop_size / cfg.preprocess.sample_rate


def num_frames(cut: Cut, hop: float) -> int:
    """Codec frames of the cut: what `cut.load_codes()` returns (lhotse's count from duration;
    `hop` seconds per frame for a cut without codes)."""
    codes = codes_of(cut)
    if codes is not None:
        return seconds_to_frames(cut.duration, codes.frame_shift, max_index=codes.num_frames)
    return int(round(cut.duration / hop))


def num_buckets_for(num_cuts: int, cfg: Config) -> tuple[int, str]:
    """Duration buckets a split of `num_cuts` can fill (each at least one batch of
    max_sentences), at most train.num_buckets; below 2 bucketing is off. (number, why)."""
    train = cfg.train
    fillable = num_cuts // train.max_sentences
    if train.num_buckets >= 2 and fillable >= train.num_buckets:
        return train.num_buckets, f"train.num_buckets = {train.num_buckets}"
    why = (f"{num_cuts} cuts fill {fillable} bucket(s) of train.max_sentences = "
           f"{train.max_sentences} (train.num_buckets = {train.num_buckets})")  # fmt: skip
    return (fillable if fillable >= 2 and train.num_buckets >= 2 else 0), why


def make_sampler(
    cuts: CutSet,
    cfg: Config,
    *,
    shuffle: bool,
    world_size: int = 1,
    rank: int = 0,
    drop_last: bool = False,
    name: str = "",
) -> CutSampler:
    """The lhotse sampler the config asks for (see module docstring); logs the dynamic-batching
    choice for split `name` (rank 0)."""
    train = cfg.train
    common = dict(
        shuffle=shuffle,
        drop_last=drop_last,
        seed=train.random_seed,
        world_size=world_size,
        rank=rank,
    )
    if not train.use_dynamic_batchsize:
        return SimpleCutSampler(cuts, max_cuts=train.batch_size, **common)
    hop = hop_seconds(cfg)
    # max_tokens counts codec frames, like Amphion
    limits = dict(max_duration=train.max_tokens * hop, max_cuts=train.max_sentences)
    buckets, why = num_buckets_for(len(cuts), cfg)
    if rank == 0:
        chosen = f"{buckets} duration buckets" if buckets else "no duration buckets"
        logger.info("%s: dynamic batches with %s (%s)", name or "cuts", chosen, why)
    with warnings.catch_warnings():  # the cuts are eager on purpose: filtered and reported
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet")
        if not buckets:
            return DynamicCutSampler(cuts, **limits, **common)
        return DynamicBucketingSampler(cuts, **limits, num_buckets=buckets, **common)


class ResumableBatches:
    """Iterable of CutSet batches of one epoch that can start at a recorded position.

    `set_position(epoch, batches_done)` then `iter()` yields the epoch's batches after the first
    `batches_done` (the sampler re-draws the same order from seed + epoch)."""

    def __init__(self, sampler: CutSampler):
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0

    def set_position(self, epoch: int, batches_done: int = 0) -> None:
        self.epoch, self.skip = epoch, batches_done

    def __iter__(self) -> Iterator[CutSet]:
        self.sampler.set_epoch(self.epoch)
        batches = iter(self.sampler)
        skip, self.skip = self.skip, 0
        # only next(): a lhotse sampler restarts its epoch whenever iter() is called on it again
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            if skip:
                skip -= 1
                continue
            yield batch

    def state_dict(self, epoch: int, batches_done: int) -> dict:
        """Position (what resume uses) plus the lhotse sampler's own settings (for reference)."""
        return {
            "epoch": epoch,
            "batches_done": batches_done,
            "lhotse": self.sampler.state_dict(),
        }


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def ignore_stop_signals(worker_id: int) -> None:
    """Dataloader workers leave Ctrl-C / SIGTERM to the trainer, which finishes the step and
    saves; a worker killed by the signal would break that (torch ends orphaned workers itself).
    The worker starts with them blocked (`StopSafeDataLoader`): one that came meanwhile is
    dropped here, after SIG_IGN."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class StopSafeDataLoader(torch.utils.data.DataLoader):
    """Starts its workers with SIGINT / SIGTERM blocked, so that a signal sent to the whole
    process group (a batch scheduler's SIGTERM, Ctrl-C) while a worker is still starting, before
    `ignore_stop_signals` runs in it, cannot kill it (each epoch and validation start workers)."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:  # the trainer's own pending signal is delivered here, to its handler
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def auto_num_workers(requested: int, num_processes: int) -> int:
    """`train.num_workers`; -1 = the CPU cores left per training process (at most 4)."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(4, (cores or 1) // max(num_processes, 1) - 1))


def make_loader(
    dataset: torch.utils.data.Dataset, batches: ResumableBatches, num_workers: int
) -> torch.utils.data.DataLoader:
    """A data loader over a map-style lhotse dataset (`dataset[cutset]` -> one batch)."""
    return StopSafeDataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        # each new iterator draws a worker base seed: from its own generator, not torch's global
        # RNG, so starting an epoch (or a resumed one) never shifts the dropout random stream
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=ignore_stop_signals,
    )


def largest_batch(cuts: CutSet, cfg: Config) -> list[Cut]:
    """The cuts of the biggest batch the sampler can form: the longest ones, as many as fit."""
    train, hop = cfg.train, hop_seconds(cfg)
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


def estimate_steps_per_epoch(cuts: CutSet, cfg: Config, world: int) -> int:
    """For the progress bar's ETA (dynamic batches: a lower bound)."""
    if cfg.train.use_dynamic_batchsize:
        frames = sum(num_frames(c, hop_seconds(cfg)) for c in cuts)
        batches = max(
            math.ceil(frames / cfg.train.max_tokens), math.ceil(len(cuts) / cfg.train.max_sentences)
        )
    else:
        batches = math.ceil(len(cuts) / cfg.train.batch_size)
    return max(1, math.ceil(batches / world / cfg.train.gradient_accumulation_step))
