"""The engine's data side: lhotse samplers over CutSets, exact mid-epoch resume, signal-safe
data loaders (any recipe whose cuts carry codec codes; the recipe's dataset makes the batches).

A split comes as a `SplitData`: its cuts (a CutSet, lazy or eager) and what start-up needs to
know about them without reading them (number of cuts and codec frames, the longest cuts for the
largest-batch check, duration-bucket bins). A lazy split (stage-1 output with an index,
utils/cut_shards.py) streams its shard manifests through `EpochShards` in an order drawn from
`train.random_seed` + epoch alone (lhotse's `CutSet.from_files` draws it from how often the set
was iterated, which a resumed run cannot replay), its filters applied lazily; a rank then holds
at most `LAZY_BUFFER` cuts, whatever the corpus size. A plain CutSet is an eager split.

Batches come from lhotse samplers: `DynamicBucketingSampler` when `train.use_dynamic_batchsize`
(at most `max_tokens` codec frames and `max_sentences` utterances per batch, `num_buckets` duration
buckets, bins from the index when lazy), else `batch_size` utterances (`SimpleCutSampler`; lazy:
`DynamicCutSampler` with max_cuts, which streams). All shuffle with `train.random_seed` + epoch
and give every rank its own batches (`world_size`, `rank`). A split too small for `num_buckets`
buckets gets fewer (each bucket must be able to fill a batch of `max_sentences`), or with fewer
than 2 such buckets `DynamicCutSampler` (same limits, no buckets); `make_sampler` logs which one
and why.

`ResumableBatches` wraps the sampler so a checkpoint can record the exact position in the epoch:
the trainer counts the batches it has *consumed* (dataloader workers prefetch ahead of that, so
the sampler's own counters would be too far) and a resumed run re-draws the same epoch order and
skips that many batches without loading any audio or codes.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import signal
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from lhotse import CutSet
from lhotse.array import TemporalArray
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

from utils.config import Config
from utils.cut_shards import code_frames

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
    frames = code_frames(cut)
    return frames if frames is not None else int(round(cut.duration / hop))


LAZY_BUFFER = 20000  # cuts a lazy sampler holds at a time (bucketing / shuffle buffer)


class EpochShards:
    """Shard manifests read one after the other, lazily, in an order drawn from (seed, epoch)
    only: a resumed run re-draws the same order (see the module docstring)."""

    def __init__(self, manifests: list[Path]):
        self.manifests = list(manifests)
        self.seed, self.shuffle, self.epoch = 0, False, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[Path]:
        order = list(self.manifests)
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def __iter__(self) -> Iterator[Cut]:
        for path in self.order():
            yield from CutSet.from_jsonl_lazy(path)


@dataclass
class SplitData:
    """One split for the engine (see the module docstring). `longest`: the longest cuts (at
    least a largest batch's worth), `durations`: a sample of cut durations (bucket bins)."""

    cuts: CutSet
    num_cuts: int
    frames: int
    longest: list[Cut]
    durations: list[float] = field(default_factory=list)
    shards: EpochShards | None = None  # lazy splits only

    @classmethod
    def eager(cls, cuts: CutSet, cfg: Config) -> SplitData:
        """What the engine knows of an eager CutSet: counted from its cuts."""
        hop = hop_seconds(cfg)
        return cls(cuts, len(cuts), sum(num_frames(c, hop) for c in cuts), list(cuts))


def split_data(data: SplitData | CutSet, cfg: Config) -> SplitData:
    """A recipe's `load_data` may return a plain (eager) CutSet."""
    return data if isinstance(data, SplitData) else SplitData.eager(data, cfg)


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
    data: SplitData | CutSet,
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
    data = split_data(data, cfg)
    if data.shards is not None:
        data.shards.seed, data.shards.shuffle = cfg.train.random_seed, shuffle
    train, cuts = cfg.train, data.cuts
    common = dict(
        shuffle=shuffle,
        drop_last=drop_last,
        seed=train.random_seed,
        world_size=world_size,
        rank=rank,
    )
    lazy = {} if data.shards is None else {"shuffle_buffer_size": LAZY_BUFFER}
    if not train.use_dynamic_batchsize and data.shards is None:
        return SimpleCutSampler(cuts, max_cuts=train.batch_size, **common)
    if not train.use_dynamic_batchsize:
        return DynamicCutSampler(cuts, max_cuts=train.batch_size, **lazy, **common)
    hop = hop_seconds(cfg)
    # max_tokens counts codec frames, like Amphion
    limits = dict(max_duration=train.max_tokens * hop, max_cuts=train.max_sentences)
    buckets, why = num_buckets_for(data.num_cuts, cfg)
    if rank == 0:
        chosen = f"{buckets} duration buckets" if buckets else "no duration buckets"
        logger.info("%s: dynamic batches with %s (%s)", name or "cuts", chosen, why)
    with warnings.catch_warnings():  # the cuts are eager on purpose: filtered and reported
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet")
        if not buckets:
            return DynamicCutSampler(cuts, **limits, **lazy, **common)
        if data.shards is None:
            return DynamicBucketingSampler(cuts, **limits, num_buckets=buckets, **common)
        sample = [SimpleNamespace(duration=d) for d in data.durations]
        bins = [float(b) for b in estimate_duration_buckets(sample, buckets)]  # plain floats
        return DynamicBucketingSampler(
            cuts, **limits, duration_bins=bins, buffer_size=LAZY_BUFFER, **common
        )


class ResumableBatches:
    """Iterable of CutSet batches of one epoch that can start at a recorded position.

    `set_position(epoch, batches_done)` then `iter()` yields the epoch's batches after the first
    `batches_done` (the sampler, and a lazy split's shard order, re-draw the same order from
    seed + epoch; skipped batches load no codes)."""

    def __init__(self, sampler: CutSampler, shards: EpochShards | None = None):
        self.sampler, self.shards = sampler, shards
        self.epoch = 0
        self.skip = 0

    def set_position(self, epoch: int, batches_done: int = 0) -> None:
        self.epoch, self.skip = epoch, batches_done

    def __iter__(self) -> Iterator[CutSet]:
        if self.shards is not None:
            self.shards.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        batches = iter(self.sampler)
        skip, self.skip = self.skip, 0
        # only next(): a lhotse sampler restarts its epoch whenever iter() is called on it again
        for drawn in itertools.count():
            try:
                batch = next(batches)
            except StopIteration:
                if not drawn:  # a lazy split whose cuts the filters all left out
                    raise DataError(
                        "the split gave no batch: every cut was left out (see the "
                        "warnings above); widen the limits named there"
                    ) from None
                return
            if skip:
                skip -= 1
                continue
            yield batch

    def describe(self) -> dict:
        """What must be the same for a resumed run to draw the same batches."""
        sampler = self.sampler
        return {
            "sampler": type(sampler).__name__,
            "duration_bins": [float(b) for b in getattr(sampler, "duration_bins", None) or []],
            "shards": [p.name for p in self.shards.manifests] if self.shards else None,
        }

    def state_dict(self, epoch: int, batches_done: int) -> dict:
        """Position (what resume uses), what the batches depend on (`check_state`), and the
        lhotse sampler's own state (its settings and the world size / rank)."""
        return {
            "epoch": epoch,
            "batches_done": batches_done,
            **self.describe(),
            "lhotse": self.sampler.state_dict(),
        }

    def check_state(self, state: dict) -> list[str]:
        """What differs between a checkpoint's sampler state and this sampler (those settings
        change the batches of a resumed epoch); [] when resume is exact. A checkpoint of before
        these keys (position only) is taken as it is."""
        ours, theirs = self.describe(), state
        diffs = [f"{k}: {theirs[k]!r} -> {ours[k]!r}" for k in ours
                 if k in theirs and theirs[k] != ours[k]]  # fmt: skip
        keys = ("max_duration", "max_cuts", "shuffle", "seed", "drop_last")
        old, new = theirs.get("lhotse", {}), self.sampler.state_dict()
        diffs += [f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in keys
                  if k in old and old[k] != new.get(k)]  # fmt: skip
        return diffs


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


def largest_batch(cuts: Iterable[Cut], cfg: Config) -> list[Cut]:
    """The cuts of the biggest batch the sampler can form: the longest ones, as many as fit
    (`cuts`: the split's, or its longest, `SplitData.longest`)."""
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


def estimate_steps_per_epoch(data: SplitData | CutSet, cfg: Config, world: int) -> int:
    """For the progress bar's ETA (dynamic batches: a lower bound; lazy splits count the cuts
    before the training filters)."""
    data = split_data(data, cfg)
    if cfg.train.use_dynamic_batchsize:
        batches = max(
            math.ceil(data.frames / cfg.train.max_tokens),
            math.ceil(data.num_cuts / cfg.train.max_sentences),
        )
    else:
        batches = math.ceil(data.num_cuts / cfg.train.batch_size)
    return max(1, math.ceil(batches / world / cfg.train.gradient_accumulation_step))
