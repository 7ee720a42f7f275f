"""Benchmark: training start-up on a large corpus, eager one-file manifests vs lazy shards.

    .venv/bin/python -m bench.data_scale [--cuts 1000000] [--sizes 10000,100000,1000000]

For each size, synthetic stage-1 output (no audio) is written to a temp dir, once per layout:
the one-file `cuts_train.jsonl.gz` of stage-1 manifest format <= 2 (read as today: eager
`CutSet.from_file`, filters, phone check, counts over every cut, sampler) and the per-shard
`cuts_train.NNNNNN.jsonl.gz` + index of format 3 (`utils/cut_shards.py`, read lazily). Cuts look
like stage 1's (recording, supervision, phones, a codes TemporalArray); to write fast, the codes
of a shard are a few arrays in one h5 file that its cuts share (start-up reads no codes but the
first batch's). Each case runs in a fresh process (one training rank, `--threads` torch threads):
the same calls as training (`VALLETrainRecipe.load_data` for the train split,
`make_dataloader`, `estimate_steps_per_epoch`, `largest_batch`, then the first batch), timed up
to the first batch; peak RSS is the process's high-water mark minus its size after the imports.
`--eager_max` caps the eager sizes (its time and memory grow with the corpus; say where it stops).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._timing import bench_parser, device_of, load_average, load_note, table_row  # noqa: E402

PHONES = [chr(c) for c in range(ord("a"), ord("z") + 1)]
HOP = 320 / 24000
CODES_PER_SHARD = 8  # distinct code arrays in a shard's h5 (its cuts share them)


def synthetic_cuts(n: int, h5_of, seed: int = 0):
    """n stage-1-like cuts (ids sorted), cut i's codes from array i % CODES_PER_SHARD of the h5
    file `h5_of(i)` (frames up to 1000)."""
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment
    from lhotse.array import Array, TemporalArray

    rng = np.random.default_rng(seed)
    frames = rng.integers(100, 1000, n)  # 1.3 .. 13 s
    phones = rng.integers(0, len(PHONES), (n, 40))
    for i in range(n):
        t, cut_id = int(frames[i]), f"spk{i % 997:04d}_{i:08d}"
        seconds = t * HOP
        rec = Recording(cut_id, [AudioSource("file", [0], f"/corpus/{cut_id}.wav")], 24000,
                        round(seconds * 24000), seconds)  # fmt: skip
        sup = SupervisionSegment(cut_id, cut_id, 0.0, seconds, text="some words",
                                 speaker=f"spk{i % 997:04d}")  # fmt: skip
        array = Array("numpy_hdf5", h5_of(i), f"a{i % CODES_PER_SHARD}", [1000, 8])
        codes = TemporalArray(array, temporal_dim=0, frame_shift=HOP, start=0.0)
        custom = {"phones": [PHONES[k] for k in phones[i, : 10 + i % 30]], "codes": codes}
        yield MonoCut(cut_id, 0.0, seconds, 0, supervisions=[sup], recording=rec, custom=custom)


def fast_dict(cut) -> dict:
    """`cut.to_dict()` of a `synthetic_cuts` cut, built directly (lhotse's dataclass walk costs
    milliseconds a cut); checked equal on the first cuts of every corpus."""
    sup, rec, codes = cut.supervisions[0], cut.recording, cut.custom["codes"]
    return {
        "id": cut.id, "start": 0.0, "duration": cut.duration, "channel": 0,
        "supervisions": [{"id": sup.id, "recording_id": sup.recording_id, "start": 0.0,
                          "duration": sup.duration, "channel": 0, "text": sup.text,
                          "speaker": sup.speaker}],
        "recording": {"id": rec.id, "sources": [{"type": "file", "channels": [0],
                      "source": rec.sources[0].source}], "sampling_rate": 24000,
                      "num_samples": rec.num_samples, "duration": rec.duration,
                      "channel_ids": [0]},
        "custom": {"phones": list(cut.custom["phones"]), "codes": {"array": {
            "storage_type": "numpy_hdf5", "storage_path": codes.array.storage_path,
            "storage_key": codes.array.storage_key, "shape": [1000, 8]}, "temporal_dim": 0,
            "frame_shift": HOP, "start": 0.0}},
        "type": "MonoCut",
    }  # fmt: skip


def checked(cuts, first: int = 100):
    """The cuts, the first `first` of them checked: fast_dict(cut) == cut.to_dict()."""
    for i, cut in enumerate(cuts):
        assert i >= first or fast_dict(cut) == cut.to_dict(), cut.id
        yield cut


def write_corpus(root: Path, n: int, shard_size: int, layout: str) -> None:
    """Stage-1 output with n train cuts (+ 2 valid ones): layout "lazy" = per-shard manifests +
    index, "eager" = one file per split (stage-1 manifest format <= 2)."""
    from lhotse import NumpyHdf5Writer

    from utils.cut_shards import GZIP_LEVEL, write_split

    work = root / "libritts"
    work.mkdir(parents=True)
    (root / "symbols.dict").write_text(
        "<eps> 0\n" + "".join(f"{p} {i}\n" for i, p in enumerate(PHONES, 1)), encoding="utf-8"
    )
    (root / "codec").mkdir()
    (root / "codec" / "codec.json").write_text(json.dumps({"name": "encodec_24khz"}))
    shards = max(1, -(-n // shard_size))
    rng = np.random.default_rng(1)
    for k in range(shards):
        with NumpyHdf5Writer(work / f"shard-{k:05d}.h5") as writer:
            for a in range(CODES_PER_SHARD):
                writer.store_array(f"a{a}", rng.integers(0, 1024, (1000, 8)).astype(np.int16))

    def h5_of(i: int) -> str:
        return str(work / f"shard-{i // shard_size:05d}.h5")

    train = checked(synthetic_cuts(n, h5_of))
    valid = checked(synthetic_cuts(2, h5_of, seed=1))
    if layout == "lazy":
        sizes = {k: min(shard_size, n - k * shard_size) for k in range(shards)}
        parts = {k: (next(train) for _ in range(m)) for k, m in sizes.items()}
        write_split(work, "train", parts, fast_dict)
        write_split(work, "valid", {0: valid}, fast_dict)
        return
    for stem, cuts in (("train", train), ("valid", valid)):  # gzip level as stage 1's
        with gzip.open(work / f"cuts_{stem}.jsonl.gz", "wt", GZIP_LEVEL, "utf-8") as f:
            for cut in cuts:
                f.write(json.dumps(fast_dict(cut), ensure_ascii=False) + "\n")


def write_config(root: Path) -> Path:
    cfg = {
        "base_config": str(REPO / "egs" / "tts" / "VALLE" / "exp_config.json"),
        "dataset": ["libritts"],
        "log_dir": str(root / "exp"),
        "preprocess": {"processed_dir": str(root), "min_duration": 0.5, "max_duration": 20},
        "train": {"num_workers": 0},
    }
    path = root / "config.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def start_up(config: Path) -> dict:
    """One training rank's start-up up to its first batch (this process): seconds, peak RSS."""
    import torch

    from bench._timing import PeakMemory
    from models.base.train_data import estimate_steps_per_epoch, largest_batch, split_data
    from models.tts.valle.trainer import VALLETrainRecipe
    from utils.config import load_config

    with PeakMemory(torch.device("cpu")) as peak:
        start = time.perf_counter()
        recipe = VALLETrainRecipe(load_config(config), None)
        recipe.check_data()
        train, valid = recipe.load_data("train"), recipe.load_data("valid")
        loader, _ = recipe.make_loader(train, "train", world_size=1, rank=0, num_workers=0)
        recipe.make_loader(valid, "valid", world_size=1, rank=0, num_workers=0)
        steps = estimate_steps_per_epoch(train, recipe.cfg, 1)
        largest = largest_batch(split_data(train, recipe.cfg).longest, recipe.cfg)
        batch = next(iter(loader))
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mib": peak.peak_bytes / 2**20,
        "batch": len(batch["cut_ids"]),
        "steps": steps,
        "largest": len(largest),
        "load": load_average(),
    }


def run_case(root: Path, threads: int) -> dict:
    """`start_up` in a fresh process (its own peak RSS)."""
    cmd = [sys.executable, "-m", "bench.data_scale", "--child", str(write_config(root)),
           "--threads", str(threads)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1][:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--cuts", type=int, default=1_000_000, help="largest corpus size")
    p.add_argument("--sizes", default="10000,100000,1000000", help="corpus sizes (<= --cuts)")
    p.add_argument("--eager_max", type=int, default=1_000_000, help="largest eager size")
    p.add_argument("--shard_size", type=int, default=10000, help="cuts per shard manifest")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device_of(args)
    if args.child:
        print(json.dumps(start_up(Path(args.child))))
        return 0
    sizes = [n for n in map(int, args.sizes.split(",")) if n <= args.cuts]
    print(f"# training start-up benchmark: 1 rank, CPU, {args.threads or 'default'} threads, "
          f"{args.shard_size} cuts per shard, first batch included", flush=True)  # fmt: skip
    print(table_row("cuts", "layout", "write (s)", "start-up to 1st batch (s)",
                    "peak RSS above imports (MiB)", "load"))  # fmt: skip
    print(table_row(*["---"] * 6))
    for n in sizes:
        for layout in ("eager", "lazy"):
            if layout == "eager" and n > args.eager_max:
                print(table_row(n, layout, "-", f"not run (--eager_max {args.eager_max})", "-",
                                "-"), flush=True)  # fmt: skip
                continue
            with tempfile.TemporaryDirectory(prefix="data_scale_") as tmp:
                start = time.perf_counter()
                write_corpus(Path(tmp), n, args.shard_size, layout)
                written = time.perf_counter() - start
                r = run_case(Path(tmp), args.threads or 1)
            if "error" in r:
                print(table_row(n, layout, f"{written:.1f}", r["error"], "-", "-"), flush=True)
                continue
            print(table_row(n, layout, f"{written:.1f}", f"{r['seconds']:.2f}",
                            f"{r['peak_mib']:.0f}", f"{r['load']:.1f}"), flush=True)  # fmt: skip
    print(f"\n{load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
