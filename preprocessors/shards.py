"""What every recipe's stage 1 does the same way with its shards and its done record.

VALL-E (preprocessors/pipeline.py + tokenize.py), Parler-TTS (parler_pipeline.py +
parler_tokens.py) and TokTTS (toktts_data.py) differ in what a shard holds and how it is encoded;
they share:

* `stable_shards`: membership by crc32(cut id) mod S, so a filter change only touches the shards
  whose members change;
* `CodecShard`, `audio_reason`, `write_shard_files`: a shard of work, its rejection reasons and
  its files after the h5 (cuts, rejections, then the `.done` marker, last);
* `claim_device`, `run_pool`: the worker processes (one codec per process, devices round-robin);
* `finish_stage1`: the resolved config, then the stage's done record (written last).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import torch
from lhotse import CutSet

from utils.audio import AudioError
from utils.config_loader import save_config
from utils.fileio import atomic_path, atomic_write_text

DONE_FILE = "stage1.done.json"


@dataclass
class CodecShard:
    """One shard of a stage 1's codec pass (a worker process's unit of work and of resume); a
    recipe's own task adds what its encoder needs."""

    dataset: str
    index: int
    name: str  # "shard-00003-<fingerprint>"
    out_dir: str
    cuts: list[dict]  # lhotse cut dicts

    @property
    def done_path(self) -> Path:
        return Path(self.out_dir) / f"{self.name}.done"

    @property
    def seconds(self) -> float:
        return sum(c["duration"] for c in self.cuts)


def stable_shards(
    items: Iterable, num_candidates: int, shard_size: int, key: Callable = attrgetter("id")
) -> dict[int, list]:
    """{shard index: its items sorted by `.id`}: an item goes to shard crc32(key(item)) mod S,
    S = ceil(num_candidates / shard_size) from a count that filters do not change."""
    num = max(1, math.ceil(num_candidates / shard_size))
    members: dict[int, list] = {}
    for item in items:
        members.setdefault(zlib.crc32(key(item).encode()) % num, []).append(item)
    return {i: sorted(members[i], key=lambda item: item.id) for i in sorted(members)}


def audio_reason(err: AudioError) -> str:
    """The rejection reason of an audio file `load_audio` refused."""
    if "zero-length" in err.reason:
        return "zero_length_audio"
    if "NaN" in err.reason:
        return "non_finite_audio"
    return "unreadable_audio"


def write_shard_files(out_dir: Path, name: str, cuts: list, rejected: list, record: dict) -> None:
    """A shard's `.jsonl.gz` cuts, `.rejected.jsonl`, then its `.done` record (last: a shard
    without it is redone), each written atomically."""
    with atomic_path(out_dir / f"{name}.jsonl.gz") as tmp:
        CutSet.from_cuts(cuts).to_file(tmp)
    atomic_write_text(
        out_dir / f"{name}.rejected.jsonl",
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected),
    )
    atomic_write_text(out_dir / f"{name}.done", json.dumps(record) + "\n")


def claim_device(devices: list[str], threads: int, counter) -> str:
    """In a pool initializer: this process's device (round-robin over `devices` by start order,
    `counter` a shared mp.Value), made current, and its torch thread count."""
    torch.set_num_threads(max(1, threads))
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    device = devices[slot % len(devices)]
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return device


def run_pool(
    init: Callable, init_args: tuple, run: Callable, tasks: list, processes: int
) -> Iterator[dict]:
    """`run(task)` of every task in `processes` spawned workers, each set up by
    `init(*init_args, threads, counter)`; yields their results as they finish."""
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    threads = max(1, (os.cpu_count() or 1) // processes)
    with ctx.Pool(processes, init, (*init_args, threads, counter)) as pool:
        yield from pool.imap_unordered(run, tasks)


def finish_stage1(cfg, out: Path, record: dict, start: float, log: logging.Logger) -> None:
    """The last step of a stage 1: its resolved config, then the done record (last: a stage 1
    without it is incomplete)."""
    save_config(cfg, out / "config.json")
    atomic_write_text(out / DONE_FILE, json.dumps(record, indent=2) + "\n")
    log.info("Stage 1 finished in %.1f s -> %s", time.time() - start, out)
